// Package benchsign gives benchmarks the real X-Matrix authentication
// cheaply: a fixed signing key per requesting server, derived from its name
// so that every run and every package signs alike, and a sign.Verifier with
// those keys pinned, so that no request waits for a key fetch.
package benchsign

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/fedhistory/fedhistory/sign"
)

// Origins are requesting servers with their keys, and the verifier that
// trusts exactly those keys.
type Origins struct {
	Keys     map[string]*sign.SigningKey
	Verifier *sign.Verifier
}

// New derives a key for each origin and a verifier for requests addressed
// to destination.
func New(destination string, origins []string) (*Origins, error) {
	o := &Origins{Keys: make(map[string]*sign.SigningKey, len(origins))}
	static := make(map[string]map[string]ed25519.PublicKey, len(origins))
	for _, origin := range origins {
		seed := sha256.Sum256([]byte("fedhistory benchmark key of " + origin))
		key, err := sign.GenerateKey(bytes.NewReader(bytes.Repeat(seed[:], 8)))
		if err != nil {
			return nil, fmt.Errorf("benchsign: key of %s: %w", origin, err)
		}
		o.Keys[origin] = key
		static[origin] = map[string]ed25519.PublicKey{key.ID: key.Public()}
	}
	verifier, err := sign.NewVerifier(sign.VerifierConfig{
		ServerNames: []string{destination}, StaticKeys: static, DisableKeyFetching: true,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return nil, fmt.Errorf("benchsign: verifier: %w", err)
	}
	o.Verifier = verifier
	return o, nil
}

// Sign signs req as origin's request to destination.
func (o *Origins) Sign(req *http.Request, origin, destination string) error {
	key, ok := o.Keys[origin]
	if !ok {
		return fmt.Errorf("benchsign: no key for %s", origin)
	}
	return key.SignRequest(req, origin, destination)
}
