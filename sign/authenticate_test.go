package sign

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/matrixerr"
)

const (
	backfillURI = "/_matrix/federation/v1/backfill/%21room%3Aexample.org?v=%24event%3Aexample.org&limit=10"
	missingURI  = "/_matrix/federation/v1/get_missing_events/%21room%3Aexample.org"
	missingBody = `{"earliest_events":["$a:example.org"],"latest_events":["$b:example.org"],"limit":10}`
)

func TestNewVerifierRequiresServerNames(t *testing.T) {
	_, err := NewVerifier(VerifierConfig{})
	require.ErrorContains(t, err, "ServerNames is empty")
	_, err = NewVerifier(VerifierConfig{ServerNames: []string{"not a name"}})
	require.ErrorContains(t, err, "not a valid server name")
	_, err = NewVerifier(VerifierConfig{ServerNames: []string{ourName}, StaticKeys: map[string]map[string]ed25519.PublicKey{remoteName: {"ed25519:k": {1, 2}}}})
	require.ErrorContains(t, err, "is 2 bytes")
}

func TestAuthenticateAcceptsSignedRequests(t *testing.T) {
	k := newKey(t)
	other := newKey(t)
	tests := []struct {
		name    string
		names   []string
		request func(t *testing.T) *http.Request
	}{
		{
			name:    "GET without body",
			request: func(t *testing.T) *http.Request { return signedRequest(t, k, http.MethodGet, backfillURI, nil) },
		},
		{
			name: "POST with JSON body and no Content-Type",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, k, http.MethodPost, missingURI, []byte(missingBody))
				r.Header.Del("Content-Type")
				return r
			},
		},
		{
			name: "body with insignificant whitespace is signed as parsed JSON",
			request: func(t *testing.T) *http.Request {
				r := newRequest(http.MethodPost, missingURI, []byte("{ \"limit\" : 10 ,\n \"b\":[1, 2] }"))
				x := manualHeader(t, k, http.MethodPost, missingURI, ourName, []byte(`{"b":[1,2],"limit":10}`))
				x.Destination = ourName
				r.Header.Set("Authorization", x.String())
				return r
			},
		},
		{
			name: "no destination parameter: our server name was signed",
			request: func(t *testing.T) *http.Request {
				r := newRequest(http.MethodGet, backfillURI, nil)
				r.Header.Set("Authorization", manualHeader(t, k, http.MethodGet, backfillURI, ourName, nil).String())
				return r
			},
		},
		{
			name:  "no destination parameter with several server names: any of them",
			names: []string{ourName, "alias.example.org"},
			request: func(t *testing.T) *http.Request {
				r := newRequest(http.MethodGet, backfillURI, nil)
				r.Header.Set("Authorization", manualHeader(t, k, http.MethodGet, backfillURI, "alias.example.org", nil).String())
				return r
			},
		},
		{
			name:  "destination is our second name",
			names: []string{ourName, "alias.example.org"},
			request: func(t *testing.T) *http.Request {
				r := newRequest(http.MethodGet, backfillURI, nil)
				require.NoError(t, k.SignRequest(r, remoteName, "alias.example.org"))
				return r
			},
		},
		{
			name: "bare Sytest-style header with signature spelling",
			request: func(t *testing.T) *http.Request {
				r := newRequest(http.MethodGet, backfillURI, nil)
				x := manualHeader(t, k, http.MethodGet, backfillURI, ourName, nil)
				r.Header.Set("Authorization", "X-Matrix origin="+x.Origin+",key="+x.KeyID+",signature="+x.Signature+"==")
				return r
			},
		},
		{
			name: "several Authorization headers: a Bearer one and a bad one before the good one",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, k, http.MethodGet, backfillURI, nil)
				good := r.Header.Get("Authorization")
				bad := signedRequest(t, other, http.MethodGet, backfillURI, nil).Header.Get("Authorization")
				r.Header.Del("Authorization")
				r.Header.Add("Authorization", "Bearer sometoken")
				r.Header.Add("Authorization", bad)
				r.Header.Add("Authorization", good)
				return r
			},
		},
		{
			name: "empty body on POST means no content",
			request: func(t *testing.T) *http.Request {
				return signedRequest(t, k, http.MethodPost, missingURI, []byte{})
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := staticVerifier(t, k, tt.names...)
			next := &recordingHandler{}
			r := tt.request(t)
			var wantBody []byte
			if r.Body != nil {
				var buf bytes.Buffer
				_, _ = buf.ReadFrom(r.Body)
				wantBody = buf.Bytes()
				r.Body = io.NopCloser(bytes.NewReader(wantBody))
			}
			w, _ := serve(v, next, r)
			require.Equal(t, http.StatusOK, w.Code, w.Body.String())
			require.EqualValues(t, 1, next.calls.Load())
			require.Equal(t, remoteName, next.origin)
			require.Equal(t, string(wantBody), string(next.body), "the next handler reads the same body")
		})
	}
}

