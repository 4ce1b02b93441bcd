package sign

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Verify authenticates r and returns the origin server name.
//
// It reads r's body (at most MaxBodyBytes) and replaces r.Body with a reader
// over the same bytes, so the next handler can parse it. A non-empty body
// must be a JSON object; it is the signed content (spec: "the JSON-parsed
// request body") whatever the method, and an empty body means no content.
// The body is checked before any signature (as Synapse does), so a bad body
// fails with ErrBodyTooLarge, ErrNotJSON or ErrBadJSON even when unsigned.
//
// The signed URI is r.RequestURI exactly as the peer sent it, never a
// re-encoded or prefix-stripped path. Every X-Matrix Authorization header is
// tried; the request is authenticated if one verifies, and otherwise the
// first header's failure is returned.
func (v *Verifier) Verify(r *http.Request) (string, error) {
	content, err := v.readBody(r)
	if err != nil {
		return "", err
	}

	uri := r.RequestURI
	if uri == "" {
		uri = r.URL.RequestURI()
	}

	var headers []parsedHeader
	for _, h := range r.Header.Values("Authorization") {
		x, err := ParseAuthorization(h)
		if errors.Is(err, ErrNotXMatrix) {
			continue // another scheme: not ours to judge
		}
		headers = append(headers, parsedHeader{x: x, err: err})
	}
	if len(headers) == 0 {
		return "", ErrMissingAuthorization
	}
	if len(headers) > maxXMatrixHeaders {
		return "", fmt.Errorf("%w: more than %d X-Matrix headers", ErrMalformedAuthorization, maxXMatrixHeaders)
	}

	var firstErr error
	for _, h := range headers {
		origin, err := v.verifyHeader(r.Context(), r.Method, uri, h, content)
		if err == nil {
			return origin, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return "", firstErr
}

func (v *Verifier) readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	if r.ContentLength > v.maxBodyBytes {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrBodyTooLarge, r.ContentLength, v.maxBodyBytes)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, v.maxBodyBytes+1))
	r.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBodyRead, err)
	}
	if int64(len(body)) > v.maxBodyBytes {
		return nil, fmt.Errorf("%w: the limit is %d bytes", ErrBodyTooLarge, v.maxBodyBytes)
	}
	restoreBody(r, body)
	if len(body) == 0 {
		return nil, nil
	}
	if err := checkJSONObject(body); err != nil {
		return nil, err
	}
	return body, nil
}

// checkJSONObject distinguishes Synapse's two body errors: not JSON at all
// (M_NOT_JSON, including invalid UTF-8, which Synapse fails to decode) and
// JSON that is not an object (M_BAD_JSON).
func checkJSONObject(body []byte) error {
	if !utf8.Valid(body) || !json.Valid(body) {
		return ErrNotJSON
	}
	if trimmed := bytes.TrimLeft(body, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' {
		return ErrBadJSON
	}
	return nil
}

// parsedHeader is one X-Matrix Authorization header, parsed once: x, or
// the reason it is malformed.
type parsedHeader struct {
	x   XMatrix
	err error
}

// verifyHeader checks one X-Matrix header against the request.
func (v *Verifier) verifyHeader(ctx context.Context, method, uri string, header parsedHeader, content []byte) (string, error) {
	if header.err != nil {
		return "", fmt.Errorf("%w: %w", ErrMalformedAuthorization, header.err)
	}
	x := header.x
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(x.Origin)); !ok {
		return "", fmt.Errorf("%w: origin %q is not a valid server name", ErrMalformedAuthorization, x.Origin)
	}

	// The destination the peer signed for. Without a destination parameter
	// (servers older than spec v1.3) the spec and Synapse both take the
	// signed destination to be our own name; with several names we try
	// each, as the peer signed for whichever it addressed.
	destinations := v.serverNames
	if x.Destination != "" {
		if !v.isOurs(x.Destination) {
			// Spec: a destination that is not ours MUST be answered 401.
			return "", fmt.Errorf("%w: %q", ErrWrongDestination, x.Destination)
		}
		destinations = []string{x.Destination}
	}

	if !strings.HasPrefix(x.KeyID, ed25519Prefix) {
		return "", fmt.Errorf("%w: key %q of %s: only ed25519 keys are supported", ErrUnknownKey, x.KeyID, x.Origin)
	}
	signature, err := decodeBase64(x.Signature)
	if err != nil || len(signature) != ed25519.SignatureSize {
		// Checked before the key lookup so garbage costs no fetch.
		return "", fmt.Errorf("%w: signature is not %d bytes of base64", ErrBadSignature, ed25519.SignatureSize)
	}

	key, err := v.publicKey(ctx, x.Origin, x.KeyID)
	if err != nil {
		return "", err
	}
	for _, destination := range destinations {
		message, err := signedRequestJSON(method, uri, x.Origin, destination, content)
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrBadSignature, err)
		}
		if ed25519.Verify(key, message, signature) {
			return x.Origin, nil
		}
	}
	return "", fmt.Errorf("%w: from %s with key %s for %s %s", ErrBadSignature, x.Origin, x.KeyID, method, uri)
}

func (v *Verifier) isOurs(name string) bool {
	for _, ours := range v.serverNames {
		if name == ours {
			return true
		}
	}
	return false
}

// Authenticate authenticates r and returns the origin server name, as Verify
// does: the fedhistory.Authenticator contract.
func (v *Verifier) Authenticate(r *http.Request) (string, error) { return v.Verify(r) }
