package fedhistory_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/roomgen"
)

// linearAndForkedRoom builds, after the setup and bob's join:
//
//	m1 … m5 ─┬─ a1 ─ a2 ─┬─ m6 ─ r1 (rejected) ─ m7
//	         └─ b1 ──────┘
//
// plus an outlier o1 that nothing builds on.
func linearAndForkedRoom(t testing.TB, version string) *testRoom {
	t.Helper()
	room := newTestRoom(t, version, 1)
	room.messages(t, "m", 5)
	branchB := room.b.Fork()
	room.name("a1", must(t)(room.b.Message("@alice:"+ourServer, "a1")))
	room.name("a2", must(t)(room.b.Message("@alice:"+ourServer, "a2")))
	require.NoError(t, room.b.Branch(branchB))
	room.name("b1", must(t)(room.b.Message("@bob:"+memberServer, "b1")))
	require.NoError(t, room.b.Merge())
	room.name("m6", must(t)(room.b.Message("@alice:"+ourServer, "m6")))
	room.name("r1", must(t)(room.b.Event(roomgen.EventSpec{
		Sender: "@alice:" + ourServer, Type: "m.room.message",
		Content: map[string]string{"msgtype": "m.text", "body": "r1"}, Rejected: true,
	})))
	room.name("m7", must(t)(room.b.Message("@alice:"+ourServer, "m7")))
	room.name("o1", must(t)(room.b.Event(roomgen.EventSpec{
		Sender: "@alice:" + ourServer, Type: "m.room.message",
		Content: map[string]string{"msgtype": "m.text", "body": "o1"}, Outlier: true,
	})))
	return room
}

func TestBackfillWalk(t *testing.T) {
	room := linearAndForkedRoom(t, "10")
	other := newTestRoom(t, "10", 2)
	other.messages(t, "x", 2)
	store := load(t, room, other)

	tests := []struct {
		name  string
		v     []string // event names; "other:" names an event of the other room; "?" an unknown ID
		limit string
		want  []string // event names, newest first
	}{
		{"the v event itself is the first event", []string{"m7"}, "1", []string{"m7"}},
		{"rejected events are walked through but not returned or counted", []string{"m7"}, "2", []string{"m7", "m6"}},
		{"a merge is walked into both branches, highest depth first", []string{"m6"}, "5", nil}, // filled below
		{"ties at equal depth are broken by event ID", []string{"a1", "b1"}, "2", nil},          // filled below
		{"several v events", []string{"a2", "m3"}, "4", []string{"a2", "a1", "m5", "m4"}},
		{"unknown v events are ignored", []string{"?", "m2"}, "2", []string{"m2", "m1"}},
		{"v events of another room are ignored", []string{"other:x2", "m2"}, "1", []string{"m2"}},
		{"only unknown v events: empty pdus", []string{"?", "other:x2"}, "5", []string{}},
		{"outliers are never returned", []string{"o1"}, "5", []string{}},
		{"the walk stops at the create event", []string{"m1"}, "100", []string{"m1", "bob_join", "hv", "join_rules", "power_levels", "alice_join", "create"}},
	}
	// Setup events are named by the test room builder only in part; name
	// the rest from the builder's events (create, alice_join, power_levels,
	// join_rules, hv are the first five).
	setup := room.b.Events()[:5]
	for i, name := range []string{"create", "alice_join", "power_levels", "join_rules", "hv"} {
		room.ids[name] = setup[i].ID
	}
	a1, b1 := room.ev(t, "a1"), room.ev(t, "b1")
	tie := []string{"a1", "b1"}
	if a1 > b1 {
		tie = []string{"b1", "a1"}
	}
	tests[2].want = append([]string{"m6", "a2"}, append(tie, "m5")...)
	tests[3].want = tie

	for _, view := range storeViews(store) {
		h := newHandler(t, view.store)
		for _, tc := range tests {
			t.Run(view.name+"/"+tc.name, func(t *testing.T) {
				var v []string
				for _, name := range tc.v {
					switch {
					case name == "?":
						v = append(v, "$unknown:"+ourServer)
					case strings.HasPrefix(name, "other:"):
						v = append(v, other.ev(t, strings.TrimPrefix(name, "other:")))
					default:
						v = append(v, room.ev(t, name))
					}
				}
				resp := do(t, h, http.MethodGet, backfillURL(room.id, tc.limit, v...), memberServer, "")
				require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
				want := make([]string, 0, len(tc.want))
				for _, name := range tc.want {
					want = append(want, room.ev(t, name))
				}
				require.Equal(t, want, resp.eventIDs(t, "pdus", room.version))
			})
		}
	}
}

