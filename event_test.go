package fedhistory_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/redact"
	"github.com/fedhistory/fedhistory/internal/roomgen"
)

func eventURL(eventID string) string {
	return fedhistory.Prefix + "/event/" + url.PathEscape(eventID)
}

func storedJSON(t testing.TB, store fedhistory.EventStore, roomID, id string) json.RawMessage {
	t.Helper()
	evs, err := store.Events(t.Context(), roomID, []string{id})
	require.NoError(t, err)
	require.Len(t, evs, 1)
	return evs[0].JSON
}

func TestEvent(t *testing.T) {
	room := stateRoom(t, "10")
	private := newTestRoomWithout(t, "10", 33) // hs2 has nobody here
	private.messages(t, "p", 1)
	store := load(t, room, private)
	store.EraseUser("@carol:hs3.example")
	h := newHandler(t, store)

	t.Run("a visible event: a transaction of one PDU, bytes as stored", func(t *testing.T) {
		id := room.ev(t, "m1")
		resp := do(t, h, http.MethodGet, eventURL(id), memberServer, "")
		require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
		body := resp.json(t)
		require.JSONEq(t, `"`+ourServer+`"`, string(body["origin"]))
		require.JSONEq(t, fmt.Sprint(fixedNow.UnixMilli()), string(body["origin_server_ts"]))
		var pdus []json.RawMessage
		require.NoError(t, json.Unmarshal(body["pdus"], &pdus))
		require.Equal(t, []json.RawMessage{storedJSON(t, store, room.id, id)}, pdus)
	})

	redactedCases := []struct{ name, event string }{
		{"an event the origin may not see is served redacted", "topic"},
		{"an erased sender's event is served redacted (SyTest)", "carol_join"},
		{"an outlier is served redacted: its state is unknown", "outlier_member"},
	}
	for _, tc := range redactedCases {
		t.Run(tc.name, func(t *testing.T) {
			id := room.ev(t, tc.event)
			resp := do(t, h, http.MethodGet, eventURL(id), memberServer, "")
			require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
			want, err := redact.Event(room.version, storedJSON(t, store, room.id, id))
			require.NoError(t, err)
			require.Equal(t, string(want), string(pdusByID(t, room, resp.json(t)["pdus"])[id]))
		})
	}

	// Every refusal is the same 404, so probing reveals nothing.
	notFound := do(t, h, http.MethodGet, eventURL("$nosuchevent"), memberServer, "")
	require.Equal(t, http.StatusNotFound, notFound.status)
	require.Equal(t, "M_NOT_FOUND", notFound.errcode(t))
	refusals := []struct{ name, event, origin string }{
		{"a rejected event", room.ev(t, "rejected_topic"), memberServer},
		{"an event of a room the origin is not in", private.ev(t, "p1"), memberServer},
		{"an event of a room the origin is not in, asked by a stranger", room.ev(t, "m1"), "stranger.example"},
	}
	for _, tc := range refusals {
		t.Run(tc.name, func(t *testing.T) {
			resp := do(t, h, http.MethodGet, eventURL(tc.event), tc.origin, "")
			require.Equal(t, notFound.status, resp.status, "body: %s", resp.body)
			require.Equal(t, string(notFound.body), string(resp.body))
		})
	}
	t.Run("authentication comes first", func(t *testing.T) {
		resp := do(t, h, http.MethodGet, eventURL("$nosuchevent"), "", "")
		require.Equal(t, http.StatusUnauthorized, resp.status)
	})
}

// TestEventACL: the event's room's ACL decides, like its membership.
func TestEventACL(t *testing.T) {
	room := stateRoom(t, "10")
	room.name("acl", must(t)(room.b.State("@alice:"+ourServer, "m.room.server_acl", "", map[string]any{
		"allow": []string{"*"}, "deny": []string{memberServer},
	})))
	store := load(t, room)
	resp := do(t, newHandler(t, store), http.MethodGet, eventURL(room.ev(t, "m1")), memberServer, "")
	require.Equal(t, http.StatusNotFound, resp.status)
	require.Equal(t, "M_NOT_FOUND", resp.errcode(t))
}

// tsBase is where timestampRoom's chosen times start: well after the
// setup events, whose clock starts at roomgen.BaseTimestamp.
var tsBase = roomgen.BaseTimestamp.Add(24 * time.Hour).UnixMilli()

