package sign

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/matrixerr"
)

const (
	ourName    = "us.example.org"
	remoteName = "remote.example.org"
)

// fakeClock is an injectable clock that only moves when told to.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// recordingHandler stands in for the endpoint behind authentication and
// records what reached it.
type recordingHandler struct {
	calls  atomic.Int32
	mu     sync.Mutex
	origin string
	body   []byte
}

func (h *recordingHandler) serve(w http.ResponseWriter, r *http.Request, origin string) {
	h.calls.Add(1)
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	h.origin, h.body = origin, body
	h.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"origin":"ok","origin_server_ts":0,"pdus":[]}`))
}

// testBodyLimit is the body limit authHandler puts on requests, as the
// fedhistory handler does with Config.MaxRequestBodyBytes.
const testBodyLimit = 1 << 10

// authHandler is the fedhistory handler's use of Authenticate, reduced to
// what these tests need: the body bounded first, Authenticate, the error
// answered as the handler answers it, and the endpoint (next) run with the
// same request on success.
func authHandler(v *Verifier, next *recordingHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			r.Body = http.MaxBytesReader(w, r.Body, testBodyLimit)
		}
		origin, err := v.Authenticate(r)
		if err != nil {
			status, errcode := statusOf(err)
			matrixerr.Write(w, status, errcode, err.Error())
			return
		}
		next.serve(w, r, origin)
	})
}

// statusOf is the fedhistory handler's answer to an Authenticate error.
func statusOf(err error) (int, string) {
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		return http.StatusRequestEntityTooLarge, matrixerr.TooLarge
	case errors.Is(err, ErrNotJSON):
		return http.StatusBadRequest, matrixerr.NotJSON
	case errors.Is(err, ErrBadJSON):
		return http.StatusBadRequest, matrixerr.BadJSON
	case errors.Is(err, ErrBodyRead):
		return http.StatusBadRequest, matrixerr.Unknown
	case errors.Is(err, ErrTooManyPendingKeyFetches):
		return http.StatusTooManyRequests, matrixerr.LimitExceeded
	default:
		return http.StatusUnauthorized, matrixerr.Unauthorized
	}
}

func newKey(t testing.TB) *SigningKey {
	t.Helper()
	k, err := GenerateKey(nil)
	require.NoError(t, err)
	return k
}

// staticVerifier returns a verifier that knows remoteName's key k only.
func staticVerifier(t testing.TB, k *SigningKey, names ...string) *Verifier {
	t.Helper()
	if len(names) == 0 {
		names = []string{ourName}
	}
	v, err := NewVerifier(VerifierConfig{
		ServerNames:        names,
		StaticKeys:         map[string]map[string]ed25519.PublicKey{remoteName: {k.ID: k.Public()}},
		DisableKeyFetching: true,
	})
	require.NoError(t, err)
	return v
}

// newRequest builds a server-side request as net/http would hand it over.
func newRequest(method, uri string, body []byte) *http.Request {
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	return httptest.NewRequest(method, uri, reader)
}

// signedRequest builds a request signed by k with our own signer.
func signedRequest(t testing.TB, k *SigningKey, method, uri string, body []byte) *http.Request {
	t.Helper()
	r := newRequest(method, uri, body)
	require.NoError(t, k.SignRequest(r, remoteName, ourName))
	return r
}

// manualHeader signs the request fields itself, so tests can produce
// headers our signer would not (no destination, other spellings).
func manualHeader(t testing.TB, k *SigningKey, method, uri, signedDestination string, body []byte) XMatrix {
	t.Helper()
	message, err := signedRequestJSON(method, uri, remoteName, signedDestination, body)
	require.NoError(t, err)
	return XMatrix{
		Origin:    remoteName,
		KeyID:     k.ID,
		Signature: base64.RawStdEncoding.EncodeToString(ed25519.Sign(k.Private, message)),
	}
}

// serve runs r through authHandler and returns the response and decoded
// error.
func serve(v *Verifier, next *recordingHandler, r *http.Request) (*httptest.ResponseRecorder, map[string]string) {
	w := httptest.NewRecorder()
	authHandler(v, next).ServeHTTP(w, r)
	var body map[string]string
	if w.Code != http.StatusOK {
		_ = json.Unmarshal(w.Body.Bytes(), &body)
	}
	return w, body
}

// requireRejected asserts a Matrix error response.
func requireRejected(t *testing.T, w *httptest.ResponseRecorder, body map[string]string, status int, errcode, messagePart string) {
	t.Helper()
	require.Equal(t, status, w.Code, "body: %s", w.Body.String())
	require.Equal(t, errcode, body["errcode"])
	require.Contains(t, body["error"], messagePart)
}

// keyServer is a fake remote server publishing its keys over HTTP,
// counting every key request it answers.
type keyServer struct {
	*httptest.Server
	hits atomic.Int32
}

func newKeyServer(t *testing.T, handler http.Handler) *keyServer {
	t.Helper()
	ks := &keyServer{}
	ks.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ks.hits.Add(1)
		handler.ServeHTTP(w, r)
	}))
	t.Cleanup(ks.Close)
	return ks
}

// fetchingVerifier fetches remoteName's keys from ks through the real
// DirectKeyFetcher.
func fetchingVerifier(t *testing.T, ks *keyServer, clock *fakeClock, tweak ...func(*VerifierConfig)) *Verifier {
	t.Helper()
	cfg := VerifierConfig{
		ServerNames: []string{ourName},
		Resolve:     map[string]string{remoteName: ks.URL},
		Now:         clock.Now,
	}
	for _, f := range tweak {
		f(&cfg)
	}
	v, err := NewVerifier(cfg)
	require.NoError(t, err)
	return v
}

func requireAccepted(t *testing.T, v *Verifier, k *SigningKey) {
	t.Helper()
	next := &recordingHandler{}
	w, _ := serve(v, next, signedRequest(t, k, http.MethodGet, backfillURI, nil))
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	require.Equal(t, remoteName, next.origin)
}

func requireUnauthorized(t *testing.T, v *Verifier, k *SigningKey, message string) {
	t.Helper()
	next := &recordingHandler{}
	w, body := serve(v, next, signedRequest(t, k, http.MethodGet, backfillURI, nil))
	requireRejected(t, w, body, http.StatusUnauthorized, matrixerr.Unauthorized, message)
	require.Zero(t, next.calls.Load())
}