func TestAuthenticateRejects(t *testing.T) {
	k := newKey(t)
	stranger := newKey(t)
	// A well-formed header whose signature is not the request's.
	unverifiedHeader := XMatrix{Origin: remoteName, Destination: ourName, KeyID: k.ID,
		Signature: base64.RawStdEncoding.EncodeToString(make([]byte, ed25519.SignatureSize))}.String()
	bigBody := []byte(`{"pad":"` + strings.Repeat("x", testBodyLimit) + `"}`)
	withHeader := func(method, uri string, body []byte, header string) *http.Request {
		r := newRequest(method, uri, body)
		r.Header.Set("Authorization", header)
		return r
	}
	tests := []struct {
		name    string
		request func(t *testing.T) *http.Request
		config  func(c *VerifierConfig)
		status  int
		errcode string
		message string
		err     error // what Authenticate's error wraps (errors.Is)
	}{
		{
			name:    "no Authorization header",
			request: func(t *testing.T) *http.Request { return newRequest(http.MethodGet, backfillURI, nil) },
			status:  401, errcode: matrixerr.Unauthorized, message: "missing X-Matrix Authorization header", err: ErrMissingAuthorization,
		},
		{
			name: "only another scheme",
			request: func(t *testing.T) *http.Request {
				return withHeader(http.MethodGet, backfillURI, nil, "Bearer abc")
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "missing X-Matrix Authorization header", err: ErrMissingAuthorization,
		},
		{
			name: "malformed header",
			request: func(t *testing.T) *http.Request {
				return withHeader(http.MethodGet, backfillURI, nil, `X-Matrix origin="remote.example.org,key=ed25519:k`)
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "malformed X-Matrix Authorization header", err: ErrMalformedAuthorization,
		},
		{
			name: "origin is not a server name",
			request: func(t *testing.T) *http.Request {
				return withHeader(http.MethodGet, backfillURI, nil, `X-Matrix origin="bad name!",key="ed25519:k",sig="s"`)
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "not a valid server name", err: ErrMalformedAuthorization,
		},
		{
			name: "too many X-Matrix headers",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, k, http.MethodGet, backfillURI, nil)
				for range maxXMatrixHeaders {
					r.Header.Add("Authorization", r.Header.Get("Authorization"))
				}
				return r
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "more than 8 X-Matrix headers", err: ErrMalformedAuthorization,
		},
		{
			name: "destination is another server",
			request: func(t *testing.T) *http.Request {
				r := newRequest(http.MethodGet, backfillURI, nil)
				require.NoError(t, k.SignRequest(r, remoteName, "elsewhere.example.org"))
				return r
			},
			status: 401, errcode: matrixerr.Unauthorized, message: `destination is not this server: "elsewhere.example.org"`, err: ErrWrongDestination,
		},
		{
			name: "unknown key ID",
			request: func(t *testing.T) *http.Request {
				other := &SigningKey{ID: "ed25519:other", Private: k.Private}
				return signedRequest(t, other, http.MethodGet, backfillURI, nil)
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "unknown signing key: remote.example.org has no pinned key ed25519:other", err: ErrUnknownKey,
		},
		{
			name: "unsupported key algorithm",
			request: func(t *testing.T) *http.Request {
				x := manualHeader(t, k, http.MethodGet, backfillURI, ourName, nil)
				x.KeyID = "curve25519:k"
				return withHeader(http.MethodGet, backfillURI, nil, x.String())
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "only ed25519 keys are supported", err: ErrUnknownKey,
		},
		{
			name: "signature by another key",
			request: func(t *testing.T) *http.Request {
				impostor := &SigningKey{ID: k.ID, Private: stranger.Private}
				return signedRequest(t, impostor, http.MethodGet, backfillURI, nil)
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "bad X-Matrix signature", err: ErrBadSignature,
		},
		{
			name: "signature is not base64",
			request: func(t *testing.T) *http.Request {
				return withHeader(http.MethodGet, backfillURI, nil, `X-Matrix origin="remote.example.org",key="`+k.ID+`",sig="!!!"`)
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "signature is not 64 bytes of base64", err: ErrBadSignature,
		},
		{
			name: "signed for another URI",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, k, http.MethodGet, backfillURI, nil)
				out := newRequest(http.MethodGet, strings.Replace(backfillURI, "limit=10", "limit=1000", 1), nil)
				out.Header = r.Header
				return out
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "bad X-Matrix signature", err: ErrBadSignature,
		},
		{
			name: "signed for the decoded path, sent encoded",
			request: func(t *testing.T) *http.Request {
				decoded := "/_matrix/federation/v1/backfill/!room:example.org?v=%24event%3Aexample.org&limit=10"
				x := manualHeader(t, k, http.MethodGet, decoded, ourName, nil)
				return withHeader(http.MethodGet, backfillURI, nil, x.String())
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "bad X-Matrix signature", err: ErrBadSignature,
		},
		{
			name: "signed for another method",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, k, http.MethodPut, missingURI, []byte(missingBody))
				r.Method = http.MethodPost
				return r
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "bad X-Matrix signature", err: ErrBadSignature,
		},
		{
			name: "body changed after signing",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, k, http.MethodPost, missingURI, []byte(missingBody))
				out := newRequest(http.MethodPost, missingURI, []byte(strings.Replace(missingBody, "10", "100", 1)))
				out.Header = r.Header
				return out
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "bad X-Matrix signature", err: ErrBadSignature,
		},
		{
			name: "body dropped after signing",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, k, http.MethodPost, missingURI, []byte(missingBody))
				out := newRequest(http.MethodPost, missingURI, nil)
				out.Header = r.Header
				return out
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "bad X-Matrix signature", err: ErrBadSignature,
		},
		{
			name: "no key source for an unpinned origin",
			request: func(t *testing.T) *http.Request {
				x := manualHeader(t, k, http.MethodGet, backfillURI, ourName, nil)
				x.Origin = "unpinned.example.org"
				return withHeader(http.MethodGet, backfillURI, nil, x.String())
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "could not fetch the origin's signing keys", err: ErrKeyServerUnreachable,
		},
		{
			name: "key server unreachable",
			config: func(c *VerifierConfig) {
				dead := httptest.NewServer(http.NotFoundHandler())
				dead.Close()
				c.StaticKeys = nil
				c.DisableKeyFetching = false
				c.Resolve = map[string]string{remoteName: dead.URL}
			},
			request: func(t *testing.T) *http.Request { return signedRequest(t, k, http.MethodGet, backfillURI, nil) },
			status:  401, errcode: matrixerr.Unauthorized, message: "could not fetch the origin's signing keys", err: ErrKeyServerUnreachable,
		},
		{
			name: "body larger than the caller's limit",
			request: func(t *testing.T) *http.Request {
				return signedRequest(t, k, http.MethodPost, missingURI, bigBody)
			},
			status: 413, errcode: matrixerr.TooLarge, message: "request body too large", err: ErrBodyRead,
		},
		{
			name: "body larger than the caller's limit without Content-Length",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, k, http.MethodPost, missingURI, bigBody)
				r.ContentLength = -1
				return r
			},
			status: 413, errcode: matrixerr.TooLarge, message: "request body too large", err: ErrBodyRead,
		},
		{
			// The headers are checked first: an unsigned request is
			// refused before its body is read.
			name: "body is not JSON, unsigned",
			request: func(t *testing.T) *http.Request {
				return newRequest(http.MethodPost, missingURI, []byte(`{"limit":`))
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "missing X-Matrix Authorization header", err: ErrMissingAuthorization,
		},
		{
			name: "body is not JSON, even with a bad signature",
			request: func(t *testing.T) *http.Request {
				return withHeader(http.MethodPost, missingURI, []byte(`{"limit":`), unverifiedHeader)
			},
			status: 400, errcode: matrixerr.NotJSON, message: "not JSON", err: ErrNotJSON,
		},
		{
			name: "body is not UTF-8",
			request: func(t *testing.T) *http.Request {
				return withHeader(http.MethodPost, missingURI, []byte("{\"a\":\"\xff\"}"), unverifiedHeader)
			},
			status: 400, errcode: matrixerr.NotJSON, message: "not JSON", err: ErrNotJSON,
		},
		{
			name: "body is JSON but not an object",
			request: func(t *testing.T) *http.Request {
				return withHeader(http.MethodPost, missingURI, []byte(` [1,2]`), unverifiedHeader)
			},
			status: 400, errcode: matrixerr.BadJSON, message: "not a JSON object", err: ErrBadJSON,
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := VerifierConfig{
				ServerNames:        []string{ourName},
				StaticKeys:         map[string]map[string]ed25519.PublicKey{remoteName: {k.ID: k.Public()}},
				DisableKeyFetching: true,
			}
			if tt.config != nil {
				tt.config(&cfg)
			}
			v, err := NewVerifier(cfg)
			require.NoError(t, err)
			next := &recordingHandler{}
			w, body := serve(v, next, tt.request(t))
			requireRejected(t, w, body, tt.status, tt.errcode, tt.message)
			require.Zero(t, next.calls.Load(), "the protected handler must not run")

			r := tt.request(t)
			if r.Body != nil {
				r.Body = http.MaxBytesReader(httptest.NewRecorder(), r.Body, testBodyLimit)
			}
			origin, err := v.Authenticate(r)
			require.ErrorIs(t, err, tt.err)
			require.ErrorContains(t, err, tt.message)
			require.Empty(t, origin)
		})
	}
}

func TestAuthenticateReturnsOriginAndKeepsBody(t *testing.T) {
	k := newKey(t)
	v := staticVerifier(t, k)
	r := signedRequest(t, k, http.MethodPost, missingURI, []byte(missingBody))
	r.Body = http.MaxBytesReader(httptest.NewRecorder(), r.Body, testBodyLimit)
	origin, err := v.Authenticate(r)
	require.NoError(t, err)
	require.Equal(t, remoteName, origin)
	var buf bytes.Buffer
	_, err = buf.ReadFrom(r.Body)
	require.NoError(t, err)
	require.Equal(t, missingBody, buf.String())
	require.EqualValues(t, len(missingBody), r.ContentLength)
	again, err := r.GetBody()
	require.NoError(t, err)
	buf.Reset()
	_, err = buf.ReadFrom(again)
	require.NoError(t, err)
	require.Equal(t, missingBody, buf.String(), "GetBody gives the same bytes")

	// An empty body is no content, and stays empty.
	r = signedRequest(t, k, http.MethodPost, missingURI, []byte{})
	origin, err = v.Authenticate(r)
	require.NoError(t, err)
	require.Equal(t, remoteName, origin)
	require.Equal(t, http.NoBody, r.Body)
	require.Zero(t, r.ContentLength)

	origin, err = v.Authenticate(newRequest(http.MethodGet, backfillURI, nil))
	require.ErrorIs(t, err, ErrMissingAuthorization)
	require.Empty(t, origin)
}

func TestAuthenticateUsesRequestURIAsSent(t *testing.T) {
	k := newKey(t)
	v := staticVerifier(t, k)
	r := signedRequest(t, k, http.MethodGet, backfillURI, nil)
	// A router that strips a prefix or re-encodes r.URL must not matter.
	r.URL.Path = "/backfill/!room:example.org"
	r.URL.RawPath = ""
	_, err := v.Authenticate(r)
	require.NoError(t, err)

	// Without RequestURI (a request built in-process) the URL is used.
	r = signedRequest(t, k, http.MethodGet, backfillURI, nil)
	r.RequestURI = ""
	_, err = v.Authenticate(r)
	require.NoError(t, err)
}

// untouchableBody fails the test if anything reads it.
type untouchableBody struct{ t *testing.T }

func (b untouchableBody) Read([]byte) (int, error) {
	b.t.Error("the body was read")
	return 0, io.ErrUnexpectedEOF
}

func (untouchableBody) Close() error { return nil }

func TestAuthenticateChecksHeadersBeforeReadingTheBody(t *testing.T) {
	k := newKey(t)
	v := staticVerifier(t, k)
	good := signedRequest(t, k, http.MethodPost, missingURI, []byte(missingBody)).Header.Get("Authorization")
	x, err := ParseAuthorization(good)
	require.NoError(t, err)
	with := func(change func(x *XMatrix)) string {
		changed := x
		change(&changed)
		return changed.String()
	}
	for _, tt := range []struct {
		name    string
		headers []string
		err     error
	}{
		{"no Authorization header", nil, ErrMissingAuthorization},
		{"only another scheme", []string{"Bearer abc"}, ErrMissingAuthorization},
		{"malformed", []string{`X-Matrix origin="a`}, ErrMalformedAuthorization},
		{"too many", slices.Repeat([]string{good}, maxXMatrixHeaders+1), ErrMalformedAuthorization},
		{"origin not a server name", []string{with(func(x *XMatrix) { x.Origin = "bad name" })}, ErrMalformedAuthorization},
		{"origin with port 0", []string{with(func(x *XMatrix) { x.Origin = remoteName + ":0" })}, ErrMalformedAuthorization},
		{"another destination", []string{with(func(x *XMatrix) { x.Destination = "elsewhere.example.org" })}, ErrWrongDestination},
		{"not ed25519", []string{with(func(x *XMatrix) { x.KeyID = "curve25519:k" })}, ErrUnknownKey},
		{"signature not base64", []string{with(func(x *XMatrix) { x.Signature = "!!" })}, ErrBadSignature},
		{"signature too short", []string{with(func(x *XMatrix) { x.Signature = "AAAA" })}, ErrBadSignature},
		{"two bad headers: the first one's error", []string{
			with(func(x *XMatrix) { x.Destination = "elsewhere.example.org" }),
			with(func(x *XMatrix) { x.Signature = "!!" }),
		}, ErrWrongDestination},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newRequest(http.MethodPost, missingURI, nil)
			r.Body = untouchableBody{t}
			r.ContentLength = int64(len(missingBody))
			for _, h := range tt.headers {
				r.Header.Add("Authorization", h)
			}
			_, err := v.Authenticate(r)
			require.ErrorIs(t, err, tt.err)
		})
	}
}

