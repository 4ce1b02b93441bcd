package sign

import (
	"bytes"
	"crypto/ed25519"
	"io"
	"net/http"
	"net/http/httptest"
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

func TestVerifyAcceptsSignedRequests(t *testing.T) {
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

func TestVerifyRejects(t *testing.T) {
	k := newKey(t)
	stranger := newKey(t)
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
	}{
		{
			name:    "no Authorization header",
			request: func(t *testing.T) *http.Request { return newRequest(http.MethodGet, backfillURI, nil) },
			status:  401, errcode: matrixerr.Unauthorized, message: "missing X-Matrix Authorization header",
		},
		{
			name: "only another scheme",
			request: func(t *testing.T) *http.Request {
				return withHeader(http.MethodGet, backfillURI, nil, "Bearer abc")
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "missing X-Matrix Authorization header",
		},
		{
			name: "malformed header",
			request: func(t *testing.T) *http.Request {
				return withHeader(http.MethodGet, backfillURI, nil, `X-Matrix origin="remote.example.org,key=ed25519:k`)
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "malformed X-Matrix Authorization header",
		},
		{
			name: "origin is not a server name",
			request: func(t *testing.T) *http.Request {
				return withHeader(http.MethodGet, backfillURI, nil, `X-Matrix origin="bad name!",key="ed25519:k",sig="s"`)
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "not a valid server name",
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
			status: 401, errcode: matrixerr.Unauthorized, message: "more than 8 X-Matrix headers",
		},
		{
			name: "destination is another server",
			request: func(t *testing.T) *http.Request {
				r := newRequest(http.MethodGet, backfillURI, nil)
				require.NoError(t, k.SignRequest(r, remoteName, "elsewhere.example.org"))
				return r
			},
			status: 401, errcode: matrixerr.Unauthorized, message: `destination is not this server: "elsewhere.example.org"`,
		},
		{
			name: "unknown key ID",
			request: func(t *testing.T) *http.Request {
				other := &SigningKey{ID: "ed25519:other", Private: k.Private}
				return signedRequest(t, other, http.MethodGet, backfillURI, nil)
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "unknown signing key: remote.example.org has no pinned key ed25519:other",
		},
		{
			name: "unsupported key algorithm",
			request: func(t *testing.T) *http.Request {
				x := manualHeader(t, k, http.MethodGet, backfillURI, ourName, nil)
				x.KeyID = "curve25519:k"
				return withHeader(http.MethodGet, backfillURI, nil, x.String())
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "only ed25519 keys are supported",
		},
		{
			name: "signature by another key",
			request: func(t *testing.T) *http.Request {
				impostor := &SigningKey{ID: k.ID, Private: stranger.Private}
				return signedRequest(t, impostor, http.MethodGet, backfillURI, nil)
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "bad X-Matrix signature",
		},
		{
			name: "signature is not base64",
			request: func(t *testing.T) *http.Request {
				return withHeader(http.MethodGet, backfillURI, nil, `X-Matrix origin="remote.example.org",key="`+k.ID+`",sig="!!!"`)
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "signature is not 64 bytes of base64",
		},
		{
			name: "signed for another URI",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, k, http.MethodGet, backfillURI, nil)
				out := newRequest(http.MethodGet, strings.Replace(backfillURI, "limit=10", "limit=1000", 1), nil)
				out.Header = r.Header
				return out
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "bad X-Matrix signature",
		},
		{
			name: "signed for the decoded path, sent encoded",
			request: func(t *testing.T) *http.Request {
				decoded := "/_matrix/federation/v1/backfill/!room:example.org?v=%24event%3Aexample.org&limit=10"
				x := manualHeader(t, k, http.MethodGet, decoded, ourName, nil)
				return withHeader(http.MethodGet, backfillURI, nil, x.String())
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "bad X-Matrix signature",
		},
		{
			name: "signed for another method",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, k, http.MethodPut, missingURI, []byte(missingBody))
				r.Method = http.MethodPost
				return r
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "bad X-Matrix signature",
		},
		{
			name: "body changed after signing",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, k, http.MethodPost, missingURI, []byte(missingBody))
				out := newRequest(http.MethodPost, missingURI, []byte(strings.Replace(missingBody, "10", "100", 1)))
				out.Header = r.Header
				return out
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "bad X-Matrix signature",
		},
		{
			name: "body dropped after signing",
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, k, http.MethodPost, missingURI, []byte(missingBody))
				out := newRequest(http.MethodPost, missingURI, nil)
				out.Header = r.Header
				return out
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "bad X-Matrix signature",
		},
		{
			name: "no key source for an unpinned origin",
			request: func(t *testing.T) *http.Request {
				x := manualHeader(t, k, http.MethodGet, backfillURI, ourName, nil)
				x.Origin = "unpinned.example.org"
				return withHeader(http.MethodGet, backfillURI, nil, x.String())
			},
			status: 401, errcode: matrixerr.Unauthorized, message: "could not fetch the origin's signing keys",
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
			status:  401, errcode: matrixerr.Unauthorized, message: "could not fetch the origin's signing keys",
		},
		{
			name: "body larger than MaxBodyBytes",
			config: func(c *VerifierConfig) {
				c.MaxBodyBytes = 16
			},
			request: func(t *testing.T) *http.Request {
				return signedRequest(t, k, http.MethodPost, missingURI, []byte(missingBody))
			},
			status: 413, errcode: matrixerr.TooLarge, message: "request body too large",
		},
		{
			name:   "body larger than MaxBodyBytes without Content-Length",
			config: func(c *VerifierConfig) { c.MaxBodyBytes = 16 },
			request: func(t *testing.T) *http.Request {
				r := signedRequest(t, k, http.MethodPost, missingURI, []byte(missingBody))
				r.ContentLength = -1
				return r
			},
			status: 413, errcode: matrixerr.TooLarge, message: "request body too large",
		},
		{
			name: "body is not JSON, even unsigned",
			request: func(t *testing.T) *http.Request {
				return newRequest(http.MethodPost, missingURI, []byte(`{"limit":`))
			},
			status: 400, errcode: matrixerr.NotJSON, message: "not JSON",
		},
		{
			name: "body is not UTF-8",
			request: func(t *testing.T) *http.Request {
				return newRequest(http.MethodPost, missingURI, []byte("{\"a\":\"\xff\"}"))
			},
			status: 400, errcode: matrixerr.NotJSON, message: "not JSON",
		},
		{
			name: "body is JSON but not an object",
			request: func(t *testing.T) *http.Request {
				return withHeader(http.MethodPost, missingURI, []byte(` [1,2]`), `X-Matrix origin="remote.example.org",key="ed25519:k",sig="s"`)
			},
			status: 400, errcode: matrixerr.BadJSON, message: "not a JSON object",
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
		})
	}
}

func TestVerifyReturnsOriginAndKeepsBody(t *testing.T) {
	k := newKey(t)
	v := staticVerifier(t, k)
	r := signedRequest(t, k, http.MethodPost, missingURI, []byte(missingBody))
	origin, err := v.Verify(r)
	require.NoError(t, err)
	require.Equal(t, remoteName, origin)
	var buf bytes.Buffer
	_, err = buf.ReadFrom(r.Body)
	require.NoError(t, err)
	require.Equal(t, missingBody, buf.String())

	_, err = v.Verify(newRequest(http.MethodGet, backfillURI, nil))
	require.ErrorIs(t, err, ErrMissingAuthorization)
}

func TestVerifyUsesRequestURIAsSent(t *testing.T) {
	k := newKey(t)
	v := staticVerifier(t, k)
	r := signedRequest(t, k, http.MethodGet, backfillURI, nil)
	// A router that strips a prefix or re-encodes r.URL must not matter.
	r.URL.Path = "/backfill/!room:example.org"
	r.URL.RawPath = ""
	_, err := v.Verify(r)
	require.NoError(t, err)

	// Without RequestURI (a request built in-process) the URL is used.
	r = signedRequest(t, k, http.MethodGet, backfillURI, nil)
	r.RequestURI = ""
	_, err = v.Verify(r)
	require.NoError(t, err)
}
