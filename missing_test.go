package fedhistory_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
)

func TestMissingEventsWalk(t *testing.T) {
	room := linearAndForkedRoom(t, "10")
	other := newTestRoom(t, "10", 2)
	other.messages(t, "x", 2)
	store := load(t, room, other)
	ids := func(names ...string) []string {
		out := []string{}
		for _, name := range names {
			if strings.HasPrefix(name, "other:") {
				out = append(out, other.ev(t, strings.TrimPrefix(name, "other:")))
				continue
			}
			out = append(out, room.ev(t, name))
		}
		return out
	}
	depthOf := func(name string) int64 {
		evs, err := store.Events(t.Context(), room.id, []string{room.ev(t, name)})
		require.NoError(t, err)
		return evs[0].Depth
	}
	// b1 and a1 have the same depth; the output orders ties by event ID.
	a1b1 := []string{"a1", "b1"}
	if room.ev(t, "a1") > room.ev(t, "b1") {
		a1b1 = []string{"b1", "a1"}
	}

	tests := []struct {
		name     string
		body     map[string]any
		want     []string // oldest first
		wantSize int      // when the exact events do not matter
	}{
		{"walks back from latest, skipping earliest, oldest first",
			map[string]any{"earliest_events": ids("m4"), "latest_events": ids("m6"), "limit": 10},
			append(append([]string{"m5"}, a1b1...), "a2"), 0},
		{"latest events are never returned",
			map[string]any{"earliest_events": ids("m5"), "latest_events": ids("m6", "a2"), "limit": 10},
			append(a1b1[:0:0], a1b1...), 0},
		{"rejected events are walked through, not returned",
			map[string]any{"earliest_events": ids("a2", "b1"), "latest_events": ids("m7"), "limit": 10},
			[]string{"m6"}, 0},
		{"the limit keeps the events nearest to latest",
			map[string]any{"earliest_events": ids("m1"), "latest_events": ids("m6"), "limit": 3},
			append(a1b1[:0:0], append(a1b1, "a2")...), 0},
		{"min_depth stops the walk",
			map[string]any{"earliest_events": []string{}, "latest_events": ids("m3"), "limit": 10, "min_depth": depthOf("m1")},
			[]string{"m1", "m2"}, 0},
		{"latest events of another room are ignored",
			map[string]any{"earliest_events": []string{}, "latest_events": ids("other:x2"), "limit": 10},
			[]string{}, 0},
		{"unknown latest events are ignored",
			map[string]any{"earliest_events": []string{}, "latest_events": []string{"$nope"}, "limit": 10},
			[]string{}, 0},
		{"limit defaults to 10",
			map[string]any{"earliest_events": []string{}, "latest_events": ids("m7")},
			nil, 10},
		{"limit is capped at MaxMissingEvents",
			map[string]any{"earliest_events": []string{}, "latest_events": ids("m7"), "limit": 1000},
			nil, 15}, // every event but m7 and r1: the room is smaller than the cap of 20
		{"limit zero gives no events",
			map[string]any{"earliest_events": []string{}, "latest_events": ids("m7"), "limit": 0},
			[]string{}, 0},
		{"null lists count as empty (gomatrixserverlib sends earliest_events: null)",
			map[string]any{"earliest_events": nil, "latest_events": ids("m2"), "limit": 1},
			[]string{"m1"}, 0},
		{"an empty object is a valid request (Sytest sends {})",
			map[string]any{}, []string{}, 0},
	}
	for _, view := range storeViews(store) {
		h := newHandler(t, view.store)
		for _, tc := range tests {
			t.Run(view.name+"/"+tc.name, func(t *testing.T) {
				body, err := json.Marshal(tc.body)
				require.NoError(t, err)
				resp := do(t, h, http.MethodPost, missingURL(room.id), memberServer, string(body))
				require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
				got := resp.eventIDs(t, "events", room.version)
				if tc.want == nil {
					require.Len(t, got, tc.wantSize)
					return
				}
				require.Equal(t, ids(tc.want...), got)
			})
		}
	}
}

func TestMissingEventsBody(t *testing.T) {
	room := newTestRoom(t, "10", 5)
	room.messages(t, "m", 2)
	store := load(t, room)
	h := newHandler(t, store, func(c *fedhistory.Config) { c.MaxRequestBodyBytes = 1024; c.MaxMissingEventIDs = 3 })
	tests := []struct {
		name    string
		body    string
		status  int
		errcode string
	}{
		{"not JSON", `{"limit": 10,`, 400, "M_NOT_JSON"},
		{"empty body", ``, 400, "M_NOT_JSON"},
		{"not an object", `[1, 2]`, 400, "M_BAD_JSON"},
		{"a string where a list belongs", `{"latest_events": "$a"}`, 400, "M_BAD_JSON"},
		{"a number in a list", `{"latest_events": [1]}`, 400, "M_BAD_JSON"},
		{"limit is a string", `{"limit": "10"}`, 400, "M_BAD_JSON"},
		{"min_depth is fractional", `{"min_depth": 1.5}`, 400, "M_BAD_JSON"},
		{"too many event IDs", `{"earliest_events": ["$a", "$b", "$c", "$d"]}`, 400, "M_INVALID_PARAM"},
		{"body too large", `{"latest_events": ["` + strings.Repeat("a", 2000) + `"]}`, 413, "M_TOO_LARGE"},
		{"negative limit", `{"limit": -5, "latest_events": []}`, 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := do(t, h, http.MethodPost, missingURL(room.id), memberServer, tc.body)
			require.Equal(t, tc.status, resp.status, "body: %s", resp.body)
			if tc.errcode != "" {
				require.Equal(t, tc.errcode, resp.errcode(t))
			} else {
				require.JSONEq(t, `{"events":[]}`, string(resp.body))
			}
		})
	}
}
