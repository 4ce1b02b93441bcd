package fedhistory_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/redact"
	"github.com/fedhistory/fedhistory/internal/roomgen"
)

// stateRoom is a linear room whose history is visible to joined members
// only: carol (hs3) joins and alice sets the topic while no user of hs2 is
// in the room, then
// bob (hs2) joins, carol changes the history visibility and alice sends m1.
// A rejected topic and an outlier member event hang off the side.
func stateRoom(t testing.TB, version string) *testRoom {
	t.Helper()
	b := must(t)
	room := newTestRoomWithout(t, version, 31)
	alice, carol := "@alice:"+ourServer, "@carol:hs3.example"
	room.name("hv_joined", b(room.b.HistoryVisibility(alice, "joined")))
	room.name("carol_join", b(room.b.Join(carol)))
	empty := ""
	room.name("topic", b(room.b.Event(roomgen.EventSpec{Sender: alice, Type: "m.room.topic", StateKey: &empty,
		Content: map[string]string{"topic": "before bob came"}})))
	room.name("bob_join", b(room.b.Join("@bob:"+memberServer)))
	room.name("rejected_topic", b(room.b.Event(roomgen.EventSpec{Sender: "@mallory:evil.example", Type: "m.room.topic",
		StateKey: &empty, Content: map[string]string{"topic": "x"}, Rejected: true})))
	room.name("outlier_member", b(room.b.Event(roomgen.EventSpec{Sender: "@oscar:hs4.example", Type: "m.room.member",
		StateKey: ptr("@oscar:hs4.example"), Content: map[string]string{"membership": "join"}, Outlier: true})))
	room.name("hv_shared", b(room.b.HistoryVisibility(alice, "shared")))
	room.name("m1", b(room.b.Message(alice, "m1")))
	return room
}

func ptr(s string) *string { return &s }

// newTestRoomWithout is newTestRoom without bob's join: the standard setup
// only, its events named.
func newTestRoomWithout(t testing.TB, version string, seed int64) *testRoom {
	t.Helper()
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: version, ServerName: ourServer, Seed: seed})
	require.NoError(t, err)
	require.NoError(t, b.StandardSetup())
	room := &testRoom{id: b.RoomID(), version: version, b: b, ids: map[string]string{}}
	for i, name := range []string{"create", "alice_join", "power_levels", "join_rules", "hv"} {
		room.ids[name] = b.Events()[i].ID
	}
	return room
}

// referenceState computes, from the events as built, the state just before
// the event named name: every non-rejected, non-outlier state event before
// it in the (linear) room, the last for each key.
func referenceState(t testing.TB, room *testRoom, name string) []string {
	t.Helper()
	target := room.ev(t, name)
	state := map[[2]string]string{}
	for _, ev := range room.b.Events() {
		if ev.ID == target {
			break
		}
		pdu := parsePDU(t, room.version, ev.JSON)
		if ev.Rejected || ev.Outlier || pdu.StateKey() == nil {
			continue
		}
		state[[2]string{pdu.Type(), *pdu.StateKey()}] = ev.ID
	}
	return slices.Sorted(func(yield func(string) bool) {
		for _, id := range state {
			if !yield(id) {
				return
			}
		}
	})
}

