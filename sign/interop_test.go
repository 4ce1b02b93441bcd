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
