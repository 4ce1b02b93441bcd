package sign

import (
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strings"
)

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
