package sign

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/fedhistory/fedhistory/internal/matrixerr"
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

// signedRequestJSON builds the canonical JSON object the spec has servers
// sign for a request: method, uri, origin, destination and, for a request
// with a body, content (the body, which must be JSON).
func signedRequestJSON(method, uri, origin, destination string, content []byte) ([]byte, error) {
	object := struct {
		Method      string          `json:"method"`
		URI         string          `json:"uri"`
		Origin      string          `json:"origin"`
		Destination string          `json:"destination"`
		Content     json.RawMessage `json:"content,omitempty"`
	}{method, uri, origin, destination, content}
	raw, err := json.Marshal(object)
	if err != nil {
		return nil, fmt.Errorf("encoding request for signing: %w", err)
	}
	canonical, err := gomatrixserverlib.CanonicalJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("canonicalising request for signing: %w", err)
	}
	return canonical, nil
}

// SignRequest signs r as origin for destination and sets its Authorization
// header (replacing any). The signed URI is r.URL.RequestURI(), what Go's
// client sends. When r has a body it is read, must be a JSON object, is
// signed as the request's content, and is put back (r.Body, r.GetBody and
// r.ContentLength are reset) so r can still be sent; Content-Type is set to
// application/json if unset, since some servers (Dendrite) require it.
func (k *SigningKey) SignRequest(r *http.Request, origin, destination string) error {
	for _, name := range []string{origin, destination, k.ID} {
		if name == "" || strings.ContainsAny(name, "\"\\") || strings.ContainsFunc(name, func(c rune) bool { return c < 0x20 || c == 0x7f }) {
			return fmt.Errorf("signing request: %q cannot be sent in an X-Matrix header", name)
		}
	}
	var content []byte
	if r.Body != nil && r.Body != http.NoBody {
		body, err := io.ReadAll(r.Body)
		r.Body.Close()
		if err != nil {
			return fmt.Errorf("signing request: reading body: %w", err)
		}
		restoreBody(r, body)
		if len(body) > 0 {
			if err := checkJSONObject(body); err != nil {
				return fmt.Errorf("signing request: %w", err)
			}
			content = body
			if r.Header.Get("Content-Type") == "" {
				r.Header.Set("Content-Type", "application/json")
			}
		}
	}
	message, err := signedRequestJSON(r.Method, r.URL.RequestURI(), origin, destination, content)
	if err != nil {
		return fmt.Errorf("signing request: %w", err)
	}
	signature := ed25519.Sign(k.Private, message)
	if r.Header == nil {
		r.Header = http.Header{}
	}
	r.Header.Set("Authorization", XMatrix{
		Origin:      origin,
		Destination: destination,
		KeyID:       k.ID,
		Signature:   base64.RawStdEncoding.EncodeToString(signature),
	}.String())
	return nil
}

// restoreBody replaces r's consumed body with one over the same bytes.
func restoreBody(r *http.Request, body []byte) {
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
}

// KeyDocument returns serverName's self-signed key document, the body of
// GET /_matrix/key/v2/server, listing keys as current verify keys valid
// until validUntil and signed by each of them.
func KeyDocument(serverName string, keys []*SigningKey, validUntil time.Time) ([]byte, error) {
	if serverName == "" || len(keys) == 0 {
		return nil, errors.New("key document: need a server name and at least one key")
	}
	type verifyKey struct {
		Key string `json:"key"`
	}
	doc := struct {
		ServerName    string                       `json:"server_name"`
		VerifyKeys    map[string]verifyKey         `json:"verify_keys"`
		OldVerifyKeys map[string]verifyKey         `json:"old_verify_keys"`
		ValidUntilTS  int64                        `json:"valid_until_ts"`
		Signatures    map[string]map[string]string `json:"signatures,omitempty"`
	}{
		ServerName:    serverName,
		VerifyKeys:    map[string]verifyKey{},
		OldVerifyKeys: map[string]verifyKey{},
		ValidUntilTS:  validUntil.UnixMilli(),
	}
	for _, k := range keys {
		if k == nil || len(k.Private) != ed25519.PrivateKeySize || !strings.HasPrefix(k.ID, ed25519Prefix) {
			return nil, errors.New("key document: invalid signing key")
		}
		doc.VerifyKeys[k.ID] = verifyKey{Key: base64.RawStdEncoding.EncodeToString(k.Public())}
	}
	unsigned, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("key document: %w", err)
	}
	canonical, err := gomatrixserverlib.CanonicalJSON(unsigned)
	if err != nil {
		return nil, fmt.Errorf("key document: %w", err)
	}
	doc.Signatures = map[string]map[string]string{serverName: {}}
	for _, k := range keys {
		doc.Signatures[serverName][k.ID] = base64.RawStdEncoding.EncodeToString(ed25519.Sign(k.Private, canonical))
	}
	signed, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("key document: %w", err)
	}
	return gomatrixserverlib.CanonicalJSON(signed)
}

// KeyDocumentHandler serves serverName's self-signed key document
// (GET /_matrix/key/v2/server) with valid_until_ts = now()+validity.
// validity defaults to one day (Synapse's key_refresh_interval) and now to
// time.Now. It panics if serverName is empty or keys holds no usable key,
// as that is a programming error a server must not start with.
func KeyDocumentHandler(serverName string, keys []*SigningKey, validity time.Duration, now func() time.Time) http.Handler {
	if validity <= 0 {
		validity = 24 * time.Hour
	}
	if now == nil {
		now = time.Now
	}
	if _, err := KeyDocument(serverName, keys, now()); err != nil {
		panic("sign.KeyDocumentHandler: " + err.Error())
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			// Spec: an unknown method on a known endpoint is 405 M_UNRECOGNIZED.
			w.Header().Set("Allow", "GET, HEAD")
			matrixerr.Write(w, http.StatusMethodNotAllowed, matrixerr.Unrecognized, "key document only supports GET")
			return
		}
		doc, err := KeyDocument(serverName, keys, now().Add(validity))
		if err != nil {
			matrixerr.Write(w, http.StatusInternalServerError, matrixerr.Unknown, "could not build key document")
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = w.Write(doc)
		}
	})
}
