package fedhistory_test

import (
	"bufio"
	"crypto/ed25519"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/sign"
)

// signedServer serves room behind the real verifier, with the keys of the
// given origins pinned, over a real TCP listener.
func signedServer(t *testing.T, room *testRoom, origins []string, mutate func(*fedhistory.Config)) (*httptest.Server, map[string]*sign.SigningKey) {
	t.Helper()
	keys := map[string]*sign.SigningKey{}
	static := map[string]map[string]ed25519.PublicKey{}
	for _, origin := range origins {
		key, err := sign.GenerateKey(nil)
		require.NoError(t, err)
		keys[origin] = key
		static[origin] = map[string]ed25519.PublicKey{key.ID: key.Public()}
	}
	verifier, err := sign.NewVerifier(sign.VerifierConfig{ServerNames: []string{ourServer}, StaticKeys: static, DisableKeyFetching: true})
	require.NoError(t, err)
	cfg := fedhistory.Config{ServerName: ourServer, Store: load(t, room), Authenticator: verifier}
	if mutate != nil {
		mutate(&cfg)
	}
	h, err := fedhistory.New(cfg)
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, keys
}

// bigMissingEventsBody is a get_missing_events body of about size bytes:
// latest_events padded with IDs the room does not hold.
func bigMissingEventsBody(latest string, size int) string {
	var ids []string
	ids = append(ids, `"`+latest+`"`)
	for n := 0; n < size; n += 100 {
		ids = append(ids, fmt.Sprintf(`"$%097d"`, n))
	}
	return `{"earliest_events":[],"latest_events":[` + strings.Join(ids, ",") + `],"limit":1}`
}

// TestRequestBodyLimitHasOneOwner: Config.MaxRequestBodyBytes is the body
// limit, with the real verifier in front (which used to answer 413 at its
// own 64 KiB first, whatever the handler was configured to take).
func TestRequestBodyLimitHasOneOwner(t *testing.T) {
	room := newTestRoom(t, "10", 44)
	room.messages(t, "m", 2)
	body := bigMissingEventsBody(room.ev(t, "m2"), 100<<10) // 100 KiB
	for _, tc := range []struct {
		name     string
		maxBytes int64
		status   int
	}{
		{"configured to take 1 MiB: served", 1 << 20, http.StatusOK},
		{"the default 64 KiB: 413", 0, http.StatusRequestEntityTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, keys := signedServer(t, room, []string{memberServer}, func(cfg *fedhistory.Config) {
				cfg.MaxRequestBodyBytes = tc.maxBytes
				cfg.MaxMissingEventIDs = 2000
			})
			req, err := http.NewRequest(http.MethodPost, srv.URL+missingURL(room.id), strings.NewReader(body))
			require.NoError(t, err)
			require.NoError(t, keys[memberServer].SignRequest(req, memberServer, ourServer))
			resp, err := srv.Client().Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			answer, _ := io.ReadAll(resp.Body)
			require.Equal(t, tc.status, resp.StatusCode, "body: %.300s", answer)
			if tc.status == http.StatusRequestEntityTooLarge {
				require.Contains(t, string(answer), `"errcode":"M_TOO_LARGE"`)
			}
		})
	}
}

// TestSlowBodiesHoldNoSlots is the security issue's item 5: two connections
// that announce a body and trickle it must not lock other origins out. An
// unsigned one is refused before its body is read; one with a well-formed
// X-Matrix header is read until the request's deadline, holding no
// in-flight slot meanwhile, and is then answered.
func TestSlowBodiesHoldNoSlots(t *testing.T) {
	room := newTestRoom(t, "10", 45)
	room.messages(t, "m", 2)
	srv, keys := signedServer(t, room, []string{memberServer, "hs3.example"}, func(cfg *fedhistory.Config) {
		cfg.MaxInFlight = 2
		cfg.RequestTimeout = 500 * time.Millisecond
	})
	addr := strings.TrimPrefix(srv.URL, "http://")

	// A trickler: headers announcing 1000 bytes, then one byte, then
	// nothing. The X-Matrix header is well formed (it names the other
	// server and a key it holds) but cannot verify: the body is not there.
	trickle := func(authorization string) *bufio.Reader {
		conn, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { conn.Close() })
		_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n%s\r\n{",
			missingURL(room.id), addr, authorization)
		require.NoError(t, err)
		return bufio.NewReader(conn)
	}
	probe, err := http.NewRequest(http.MethodGet, "http://"+addr+missingURL(room.id), nil)
	require.NoError(t, err)
	require.NoError(t, keys["hs3.example"].SignRequest(probe, "hs3.example", ourServer))
	signedHeader := "Authorization: " + probe.Header.Get("Authorization") + "\r\n"

	unsigned := trickle("")
	signed := []*bufio.Reader{trickle(signedHeader), trickle(signedHeader)}

	// The unsigned one is answered at once, its body unread.
	resp, err := http.ReadResponse(unsigned, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	resp.Body.Close()

	// While the signed ones trickle, another origin is served: they hold
	// none of the two in-flight slots.
	for range 3 {
		req, err := http.NewRequest(http.MethodGet, srv.URL+backfillURL(room.id, "2", room.ev(t, "m2")), nil)
		require.NoError(t, err)
		require.NoError(t, keys[memberServer].SignRequest(req, memberServer, ourServer))
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}

	// At their deadline the tricklers are answered, not left holding a
	// goroutine for ever.
	for _, r := range signed {
		resp, err := http.ReadResponse(r, nil)
		require.NoError(t, err)
		require.GreaterOrEqual(t, resp.StatusCode, 400)
		resp.Body.Close()
	}
}