func TestBackfillTransaction(t *testing.T) {
	room := linearAndForkedRoom(t, "10")
	store := load(t, room)
	h := newHandler(t, store)
	resp := do(t, h, http.MethodGet, backfillURL(room.id, "3", room.ev(t, "m7")), memberServer, "")
	require.Equal(t, http.StatusOK, resp.status)
	require.Equal(t, "application/json", resp.header.Get("Content-Type"))
	body := resp.json(t)
	require.JSONEq(t, `"`+ourServer+`"`, string(body["origin"]))
	require.Equal(t, "1767323045000", string(body["origin_server_ts"]))
	golden(t, "backfill_v10.json", resp.body)

	// The PDUs are the stored bytes, untouched.
	evs, err := store.Events(t.Context(), room.id, []string{room.ev(t, "m7")})
	require.NoError(t, err)
	require.Contains(t, string(resp.body), string(evs[0].JSON))
}

func TestBackfillEventFormatPerRoomVersion(t *testing.T) {
	for _, version := range []string{"1", "2", "3", "6", "9", "10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			room := newTestRoom(t, version, 3)
			room.messages(t, "m", 3)
			store := load(t, room)
			h := newHandler(t, store)
			resp := do(t, h, http.MethodGet, backfillURL(room.id, "2", room.ev(t, "m3")), memberServer, "")
			require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
			var body struct {
				PDUs []map[string]any `json:"pdus"`
			}
			require.NoError(t, json.Unmarshal(resp.body, &body))
			require.Len(t, body.PDUs, 2)
			for _, pdu := range body.PDUs {
				_, hasID := pdu["event_id"]
				// Room versions 1 and 2 carry event_id; from 3 on it is
				// the reference hash and absent from the PDU.
				require.Equal(t, version == "1" || version == "2", hasID)
			}
			require.Equal(t, []string{room.ev(t, "m3"), room.ev(t, "m2")}, resp.eventIDs(t, "pdus", version))
		})
	}
}

func TestBackfillParameters(t *testing.T) {
	room := newTestRoom(t, "10", 4)
	room.messages(t, "m", 3)
	store := load(t, room)
	m3, m2 := room.ev(t, "m3"), room.ev(t, "m2")
	base := "/_matrix/federation/v1/backfill/" + room.id

	tests := []struct {
		name    string
		target  string
		status  int
		errcode string
		want    []string
	}{
		{"missing v", base + "?limit=5", 400, "M_MISSING_PARAM", nil},
		{"empty v", base + "?v=&limit=5", 400, "M_MISSING_PARAM", nil},
		{"missing limit", base + "?v=" + m3, 400, "M_MISSING_PARAM", nil},
		{"limit zero", base + "?v=" + m3 + "&limit=0", 400, "M_INVALID_PARAM", nil},
		{"limit negative", base + "?v=" + m3 + "&limit=-1", 400, "M_INVALID_PARAM", nil},
		{"limit not a number", base + "?v=" + m3 + "&limit=ten", 400, "M_INVALID_PARAM", nil},
		{"limit fractional", base + "?v=" + m3 + "&limit=1.5", 400, "M_INVALID_PARAM", nil},
		{"limit above the cap is capped", base + "?v=" + m3 + "&limit=2", 200, "", []string{m3, m2}},
		{"huge limit is capped, not refused", base + "?v=" + m3 + "&limit=99999999999999999999999", 200, "", []string{m3, m2}},
		{"repeated v", base + "?v=" + m3 + "&v=" + m2 + "&limit=2", 200, "", []string{m3, m2}},
		{"comma-joined v", base + "?v=" + m3 + "," + m2 + "&limit=2", 200, "", []string{m3, m2}},
		{"too many v", base + "?v=a,b,c&limit=2", 400, "M_INVALID_PARAM", nil},
		{"room ID percent-encoded", backfillURL(room.id, "1", m3), 200, "", []string{m3}},
		{"trailing slash", base + "/?v=" + m3 + "&limit=1", 200, "", []string{m3}},
	}
	h := newHandler(t, store, func(c *fedhistory.Config) { c.MaxBackfillLimit = 2; c.MaxBackfillSeeds = 2 })
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := do(t, h, http.MethodGet, tc.target, memberServer, "")
			require.Equal(t, tc.status, resp.status, "body: %s", resp.body)
			if tc.errcode != "" {
				require.Equal(t, tc.errcode, resp.errcode(t))
				return
			}
			require.Equal(t, tc.want, resp.eventIDs(t, "pdus", room.version))
		})
	}
}
