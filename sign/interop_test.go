package sign

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/stretchr/testify/require"
	"go.mau.fi/util/exhttp"
	"maunium.net/go/mautrix/federation"
	"maunium.net/go/mautrix/id"
)

// fclientVerify checks r with gomatrixserverlib's own request verifier and
// returns its HTTP status.
func fclientVerify(r *http.Request, keys gomatrixserverlib.JSONVerifier) (*fclient.FederationRequest, int) {
	fedReq, resp := fclient.VerifyHTTPRequest(r, time.Now(), ourName, nil, keys)
	return fedReq, resp.Code
}

// protectedServer runs authHandler(v, next) on a real HTTP server, so
// requests go over the wire exactly as the client library encodes them.
func protectedServer(t *testing.T, v *Verifier, next *recordingHandler) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(authHandler(v, next))
	t.Cleanup(srv.Close)
	return srv
}

func TestGomatrixserverlibSignedRequestsVerify(t *testing.T) {
	k := newKey(t)
	v := staticVerifier(t, k)
	next := &recordingHandler{}
	srv := protectedServer(t, v, next)
	base, err := url.Parse(srv.URL)
	require.NoError(t, err)

	for _, tt := range []struct {
		name          string
		method, uri   string
		content       any
		dropMediaType bool
	}{
		{name: "backfill GET with encoded path and query", method: http.MethodGet, uri: backfillURI},
		{name: "get_missing_events POST", method: http.MethodPost, uri: missingURI, content: map[string]any{
			"earliest_events": []string{"$a:example.org"}, "latest_events": []string{"$b:example.org"}, "limit": 10,
		}},
		{name: "POST without Content-Type", method: http.MethodPost, uri: missingURI, content: map[string]any{"limit": 1}, dropMediaType: true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fedReq := fclient.NewFederationRequest(tt.method, remoteName, ourName, tt.uri)
			if tt.content != nil {
				require.NoError(t, fedReq.SetContent(tt.content))
			}
			require.NoError(t, fedReq.Sign(remoteName, gomatrixserverlib.KeyID(k.ID), k.Private))
			httpReq, err := fedReq.HTTPRequest()
			require.NoError(t, err)
			httpReq.URL.Scheme, httpReq.URL.Host = base.Scheme, base.Host
			if tt.dropMediaType {
				httpReq.Header.Del("Content-Type")
			}
			resp, err := http.DefaultClient.Do(httpReq)
			require.NoError(t, err)
			resp.Body.Close()
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Equal(t, remoteName, next.origin)
			require.Equal(t, string(fedReq.Content()), string(next.body))
		})
	}
}

// loopbackTransport sends mautrix's matrix-federation:// requests to srv.
type loopbackTransport struct{ base *url.URL }

func (t loopbackTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host = t.base.Scheme, t.base.Host
	return http.DefaultTransport.RoundTrip(out)
}

func TestMautrixSignedRequestsVerify(t *testing.T) {
	theirKey := federation.GenerateSigningKey()
	k := &SigningKey{ID: string(theirKey.ID), Private: theirKey.Priv}
	v := staticVerifier(t, k)
	next := &recordingHandler{}
	srv := protectedServer(t, v, next)
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

func TestOurSignerVerifiesThroughRealHTTP(t *testing.T) {
	k := newKey(t)
	v := staticVerifier(t, k)
	next := &recordingHandler{}
	srv := protectedServer(t, v, next)

	r, err := http.NewRequest(http.MethodGet, srv.URL+backfillURI, nil)
	require.NoError(t, err)
	require.NoError(t, k.SignRequest(r, remoteName, ourName))
	resp, err := http.DefaultClient.Do(r)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, remoteName, next.origin)
}