// timestampRoom has messages at chosen times after tsBase: t0 at +1000, a
// and b both at +2000 (b after a), c at +1500 though sent after b (a clock
// that is off), a rejected message at +2500 and an outlier at +2600.
func timestampRoom(t testing.TB) *testRoom {
	t.Helper()
	room := newTestRoom(t, "10", 34)
	at := func(ms int64) time.Time { return time.UnixMilli(tsBase + ms) }
	msg := func(name string, ms int64, rejected, outlier bool) {
		room.name(name, must(t)(room.b.Event(roomgen.EventSpec{Sender: "@alice:" + ourServer, Type: "m.room.message",
			Content: map[string]string{"body": name}, OriginServerTS: at(ms), Rejected: rejected, Outlier: outlier})))
	}
	msg("t0", 1000, false, false)
	msg("a", 2000, false, false)
	msg("b", 2000, false, false)
	msg("c", 1500, false, false)
	msg("rejected", 2500, true, false)
	msg("outlier", 2600, false, true)
	return room
}

func TestTimestampToEvent(t *testing.T) {
	room := timestampRoom(t)
	store := load(t, room)
	h := newHandler(t, store)
	target := func(query string) string {
		return fedhistory.Prefix + "/timestamp_to_event/" + url.PathEscape(room.id) + "?" + query
	}
	ts := func(ms int64, dir string) string { return fmt.Sprintf("ts=%d&dir=%s", tsBase+ms, dir) }
	found := []struct {
		name, query, want string
		ts                int64
	}{
		{"backward, bound included", ts(1000, "b"), "t0", 1000},
		{"forward, bound included", ts(1000, "f"), "t0", 1000},
		{"backward between events", ts(1700, "b"), "c", 1500},
		{"forward between events", ts(1200, "f"), "c", 1500},
		{"backward at a tie: the later event topologically", ts(2000, "b"), "b", 2000},
		{"forward at a tie: the earlier event topologically", ts(1900, "f"), "a", 2000},
		{"rejected events and outliers are never the answer", ts(3000, "b"), "b", 2000},
	}
	for _, tc := range found {
		t.Run(tc.name, func(t *testing.T) {
			resp := do(t, h, http.MethodGet, target(tc.query), memberServer, "")
			require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
			require.JSONEq(t, fmt.Sprintf(`{"event_id":%q,"origin_server_ts":%d}`, room.ev(t, tc.want), tsBase+tc.ts), string(resp.body))
		})
	}
	errs := []struct {
		name, query, origin string
		status              int
		errcode             string
	}{
		{"nothing after", ts(2100, "f"), memberServer, 404, "M_NOT_FOUND"},
		{"missing ts", "dir=f", memberServer, 400, "M_MISSING_PARAM"},
		{"missing dir", "ts=5", memberServer, 400, "M_MISSING_PARAM"},
		{"negative ts (as Synapse)", "ts=-5&dir=f", memberServer, 400, "M_INVALID_PARAM"},
		{"ts beyond canonical JSON", "ts=9007199254740992&dir=f", memberServer, 400, "M_INVALID_PARAM"},
		{"another dir", "ts=5&dir=x", memberServer, 400, "M_INVALID_PARAM"},
		{"a server not in the room", "ts=5&dir=f", "stranger.example", 403, "M_FORBIDDEN"},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			resp := do(t, h, http.MethodGet, target(tc.query), tc.origin, "")
			require.Equal(t, tc.status, resp.status, "body: %s", resp.body)
			require.Equal(t, tc.errcode, resp.errcode(t))
		})
	}
}

// TestAppliedRedactionsAreServedRedacted is the security issue's first
// repro: alice sends a secret, redacts it herself, sends m1; a joined server
// asking any endpoint gets the secret's redacted form, in room versions 3,
// 10 and 11 and the others.
func TestAppliedRedactionsAreServedRedacted(t *testing.T) {
	for _, version := range []string{"1", "3", "10", "11", "12"} {
		t.Run("room version "+version, func(t *testing.T) {
			room := newTestRoom(t, version, 35)
			alice := "@alice:" + ourServer
			room.name("secret", must(t)(room.b.Message(alice, "my password is hunter2")))
			room.name("redaction", must(t)(room.b.Redact(alice, room.ev(t, "secret"))))
			room.messages(t, "m", 1)
			store := load(t, room)
			h := newHandler(t, store)
			secret := room.ev(t, "secret")
			want, err := redact.Event(version, storedJSON(t, store, room.id, secret))
			require.NoError(t, err)

			answers := map[string]json.RawMessage{}
			resp := do(t, h, http.MethodGet, backfillURL(room.id, "5", room.ev(t, "m1")), memberServer, "")
			require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
			answers["backfill"] = resp.json(t)["pdus"]
			resp = do(t, h, http.MethodPost, missingURL(room.id), memberServer,
				`{"earliest_events":[],"latest_events":["`+room.ev(t, "m1")+`"],"limit":5}`)
			require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
			answers["get_missing_events"] = resp.json(t)["events"]
			resp = do(t, h, http.MethodGet, eventURL(secret), memberServer, "")
			require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
			answers["event"] = resp.json(t)["pdus"]
			for endpoint, raw := range answers {
				served := pdusByID(t, room, raw)
				require.Contains(t, served, secret, endpoint)
				require.Equal(t, string(want), string(served[secret]), "%s serves the redacted form", endpoint)
				require.NotContains(t, string(raw), "hunter2", endpoint)
				if endpoint != "event" {
					require.Contains(t, served, room.ev(t, "redaction"), "%s still serves the redaction itself", endpoint)
				}
			}
		})
	}
}

