package sign

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/fedhistory/fedhistory/internal/matrixerr"
)

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
