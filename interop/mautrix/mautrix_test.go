package mautrix_test

import (
	"crypto/ed25519"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.mau.fi/util/exhttp"
	"maunium.net/go/mautrix/federation"
	"maunium.net/go/mautrix/id"

	"github.com/fedhistory/fedhistory/internal/matrixerr"
	"github.com/fedhistory/fedhistory/sign"
)

const (
	ourName    = "us.example.org"
	remoteName = "remote.example.org"
)

// specKeyVersion is the spec's grammar for the version part of a key ID.
var specKeyVersion = regexp.MustCompile(`^[a-zA-Z0-9_]+$`)

func TestSynapseKeyFilesBothWays(t *testing.T) {
	k, err := sign.GenerateKey(nil)
	require.NoError(t, err)
	path := filepath.Join(t.TempDir(), "signing.key")
	require.NoError(t, sign.WriteKeyFile(path, k))

	// mautrix reads what we write (both implement Synapse's format).
	text, err := os.ReadFile(path)
	require.NoError(t, err)
	theirs, err := federation.ParseSynapseKey(strings.TrimSpace(string(text)))
	require.NoError(t, err)
	require.Equal(t, k.ID, string(theirs.ID))
	require.Equal(t, k.Private, theirs.Priv)

	// And we read what it writes. mautrix draws key versions from
	// base64url, so some hold "-", which the spec's key ID grammar
	// ([a-zA-Z0-9_]) forbids: those we refuse, the rest we read. Try until
	// both cases have been seen.
	seenValid, seenInvalid := false, false
	for i := 0; i < 1000 && !(seenValid && seenInvalid); i++ {
		generated := federation.GenerateSigningKey()
		keys, err := sign.ParseKeys(strings.NewReader(generated.SynapseString() + "\n"))
		if !specKeyVersion.MatchString(strings.TrimPrefix(string(generated.ID), "ed25519:")) {
			require.Error(t, err, "key ID %s breaks the spec's grammar", generated.ID)
			seenInvalid = true
			continue
		}
		require.NoError(t, err)
		require.Len(t, keys, 1)
		require.Equal(t, string(generated.ID), keys[0].ID)
		require.Equal(t, generated.Priv, keys[0].Private)
		seenValid = true
	}
	require.True(t, seenValid, "no mautrix key with a spec-valid ID in 1000 tries")
}

func TestKeyDocumentSelfSignatureVerifiesInMautrix(t *testing.T) {
	a, err := sign.GenerateKey(nil)
	require.NoError(t, err)
	b, err := sign.GenerateKey(nil)
	require.NoError(t, err)
	handler := sign.KeyDocumentHandler(remoteName, []*sign.SigningKey{a, b}, 2*time.Hour, nil)

	w := httptest.NewRecorder()
	handler.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/_matrix/key/v2/server", nil))
	require.Equal(t, http.StatusOK, w.Code)

	var theirs federation.ServerKeyResponse
	require.NoError(t, theirs.UnmarshalJSON(w.Body.Bytes()))
	require.NoError(t, theirs.VerifySelfSignature())
	require.Len(t, theirs.VerifyKeys, 2)
}

// recordingEndpoint stands in for the endpoint behind authentication and
// records what reached it.
type recordingEndpoint struct {
	calls  atomic.Int32
	mu     sync.Mutex
	origin string
	body   []byte
}

// authenticated is the fedhistory handler's use of Verifier.Authenticate,
// reduced to what mautrix's client needs to see: a Matrix error when
// authentication fails, the endpoint otherwise.
func authenticated(v *sign.Verifier, next *recordingEndpoint) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin, err := v.Authenticate(r)
		if err != nil {
			matrixerr.Write(w, http.StatusUnauthorized, matrixerr.Unauthorized, err.Error())
			return
		}
		next.calls.Add(1)
		body, _ := io.ReadAll(r.Body)
		next.mu.Lock()
		next.origin, next.body = origin, body
		next.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"origin":"ok","origin_server_ts":0,"pdus":[],"events":[]}`))
	})
}

// loopbackTransport sends mautrix's matrix-federation:// requests to base.
type loopbackTransport struct{ base *url.URL }

func (t loopbackTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host = t.base.Scheme, t.base.Host
	return http.DefaultTransport.RoundTrip(out)
}

func TestMautrixSignedRequestsVerify(t *testing.T) {
	theirKey := federation.GenerateSigningKey()
	asOurs := &sign.SigningKey{ID: string(theirKey.ID), Private: theirKey.Priv}
	v, err := sign.NewVerifier(sign.VerifierConfig{
		ServerNames:        []string{ourName},
		StaticKeys:         map[string]map[string]ed25519.PublicKey{remoteName: {asOurs.ID: asOurs.Public()}},
		DisableKeyFetching: true,
	})
	require.NoError(t, err)
	next := &recordingEndpoint{}
	srv := httptest.NewServer(authenticated(v, next))
	t.Cleanup(srv.Close)
	base, err := url.Parse(srv.URL)
	require.NoError(t, err)

	client := federation.NewClient(remoteName, theirKey, nil, exhttp.ClientSettings{})
	client.HTTP = &http.Client{Transport: loopbackTransport{base: base}}

	_, err = client.Backfill(t.Context(), &federation.ReqBackfill{
		ServerName:   ourName,
		RoomID:       "!room:example.org",
		Limit:        10,
		BackfillFrom: []id.EventID{"$event:example.org", "$other/event+x:example.org"},
	})
	require.NoError(t, err)
	require.Equal(t, remoteName, next.origin)

	// mautrix sends its POST bodies without a Content-Type header.
	_, err = client.GetMissingEvents(t.Context(), &federation.ReqGetMissingEvents{
		ServerName:     ourName,
		RoomID:         "!room:example.org",
		EarliestEvents: []id.EventID{"$a:example.org"},
		LatestEvents:   []id.EventID{"$b:example.org"},
		Limit:          10,
	})
	require.NoError(t, err)
	require.JSONEq(t, `{"earliest_events":["$a:example.org"],"latest_events":["$b:example.org"],"limit":10}`, string(next.body))
	require.EqualValues(t, 2, next.calls.Load())

	// And a request mautrix signs with a key we do not know is refused.
	stranger := federation.NewClient(remoteName, federation.GenerateSigningKey(), nil, exhttp.ClientSettings{})
	stranger.HTTP = client.HTTP
	_, err = stranger.Backfill(t.Context(), &federation.ReqBackfill{ServerName: ourName, RoomID: "!room:example.org", Limit: 1})
	require.ErrorContains(t, err, "M_UNAUTHORIZED")
	require.EqualValues(t, 2, next.calls.Load())
}