// failingBody fails every read with err.
type failingBody struct{ err error }

func (b failingBody) Read([]byte) (int, error) { return 0, b.err }
func (failingBody) Close() error               { return nil }

func TestAuthenticateWrapsBodyReadErrors(t *testing.T) {
	k := newKey(t)
	v := staticVerifier(t, k)

	r := signedRequest(t, k, http.MethodPost, missingURI, []byte(missingBody))
	r.Body = http.MaxBytesReader(httptest.NewRecorder(), r.Body, 10)
	_, err := v.Authenticate(r)
	require.ErrorIs(t, err, ErrBodyRead)
	var tooLarge *http.MaxBytesError
	require.ErrorAs(t, err, &tooLarge, "the caller's limit error stays visible")
	require.EqualValues(t, 10, tooLarge.Limit)

	r = signedRequest(t, k, http.MethodPost, missingURI, []byte(missingBody))
	r.Body = failingBody{os.ErrDeadlineExceeded}
	_, err = v.Authenticate(r)
	require.ErrorIs(t, err, ErrBodyRead)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded, "a read deadline's error stays visible")
}

// BenchmarkAuthenticate is one request's verification with a pinned key:
// header parsing, the body, the signed JSON and ed25519.
func BenchmarkAuthenticate(b *testing.B) {
	for _, bc := range []struct {
		name        string
		method, uri string
		body        []byte
	}{
		{"backfill GET", http.MethodGet, backfillURI, nil},
		{"get_missing_events POST", http.MethodPost, missingURI, []byte(missingBody)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			k := newKey(b)
			v := staticVerifier(b, k)
			header := signedRequest(b, k, bc.method, bc.uri, bc.body).Header.Get("Authorization")
			b.ReportAllocs()
			for b.Loop() {
				r := newRequest(bc.method, bc.uri, bc.body)
				r.Header.Set("Authorization", header)
				if _, err := v.Authenticate(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
