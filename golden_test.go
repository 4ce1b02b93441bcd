package fedhistory_test

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestGoldenResponses pins whole responses byte for byte (after indenting):
// the transaction envelope, the PDU formats of different room versions, and
// redaction. Regenerate with: go test -run TestGoldenResponses -update
func TestGoldenResponses(t *testing.T) {
	tests := []struct {
		name    string
		version string
		request func(t *testing.T, room *testRoom) (method, target, body string)
		build   func(t testing.TB, version string) *testRoom
	}{
		{
			name: "backfill_v1.json", version: "1", build: linearAndForkedRoom,
			request: func(t *testing.T, room *testRoom) (string, string, string) {
				return http.MethodGet, backfillURL(room.id, "4", room.ev(t, "m6")), ""
			},
		},
		{
			name: "missing_events_v11.json", version: "11", build: linearAndForkedRoom,
			request: func(t *testing.T, room *testRoom) (string, string, string) {
				return http.MethodPost, missingURL(room.id),
					`{"earliest_events":["` + room.ev(t, "m5") + `"],"latest_events":["` + room.ev(t, "m6") + `"],"limit":10}`
			},
		},
		{
			name: "backfill_redacted_v10.json", version: "10",
			build: func(t testing.TB, _ string) *testRoom { return visibilityRoom(t) },
			request: func(t *testing.T, room *testRoom) (string, string, string) {
				// m2 is served redacted: history_visibility joined, hs2 not yet joined.
				return http.MethodGet, backfillURL(room.id, "3", room.ev(t, "bob_join")), ""
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			room := tc.build(t, tc.version)
			h := newHandler(t, load(t, room))
			method, target, body := tc.request(t, room)
			resp := do(t, h, method, target, memberServer, body)
			require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
			golden(t, tc.name, resp.body)
		})
	}
}