// referenceAuthChain computes, from the events as built, the IDs reachable
// from ids through auth_events (v12: the create event is an auth event of
// every other event, which gomatrixserverlib's AuthEventIDs includes),
// rejected events excluded.
func referenceAuthChain(t testing.TB, room *testRoom, ids []string) []string {
	t.Helper()
	byID := map[string]roomgen.Event{}
	for _, ev := range room.b.Events() {
		byID[ev.ID] = ev
	}
	seen := map[string]bool{}
	queue := slices.Clone(ids)
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		ev, ok := byID[id]
		if !ok {
			continue
		}
		for _, auth := range parsePDU(t, room.version, ev.JSON).AuthEventIDs() {
			if target, ok := byID[auth]; ok && !target.Rejected && !seen[auth] {
				seen[auth] = true
				queue = append(queue, auth)
			}
		}
	}
	out := make([]string, 0, len(seen))
	for id := range seen {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

func parsePDU(t testing.TB, version string, js []byte) gomatrixserverlib.PDU {
	t.Helper()
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	require.NoError(t, err)
	pdu, err := verImpl.NewEventFromTrustedJSON(js, false)
	require.NoError(t, err)
	return pdu
}

func stateURL(endpoint, roomID, eventID string) string {
	u := fedhistory.Prefix + "/" + endpoint + "/" + url.PathEscape(roomID)
	if eventID != "" {
		u += "?event_id=" + url.QueryEscape(eventID)
	}
	return u
}

func sortedStrings(t testing.TB, raw json.RawMessage) []string {
	t.Helper()
	var ids []string
	require.NoError(t, json.Unmarshal(raw, &ids))
	slices.Sort(ids)
	return ids
}

func TestStateIDs(t *testing.T) {
	for _, version := range []string{"1", "10", "12"} {
		t.Run("room version "+version, func(t *testing.T) {
			room := stateRoom(t, version)
			store := load(t, room)
			h := newHandler(t, store)
			for _, at := range []string{"m1", "hv_shared", "bob_join", "topic"} {
				t.Run("at "+at, func(t *testing.T) {
					resp := do(t, h, http.MethodGet, stateURL("state_ids", room.id, room.ev(t, at)), memberServer, "")
					require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
					body := resp.json(t)
					wantState := referenceState(t, room, at)
					require.Equal(t, wantState, sortedStrings(t, body["pdu_ids"]),
						"the state before the event, without the event's own change")
					require.NotContains(t, wantState, room.ev(t, at))
					require.Equal(t, referenceAuthChain(t, room, wantState), sortedStrings(t, body["auth_chain_ids"]))
				})
			}
			if version == "12" {
				resp := do(t, h, http.MethodGet, stateURL("state_ids", room.id, room.ev(t, "m1")), memberServer, "")
				require.Contains(t, sortedStrings(t, resp.json(t)["auth_chain_ids"]), room.ev(t, "create"),
					"v12: the create event is an implicit auth event of every other event")
			}
		})
	}
}

func TestStateAndEventAuthErrors(t *testing.T) {
	room := stateRoom(t, "10")
	other := newTestRoom(t, "10", 32)
	other.messages(t, "x", 1)
	b := must(t)
	room.name("acl", b(room.b.State("@alice:"+ourServer, "m.room.server_acl", "", map[string]any{
		"allow": []string{"*"}, "deny": []string{"hs3.example"},
	})))
	room.name("m2", b(room.b.Message("@alice:"+ourServer, "m2")))
	store := load(t, room, other)
	h := newHandler(t, store)
	m2 := room.ev(t, "m2")

	type check struct {
		name, target, origin string
		status               int
		errcode              string
	}
	var tests []check
	for _, endpoint := range []string{"state_ids", "state"} {
		tests = append(tests,
			// SyTest: a missing event_id is a 400 before any room lookup.
			check{endpoint + ": no event_id, even for a bogus room", fedhistory.Prefix + "/" + endpoint + "/notaroom", "stranger.example", 400, "M_MISSING_PARAM"},
			check{endpoint + ": an empty event_id", stateURL(endpoint, room.id, "") + "?event_id=", memberServer, 400, "M_MISSING_PARAM"},
			check{endpoint + ": a server not in the room", stateURL(endpoint, room.id, m2), "stranger.example", 403, "M_FORBIDDEN"},
			check{endpoint + ": a server the ACL denies", stateURL(endpoint, room.id, m2), "hs3.example", 403, "M_FORBIDDEN"},
			check{endpoint + ": a room we do not hold", stateURL(endpoint, "!nosuch:hs1.example", m2), memberServer, 403, "M_FORBIDDEN"},
			check{endpoint + ": an unknown event", stateURL(endpoint, room.id, "$unknown"), memberServer, 404, "M_NOT_FOUND"},
			check{endpoint + ": an event of another room", stateURL(endpoint, room.id, other.ev(t, "x1")), memberServer, 404, "M_NOT_FOUND"},
			check{endpoint + ": a rejected event", stateURL(endpoint, room.id, room.ev(t, "rejected_topic")), memberServer, 404, "M_NOT_FOUND"},
			check{endpoint + ": an outlier", stateURL(endpoint, room.id, room.ev(t, "outlier_member")), memberServer, 404, "M_NOT_FOUND"},
			check{endpoint + ": unsigned", stateURL(endpoint, room.id, m2), "", 401, "M_UNAUTHORIZED"},
		)
	}
	eventAuth := func(roomID, eventID string) string {
		return fedhistory.Prefix + "/event_auth/" + url.PathEscape(roomID) + "/" + url.PathEscape(eventID)
	}
	tests = append(tests,
		check{"event_auth: a server not in the room", eventAuth(room.id, m2), "stranger.example", 403, "M_FORBIDDEN"},
		check{"event_auth: a server the ACL denies", eventAuth(room.id, m2), "hs3.example", 403, "M_FORBIDDEN"},
		check{"event_auth: an unknown event", eventAuth(room.id, "$unknown"), memberServer, 404, "M_NOT_FOUND"},
		// Synapse serves this (a cross-room leak of the other room's state).
		check{"event_auth: an event of another room", eventAuth(room.id, other.ev(t, "x1")), memberServer, 404, "M_NOT_FOUND"},
		check{"event_auth: a rejected event", eventAuth(room.id, room.ev(t, "rejected_topic")), memberServer, 404, "M_NOT_FOUND"},
		check{"event_auth: not an event ID", eventAuth(room.id, "nope"), memberServer, 400, "M_INVALID_PARAM"},
	)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := do(t, h, http.MethodGet, tc.target, tc.origin, "")
			require.Equal(t, tc.status, resp.status, "body: %s", resp.body)
			require.Equal(t, tc.errcode, resp.errcode(t))
		})
	}
}

