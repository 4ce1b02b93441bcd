package fedhistory_test

import (
	"crypto/ed25519"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/redact"
	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/fedhistory/fedhistory/sign"
)

// visibilityRoom builds a room whose history hs2.example may see only in part:
//
//	setup (history_visibility shared) ─ m1 ─ hv_joined ─ m2 ─ bob_join ─ m3 ─ hv_invited ─ m4
//
// bob (hs2.example) joins after m2, so m2 was sent while the room's history
// was visible to joined members only, and hs2 had none.
func visibilityRoom(t testing.TB) *testRoom {
	t.Helper()
	b := must(t)
	builder, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: "10", ServerName: ourServer, Seed: 10})
	require.NoError(t, err)
	require.NoError(t, builder.StandardSetup())
	room := &testRoom{id: builder.RoomID(), version: "10", b: builder, ids: map[string]string{}}
	alice := "@alice:" + ourServer
	room.name("m1", b(builder.Message(alice, "m1")))
	room.name("hv_joined", b(builder.HistoryVisibility(alice, "joined")))
	room.name("m2", b(builder.Message(alice, "m2")))
	room.name("bob_join", b(builder.Join("@bob:"+memberServer)))
	room.name("m3", b(builder.Message(alice, "m3")))
	room.name("hv_invited", b(builder.HistoryVisibility(alice, "invited")))
	room.name("m4", b(builder.Message(alice, "m4")))
	return room
}

func TestHistoryVisibilityEndToEnd(t *testing.T) {
	room := visibilityRoom(t)
	store := load(t, room)
	h := newHandler(t, store)

	resp := do(t, h, http.MethodGet, backfillURL(room.id, "7", room.ev(t, "m4")), memberServer, "")
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	requireRedactions(t, store, room, resp.json(t)["pdus"], map[string]bool{
		"m4":         false,
		"hv_invited": false,
		"m3":         false,
		"bob_join":   false, // hs2's own join is visible: its membership after it is join
		"m2":         true,  // history_visibility joined, and hs2 had nobody joined
		"hv_joined":  false, // visible because the visibility before it (shared) allows
		"m1":         false, // shared
	})

	// get_missing_events applies the very same filter.
	body := `{"earliest_events": ["` + room.ev(t, "m1") + `"], "latest_events": ["` + room.ev(t, "m3") + `"], "limit": 10}`
	resp = do(t, h, http.MethodPost, missingURL(room.id), memberServer, body)
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	requireRedactions(t, store, room, resp.json(t)["events"], map[string]bool{"hv_joined": false, "m2": true, "bob_join": false})
}

func TestErasedSendersAreRedacted(t *testing.T) {
	room := visibilityRoom(t)
	store := load(t, room)
	store.EraseUser("@alice:" + ourServer)
	h := newHandler(t, store)
	resp := do(t, h, http.MethodGet, backfillURL(room.id, "2", room.ev(t, "m4")), memberServer, "")
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	requireRedactions(t, store, room, resp.json(t)["pdus"], map[string]bool{"m4": true, "hv_invited": true})
}

// requireRedactions checks the served PDUs against want, which maps the
// name of each event that must be served to whether it must be served
// redacted: then its bytes are exactly the room version's redacted form of
// the stored ones, else exactly the stored ones. (For an event whose
// redacted form is its stored form, the two are the same bytes.)
func requireRedactions(t testing.TB, store *memstore.Store, room *testRoom, raw json.RawMessage, want map[string]bool) {
	t.Helper()
	names := map[string]string{}
	for name, id := range room.ids {
		names[id] = name
	}
	var pdus []json.RawMessage
	require.NoError(t, json.Unmarshal(raw, &pdus))
	served := map[string]bool{}
	for _, pdu := range pdus {
		id := idOfPDU(t, room.version, pdu)
		name, ok := names[id]
		require.True(t, ok, "unexpected event %s", id)
		evs, err := store.Events(t.Context(), room.id, []string{id})
		require.NoError(t, err)
		require.Len(t, evs, 1)
		wantRedacted, wanted := want[name]
		require.True(t, wanted, "event %s served, but not expected", name)
		expected := evs[0].JSON
		if wantRedacted {
			expected, err = redact.Event(room.version, evs[0].JSON)
			require.NoError(t, err)
		}
		require.Equal(t, string(expected), string(pdu), "event %s (redacted: %v)", name, wantRedacted)
		served[name] = wantRedacted
	}
	require.Equal(t, want, served, "the events served")
}

