package main

import (
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"strings"

	"github.com/fedhistory/fedhistory/sign"
)

// loadOrCreateKey reads the signing key at path, or generates one and writes
// it there (mode 0600) when the file does not exist. It tells stderr when it
// created the file, because the key now identifies the server to its peers.
func loadOrCreateKey(path string, stderr io.Writer) (*sign.SigningKey, error) {
	key, err := sign.ReadKeyFile(path)
	if err == nil {
		return key, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	key, err = sign.GenerateKey(nil)
	if err != nil {
		return nil, err
	}
	if err := sign.WriteKeyFile(path, key); err != nil {
		return nil, err
	}
	fmt.Fprintf(stderr, "fedhistory: created signing key %s (%s) in %s\n", key.ID, encodePublicKey(key), path)
	return key, nil
}

// encodePublicKey is the unpadded base64 the spec uses for keys.
func encodePublicKey(key *sign.SigningKey) string {
	return base64.RawStdEncoding.EncodeToString(key.Public())
}

// trustSpec formats key as the value of serve's --trust for server.
func trustSpec(server string, key *sign.SigningKey) string {
	return server + "=" + key.ID + ":" + encodePublicKey(key)
}

// parseTrust parses --trust values, SERVER=KEYID:BASE64KEY, into
// VerifierConfig.StaticKeys. The key ID keeps its "ed25519:" algorithm
// prefix, so the key is what follows the ID's last colon.
func parseTrust(values []string) (map[string]map[string]ed25519.PublicKey, error) {
	if len(values) == 0 {
		return nil, nil
	}
	keys := make(map[string]map[string]ed25519.PublicKey)
	for _, v := range values {
		server, rest, ok := strings.Cut(v, "=")
		if !ok || server == "" {
			return nil, usageErrorf("--trust %q: want SERVER=KEYID:BASE64KEY", v)
		}
		sep := strings.LastIndexByte(rest, ':')
		if sep < 0 {
			return nil, usageErrorf("--trust %q: want SERVER=KEYID:BASE64KEY", v)
		}
		keyID, encoded := rest[:sep], rest[sep+1:]
		if !strings.HasPrefix(keyID, "ed25519:") || len(keyID) == len("ed25519:") {
			return nil, usageErrorf("--trust %q: key ID %q must look like ed25519:VERSION", v, keyID)
		}
		public, err := decodeBase64(encoded)
		if err != nil || len(public) != ed25519.PublicKeySize {
			return nil, usageErrorf("--trust %q: want a base64 ed25519 public key (%d bytes)", v, ed25519.PublicKeySize)
		}
		if keys[server] == nil {
			keys[server] = make(map[string]ed25519.PublicKey)
		}
		keys[server][keyID] = ed25519.PublicKey(public)
	}
	return keys, nil
}

// decodeBase64 accepts the unpadded base64 of the spec and padded base64.
func decodeBase64(s string) ([]byte, error) {
	if b, err := base64.RawStdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.StdEncoding.DecodeString(s)
}

// parseResolve parses --resolve values, SERVER=HOST:PORT, into
// VerifierConfig.Resolve. HOST:PORT means http://HOST:PORT; a value that
// already is an http:// or https:// URL is kept.
func parseResolve(values []string) (map[string]string, error) {
	if len(values) == 0 {
		return nil, nil
	}
	resolve := make(map[string]string, len(values))
	for _, v := range values {
		server, target, ok := strings.Cut(v, "=")
		if !ok || server == "" || target == "" {
			return nil, usageErrorf("--resolve %q: want SERVER=HOST:PORT", v)
		}
		if strings.HasPrefix(target, "http://") || strings.HasPrefix(target, "https://") {
			resolve[server] = target
			continue
		}
		if _, _, err := net.SplitHostPort(target); err != nil {
			return nil, usageErrorf("--resolve %q: want SERVER=HOST:PORT", v)
		}
		resolve[server] = "http://" + target
	}
	return resolve, nil
}