// TestStateServesThroughTheFilter: /state serves the same sets as
// /state_ids, each PDU through the filter backfill uses: the topic carol
// set while the room's history was visible to joined members and hs2 had
// none is served redacted, in /state and in /event_auth alike.
func TestStateServesThroughTheFilter(t *testing.T) {
	room := stateRoom(t, "10")
	store := load(t, room)
	h := newHandler(t, store)

	ids := do(t, h, http.MethodGet, stateURL("state_ids", room.id, room.ev(t, "m1")), memberServer, "").json(t)
	resp := do(t, h, http.MethodGet, stateURL("state", room.id, room.ev(t, "m1")), memberServer, "")
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	body := resp.json(t)
	pdus := pduIDs(t, room, body["pdus"])
	require.Equal(t, sortedStrings(t, ids["pdu_ids"]), pdus)
	require.Equal(t, sortedStrings(t, ids["auth_chain_ids"]), pduIDs(t, room, body["auth_chain"]))

	served := pdusByID(t, room, body["pdus"])
	topic := room.ev(t, "topic")
	stored, err := store.Events(t.Context(), room.id, []string{topic})
	require.NoError(t, err)
	redacted, err := redact.Event(room.version, stored[0].JSON)
	require.NoError(t, err)
	require.Equal(t, string(redacted), string(served[topic]), "the topic is served redacted")
	require.NotContains(t, string(served[topic]), "before bob came")

	// The same event in another endpoint's answer is served the same way.
	resp = do(t, h, http.MethodGet, fedhistory.Prefix+"/event/"+url.PathEscape(topic), memberServer, "")
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	require.Equal(t, string(redacted), string(pdusByID(t, room, resp.json(t)["pdus"])[topic]))

	// Only state events, each key once.
	keys := map[[2]string]bool{}
	for _, pdu := range served {
		parsed := parsePDU(t, room.version, pdu)
		require.NotNil(t, parsed.StateKey())
		key := [2]string{parsed.Type(), *parsed.StateKey()}
		require.False(t, keys[key], "%v twice", key)
		keys[key] = true
	}
}

func pduIDs(t testing.TB, room *testRoom, raw json.RawMessage) []string {
	t.Helper()
	out := []string{}
	for id := range pdusByID(t, room, raw) {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

func pdusByID(t testing.TB, room *testRoom, raw json.RawMessage) map[string]json.RawMessage {
	t.Helper()
	var pdus []json.RawMessage
	require.NoError(t, json.Unmarshal(raw, &pdus))
	out := map[string]json.RawMessage{}
	for _, pdu := range pdus {
		id := idOfPDU(t, room.version, pdu)
		require.NotContains(t, out, id, "%s twice", id)
		out[id] = pdu
	}
	return out
}

func TestEventAuth(t *testing.T) {
	for _, version := range []string{"1", "10", "12"} {
		t.Run("room version "+version, func(t *testing.T) {
			room := stateRoom(t, version)
			store := load(t, room)
			h := newHandler(t, store)
			for _, name := range []string{"m1", "bob_join", "topic", "create"} {
				t.Run(name, func(t *testing.T) {
					id := room.ev(t, name)
					resp := do(t, h, http.MethodGet, fedhistory.Prefix+"/event_auth/"+url.PathEscape(room.id)+"/"+url.PathEscape(id), memberServer, "")
					require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
					want := referenceAuthChain(t, room, []string{id})
					require.Equal(t, want, pduIDs(t, room, resp.json(t)["auth_chain"]),
						"the event's auth events and theirs, without the event itself (Complement's TestEventAuth)")
					require.NotContains(t, want, id)
				})
			}
		})
	}
}

// TestStoresWithoutTheCapabilityDoNotGetTheRoutes: a store that is no
// StateStore, EventLookupStore or TimestampStore serves backfill and
// get_missing_events only, and says so.
func TestStoresWithoutTheCapabilityDoNotGetTheRoutes(t *testing.T) {
	room := stateRoom(t, "10")
	store := load(t, room)
	full := newHandler(t, store)
	require.Len(t, full.Endpoints(), 7)
	bare := newHandler(t, withoutWalkers{store})
	require.Equal(t, []fedhistory.Endpoint{
		{Method: http.MethodGet, Path: "/_matrix/federation/v1/backfill/{roomId}"},
		{Method: http.MethodPost, Path: "/_matrix/federation/v1/get_missing_events/{roomId}"},
	}, bare.Endpoints())
	for _, target := range []string{
		stateURL("state_ids", room.id, room.ev(t, "m1")),
		fedhistory.Prefix + "/event/" + url.PathEscape(room.ev(t, "m1")),
		fedhistory.Prefix + "/timestamp_to_event/" + url.PathEscape(room.id) + "?ts=1&dir=f",
	} {
		resp := do(t, bare, http.MethodGet, target, memberServer, "")
		require.Equal(t, http.StatusNotFound, resp.status)
		require.Equal(t, "M_UNRECOGNIZED", resp.errcode(t))
	}
}