// TestSignedRequests runs the real X-Matrix verifier in front of the
// handler over HTTP: only a signed request from a server in the room, not
// banned by the ACL, gets history.
func TestSignedRequests(t *testing.T) {
	b := must(t)
	room := newTestRoom(t, "10", 11)
	alice := "@alice:" + ourServer
	room.name("carol_join", b(room.b.Join("@carol:evil.example")))
	room.name("acl", b(room.b.State(alice, "m.room.server_acl", "", map[string]any{
		"allow": []string{"*"}, "deny": []string{"evil.example"}, "allow_ip_literals": false,
	})))
	room.messages(t, "m", 2)
	store := load(t, room)

	keys := map[string]*sign.SigningKey{}
	static := map[string]map[string]ed25519.PublicKey{}
	for _, server := range []string{memberServer, "evil.example", "stranger.example"} {
		key, err := sign.GenerateKey(nil)
		require.NoError(t, err)
		keys[server] = key
		static[server] = map[string]ed25519.PublicKey{key.ID: key.Public()}
	}
	verifier, err := sign.NewVerifier(sign.VerifierConfig{ServerNames: []string{ourServer}, StaticKeys: static, DisableKeyFetching: true})
	require.NoError(t, err)
	h, err := fedhistory.New(fedhistory.Config{ServerName: ourServer, Store: store, Authenticator: verifier})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	defer srv.Close()

	get := func(origin string, signed bool) (int, string) {
		req, err := http.NewRequest(http.MethodGet, srv.URL+backfillURL(room.id, "2", room.ev(t, "m2")), nil)
		require.NoError(t, err)
		if signed {
			require.NoError(t, keys[origin].SignRequest(req, origin, ourServer))
		}
		resp, err := srv.Client().Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(body)
	}

	tests := []struct {
		name    string
		origin  string
		signed  bool
		status  int
		errcode string
	}{
		{"a member server's signed request", memberServer, true, 200, ""},
		{"an unsigned request", memberServer, false, 401, "M_UNAUTHORIZED"},
		{"a server banned by the ACL, though its user is joined", "evil.example", true, 403, "M_FORBIDDEN"},
		{"a server with no user in the room", "stranger.example", true, 403, "M_FORBIDDEN"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, body := get(tc.origin, tc.signed)
			require.Equal(t, tc.status, status, "body: %s", body)
			if tc.errcode != "" {
				require.Contains(t, body, `"errcode":"`+tc.errcode+`"`)
			} else {
				require.True(t, strings.HasPrefix(body, `{"origin":"`+ourServer+`"`), body)
			}
		})
	}

	// A signed body reaches the endpoint after the verifier has read it.
	body := `{"earliest_events":[],"latest_events":["` + room.ev(t, "m2") + `"],"limit":1}`
	post, err := http.NewRequest(http.MethodPost, srv.URL+missingURL(room.id), strings.NewReader(body))
	require.NoError(t, err)
	require.NoError(t, keys[memberServer].SignRequest(post, memberServer, ourServer))
	posted, err := srv.Client().Do(post)
	require.NoError(t, err)
	postedBody, _ := io.ReadAll(posted.Body)
	posted.Body.Close()
	require.Equal(t, http.StatusOK, posted.StatusCode, "body: %s", postedBody)
	require.Contains(t, string(postedBody), `"events":[{`)

	// A room this server does not know answers exactly like a room the
	// origin is not in: no oracle for which rooms exist.
	unknown := strings.Replace(backfillURL("!nosuchroom:"+ourServer, "2", "$x"), "%21", "!", 1)
	req, err := http.NewRequest(http.MethodGet, srv.URL+unknown, nil)
	require.NoError(t, err)
	require.NoError(t, keys[memberServer].SignRequest(req, memberServer, ourServer))
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	unknownBody, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	strangerStatus, strangerBody := get("stranger.example", true)
	require.Equal(t, strangerStatus, resp.StatusCode)
	require.JSONEq(t, strangerBody, string(unknownBody))
}
