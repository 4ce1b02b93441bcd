package sign

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
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

// recordingHandler stands in for the protected handler and records what
// reached it.
type recordingHandler struct {
	calls  atomic.Int32
	mu     sync.Mutex
	origin string
	body   []byte
}

func (h *recordingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.calls.Add(1)
	origin, _ := OriginFromContext(r.Context())
	body, _ := io.ReadAll(r.Body)
	h.mu.Lock()
	h.origin, h.body = origin, body
	h.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"origin":"ok","origin_server_ts":0,"pdus":[]}`))
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

// serve runs r through v.Wrap and returns the response and decoded error.
func serve(v *Verifier, next http.Handler, r *http.Request) (*httptest.ResponseRecorder, map[string]string) {
	w := httptest.NewRecorder()
	v.Wrap(next).ServeHTTP(w, r)
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