// TestStateAfterAGapIsNeverInvented is the security issue's second repro,
// at the handler: hs1 joins a room over federation, receiving the room's
// state as outliers, and the join's prev_events are not held. Without the
// state the homeserver learnt (StateBefore), the state at the join and
// after it is unknown: the room answers as one the origin is not in, even
// for a joined server; with it, the ACL and history visibility hold.
func TestStateAfterAGapIsNeverInvented(t *testing.T) {
	b := must(t)
	remote := newTestRoomWithout(t, "10", 36)
	alice := "@alice:" + ourServer
	remote.name("hv_joined", b(remote.b.HistoryVisibility(alice, "joined")))
	remote.name("acl", b(remote.b.State(alice, "m.room.server_acl", "", map[string]any{
		"allow": []string{"*"}, "deny": []string{"hs3.example"},
	})))
	remote.name("carol_join", b(remote.b.Join("@carol:hs3.example")))
	remote.name("bob_join", b(remote.b.Join("@bob:"+memberServer)))
	remote.name("secret", b(remote.b.Message(alice, "joined-only secret")))
	remote.name("dave_join", b(remote.b.Join("@dave:hs5.example")))
	remote.name("after", b(remote.b.Message(alice, "after dave joined")))

	// The receiving store holds the state before dave's join as outliers,
	// then the join and what follows; secret and everything before the
	// join's prev_events are not held.
	events := map[string]roomgen.Event{}
	for _, ev := range remote.b.Events() {
		events[ev.ID] = ev
	}
	stateNames := []string{"create", "alice_join", "power_levels", "join_rules", "hv_joined", "acl", "carol_join", "bob_join"}
	var stateIDs []string
	build := func(withState bool) fedhistory.EventStore {
		store := load(t) // empty
		stateIDs = stateIDs[:0]
		for _, name := range stateNames {
			id := remote.ev(t, name)
			stateIDs = append(stateIDs, id)
			_, err := store.Add("10", events[id].JSON, fedhistory.AddOptions{Outlier: true})
			require.NoError(t, err)
		}
		opts := fedhistory.AddOptions{}
		if withState {
			opts.StateBefore = stateIDs
		}
		_, err := store.Add("10", events[remote.ev(t, "dave_join")].JSON, opts)
		require.NoError(t, err)
		_, err = store.Add("10", events[remote.ev(t, "after")].JSON, fedhistory.AddOptions{})
		require.NoError(t, err)
		return store
	}
	target := backfillURL(remote.id, "5", remote.ev(t, "after"))

	t.Run("without the state: nobody is authorised from an invented one", func(t *testing.T) {
		h := newHandler(t, build(false))
		for _, origin := range []string{memberServer, "hs3.example", "hs5.example"} {
			resp := do(t, h, http.MethodGet, target, origin, "")
			require.Equal(t, http.StatusForbidden, resp.status, "%s: body %s", origin, resp.body)
		}
	})
	t.Run("with the state: the ACL and the visibility hold", func(t *testing.T) {
		store := build(true)
		h := newHandler(t, store)
		resp := do(t, h, http.MethodGet, target, "hs3.example", "")
		require.Equal(t, http.StatusForbidden, resp.status, "the ACL denies hs3: body %s", resp.body)
		resp = do(t, h, http.MethodGet, target, memberServer, "")
		require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
		require.ElementsMatch(t, []string{remote.ev(t, "after"), remote.ev(t, "dave_join")}, resp.eventIDs(t, "pdus", "10"))
	})
}
