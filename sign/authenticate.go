package sign

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"unicode/utf8"
)

// maxXMatrixHeaders bounds the X-Matrix Authorization headers one request
// may carry: each can name another origin and so cost a key fetch.
const maxXMatrixHeaders = 8

// Authenticate checks r's X-Matrix signature (spec: server-server API,
// "Request Authentication") and returns the server name of its origin.
// It is the fedhistory.Authenticator a fedhistory handler calls first thing.
//
// It works in three steps, each only if the one before passed, so that a
// forged or misaddressed request costs neither a body read nor a key fetch:
//
//  1. Every Authorization header of the X-Matrix scheme is parsed (other
//     schemes are skipped). None: ErrMissingAuthorization. More than 8, a
//     malformed one, or an origin that is not a valid server name:
//     ErrMalformedAuthorization. A destination that is not one of
//     VerifierConfig.ServerNames: ErrWrongDestination. A key that is not
//     ed25519: ErrUnknownKey. A signature that is not 64 bytes of base64:
//     ErrBadSignature. Not a byte of the body has been read yet.
//  2. r.Body is read to its end. A read error is returned wrapped, with %w,
//     in ErrBodyRead, so errors.As finds an *http.MaxBytesError. A
//     non-empty body must be a JSON object (else ErrNotJSON or ErrBadJSON):
//     it is the signed content whatever the method, and an empty body means
//     no content. r.Body is then replaced by a reader over the same bytes,
//     with r.ContentLength and r.GetBody to match, so the endpoint reads
//     the body again from r.
//  3. The origin's key is looked up: pinned (VerifierConfig.StaticKeys),
//     cached, or fetched while r's context lasts (ErrUnknownKey,
//     ErrKeyServerUnreachable, ErrTooManyPendingKeyFetches), and the
//     signature checked (ErrBadSignature).
//
// The caller bounds step 2: Authenticate reads whatever r.Body yields, so
// r.Body must be wrapped in http.MaxBytesReader, and its read time bounded
// (a read deadline set with http.ResponseController, or the server's
// ReadTimeout), before Authenticate is called. The fedhistory handler does
// both, with Config.MaxRequestBodyBytes and the request's deadline.
//
// The signed URI is r.RequestURI exactly as the peer sent it (r.URL's
// request URI for a request built in-process), never a re-encoded or
// prefix-stripped path. With several X-Matrix headers, the request is
// authenticated if one of them verifies; otherwise the error is the first
// header's, in the order they were sent.
func (v *Verifier) Authenticate(r *http.Request) (origin string, err error) {
	origin, keyID, err := v.authenticate(r)
	if err != nil {
		// Debug: anyone can make us write this line at will. Neither the
		// signature nor the body is ever logged.
		v.logger.LogAttrs(r.Context(), slog.LevelDebug, "sign: rejected federation request",
			slog.String("method", r.Method), slog.String("uri", r.RequestURI),
			slog.String("origin", origin), slog.String("key_id", keyID), slog.String("error", err.Error()))
		return "", err
	}
	return origin, nil
}

// authenticate is Authenticate without the log line. On failure it returns
// the first header's origin and key ID, when known, for the log.
func (v *Verifier) authenticate(r *http.Request) (origin, keyID string, err error) {
	headers, err := v.parseHeaders(r.Header.Values("Authorization"))
	if err != nil {
		return "", "", err
	}
	first := headers[0].x
	if !slices.ContainsFunc(headers, func(h checkedHeader) bool { return h.err == nil }) {
		return first.Origin, first.KeyID, headers[0].err
	}

	content, err := readBody(r)
	if err != nil {
		return first.Origin, first.KeyID, err
	}

	uri := r.RequestURI
	if uri == "" {
		uri = r.URL.RequestURI()
	}
	for i := range headers {
		h := &headers[i]
		if h.err != nil {
			continue
		}
		if h.err = v.verifyHeader(r, uri, h, content); h.err == nil {
			return h.x.Origin, h.x.KeyID, nil
		}
	}
	return first.Origin, first.KeyID, headers[0].err
}

