package sign

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// SigningKey is one of a server's ed25519 signing keys.
type SigningKey struct {
	// ID is the key ID including the algorithm, e.g. "ed25519:a_Xy12".
	ID string
	// Private is the private key.
	Private ed25519.PrivateKey
}

// Public returns the public half of k.
func (k *SigningKey) Public() ed25519.PublicKey {
	return k.Private.Public().(ed25519.PublicKey)
}

// Version returns the part of the key ID after "ed25519:".
func (k *SigningKey) Version() string {
	return strings.TrimPrefix(k.ID, ed25519Prefix)
}

const ed25519Prefix = "ed25519:"

// GenerateKey makes a new signing key from random (crypto/rand when nil).
// Its ID is "ed25519:a_" followed by four random alphanumerics, the shape
// Synapse gives generated keys.
func GenerateKey(random io.Reader) (*SigningKey, error) {
	if random == nil {
		random = rand.Reader
	}
	_, private, err := ed25519.GenerateKey(random)
	if err != nil {
		return nil, fmt.Errorf("generating ed25519 key: %w", err)
	}
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	version := []byte("a_")
	var one [1]byte
	for len(version) < 6 {
		if _, err := io.ReadFull(random, one[:]); err != nil {
			return nil, fmt.Errorf("generating key version: %w", err)
		}
		// Rejection sampling keeps the characters uniformly distributed.
		if int(one[0]) < 256-256%len(alphabet) {
			version = append(version, alphabet[int(one[0])%len(alphabet)])
		}
	}
	return &SigningKey{ID: ed25519Prefix + string(version), Private: private}, nil
}

// ParseKeys reads signing keys in the format Synapse and Dendrite share:
// one key per line, "ed25519 <key version> <base64 seed>". Blank lines and
// lines starting with '#' are skipped (Synapse accepts neither, but neither
// can be mistaken for a key). The base64 may be padded or unpadded.
func ParseKeys(r io.Reader) ([]*SigningKey, error) {
	var keys []*SigningKey
	scanner := bufio.NewScanner(r)
	for line := 1; scanner.Scan(); line++ {
		text := strings.TrimSpace(scanner.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 3 {
			return nil, fmt.Errorf("line %d: want \"ed25519 <version> <base64 seed>\", got %d fields", line, len(fields))
		}
		if fields[0] != "ed25519" {
			return nil, fmt.Errorf("line %d: unsupported key algorithm %q", line, fields[0])
		}
		if !validKeyVersion(fields[1]) {
			return nil, fmt.Errorf("line %d: key version %q must be non-empty and use only [a-zA-Z0-9_]", line, fields[1])
		}
		seed, err := decodeBase64(fields[2])
		if err != nil {
			return nil, fmt.Errorf("line %d: key seed: %w", line, err)
		}
		if len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("line %d: key seed is %d bytes, want %d", line, len(seed), ed25519.SeedSize)
		}
		keys = append(keys, &SigningKey{ID: ed25519Prefix + fields[1], Private: ed25519.NewKeyFromSeed(seed)})
	}
	if err := scanner.Err(); err != nil {
		return nil, fmt.Errorf("reading keys: %w", err)
	}
	return keys, nil
}

// ReadKeyFile reads a Synapse/Dendrite signing key file (see ParseKeys) and
// returns its first key, the one Synapse signs with.
func ReadKeyFile(path string) (*SigningKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading signing key: %w", err)
	}
	defer f.Close()
	keys, err := ParseKeys(f)
	if err != nil {
		return nil, fmt.Errorf("reading signing key %s: %w", path, err)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("reading signing key %s: file holds no key", path)
	}
	return keys[0], nil
}

// WriteKeyFile writes k to a new file at path in the format ParseKeys reads,
// readable by its owner only (0600). It refuses to overwrite an existing
// file: losing a signing key breaks every signature made with it.
func WriteKeyFile(path string, k *SigningKey) error {
	if !strings.HasPrefix(k.ID, ed25519Prefix) || !validKeyVersion(k.Version()) {
		return fmt.Errorf("writing signing key: invalid key ID %q", k.ID)
	}
	if len(k.Private) != ed25519.PrivateKeySize {
		return errors.New("writing signing key: private key has the wrong size")
	}
	line := fmt.Sprintf("ed25519 %s %s\n", k.Version(), base64.RawStdEncoding.EncodeToString(k.Private.Seed()))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("writing signing key: %w", err)
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return fmt.Errorf("writing signing key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing signing key %s: %w", path, err)
	}
	return nil
}

func validKeyVersion(v string) bool {
	if v == "" {
		return false
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// decodeBase64 accepts the encodings peers use for keys and signatures:
// the spec's unpadded standard base64, and padded or URL-safe variants.
func decodeBase64(s string) ([]byte, error) {
	enc := base64.RawStdEncoding
	if strings.ContainsAny(s, "-_") {
		enc = base64.RawURLEncoding
	}
	return enc.DecodeString(strings.TrimRight(s, "="))
}