// checkedHeader is one X-Matrix header that has passed, or failed (err),
// the checks that need neither the body nor a key.
type checkedHeader struct {
	x            XMatrix
	signature    []byte
	destinations []string // the destinations the signature may be for
	err          error
}

// parseHeaders parses and checks the X-Matrix Authorization headers among
// values. It fails only when there is none, or too many; a header failing
// its checks has err set.
func (v *Verifier) parseHeaders(values []string) ([]checkedHeader, error) {
	var headers []checkedHeader
	for _, value := range values {
		x, err := ParseAuthorization(value)
		if errors.Is(err, ErrNotXMatrix) {
			continue // another scheme: not ours to judge
		}
		if len(headers) == maxXMatrixHeaders {
			return nil, fmt.Errorf("%w: more than %d X-Matrix headers", ErrMalformedAuthorization, maxXMatrixHeaders)
		}
		h := checkedHeader{x: x}
		if err != nil {
			h.err = fmt.Errorf("%w: %w", ErrMalformedAuthorization, err)
		} else {
			h.signature, h.destinations, h.err = v.checkHeader(x)
		}
		headers = append(headers, h)
	}
	if len(headers) == 0 {
		return nil, ErrMissingAuthorization
	}
	return headers, nil
}

// checkHeader checks what can be checked of a parsed header without the
// body or a key, and returns its decoded signature and the destinations it
// may have been signed for.
func (v *Verifier) checkHeader(x XMatrix) (signature []byte, destinations []string, err error) {
	if _, err := parseServerName(x.Origin); err != nil {
		return nil, nil, fmt.Errorf("%w: origin %q is not a valid server name", ErrMalformedAuthorization, x.Origin)
	}

	// Without a destination parameter (servers older than spec v1.3) the
	// spec and Synapse both take the signed destination to be our own
	// name; with several names we try each, as the peer signed for
	// whichever it addressed.
	destinations = v.serverNames
	if x.Destination != "" {
		if !slices.Contains(v.serverNames, x.Destination) {
			// Spec: a destination that is not ours MUST be answered 401.
			return nil, nil, fmt.Errorf("%w: %q", ErrWrongDestination, x.Destination)
		}
		destinations = []string{x.Destination}
	}

	if !strings.HasPrefix(x.KeyID, ed25519Prefix) {
		return nil, nil, fmt.Errorf("%w: key %q of %s: only ed25519 keys are supported", ErrUnknownKey, x.KeyID, x.Origin)
	}
	signature, err = decodeBase64(x.Signature)
	if err != nil || len(signature) != ed25519.SignatureSize {
		return nil, nil, fmt.Errorf("%w: signature is not %d bytes of base64", ErrBadSignature, ed25519.SignatureSize)
	}
	return signature, destinations, nil
}

// verifyHeader finds the key of a checked header and verifies its
// signature over the request.
func (v *Verifier) verifyHeader(r *http.Request, uri string, h *checkedHeader, content []byte) error {
	key, err := v.keys.publicKey(r.Context(), h.x.Origin, h.x.KeyID)
	if err != nil {
		return err
	}
	for _, destination := range h.destinations {
		message, err := signedRequestJSON(r.Method, uri, h.x.Origin, destination, content)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrBadSignature, err)
		}
		if ed25519.Verify(key, message, h.signature) {
			return nil
		}
	}
	return fmt.Errorf("%w: from %s with key %s for %s %s", ErrBadSignature, h.x.Origin, h.x.KeyID, r.Method, uri)
}

// readBody reads r's whole body, leaves r with a fresh reader over the same
// bytes, and returns the content to verify: nil for an empty body, else a
// JSON object.
func readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	body, err := io.ReadAll(r.Body)
	r.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBodyRead, err)
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

// restoreBody replaces r's consumed body with one over the same bytes.
func restoreBody(r *http.Request, body []byte) {
	r.ContentLength = int64(len(body))
	if len(body) == 0 {
		r.Body, r.GetBody = http.NoBody, func() (io.ReadCloser, error) { return http.NoBody, nil }
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
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
