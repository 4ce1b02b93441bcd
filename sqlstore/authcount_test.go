package sqlstore

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/fedhistory/fedhistory/internal/synthroom"
)

// TestAuthCountsFromFirstPrinciples checks state_group_auth against its
// definition: for every state group, the counts summed along the group's
// delta chain equal, for each auth event, the number of auth links
// from the events of the group's whole state to it. The room is added in
// batches of several sizes, so that a group's changes (a level k delta
// gathers those of the groups since its parent, see newGroup) name events
// of earlier batches as well as the batch's own.
// (A wrong count often still yields the right auth chain, which holds the
// same events through other links, so storetest's StateIDs checks alone
// would not see it.)
func TestAuthCountsFromFirstPrinciples(t *testing.T) {
	for _, d := range dialects {
		for _, batch := range []int{1, 37, 5000, -5000} {
			// -5000: a batch of 5000 in chunks of 37 that keeps nothing
			// of the state from one chunk to the next.
			t.Run(fmt.Sprintf("%s/batch=%d", d, batch), func(t *testing.T) {
				s := openTestStore(t, d)
				if batch < 0 {
					batch = -batch
					s.addChunk, s.maxHeldEntries, s.maxHeldAuthLinks = 37, 0, 0
				}
				g, err := synthroom.New(synthroom.Options{
					Shape: synthroom.Forked, MessageBytes: 200, JoinEvery: 2, StateEvery: 5, HashIDs: true,
				})
				require.NoError(t, err)
				var events []Pending
				for _, ev := range g.Setup() {
					events = append(events, Pending{RoomVersion: synthroom.Version, PDU: ev.JSON})
				}
				for range 400 {
					_, pdu := g.Next(nil)
					events = append(events, Pending{RoomVersion: synthroom.Version, PDU: pdu})
				}
				ctx := context.Background()
				for start := 0; start < len(events); start += batch {
					require.NoError(t, s.AddBatch(ctx, events[start:min(start+batch, len(events))]))
				}
				require.Greater(t, requireAuthCounts(t, s), 50, "the room should have many state groups")
			})
		}
	}
}

// requireAuthCounts compares every state group's summed state_group_auth
// counts with the auth links of its whole state, and returns the
// number of groups.
func requireAuthCounts(t *testing.T, s *Store) int {
	t.Helper()
	ctx := context.Background()
	links := make(map[string][]string)
	rows, err := s.db.QueryContext(ctx, `
SELECT e.event_id, x.event_id
FROM auth_links a JOIN events e ON e.event_nid = a.event_nid JOIN events x ON x.event_nid = a.auth_nid`)
	require.NoError(t, err)
	require.NoError(t, scanRows(rows, func() error {
		var id, auth string
		if err := rows.Scan(&id, &auth); err != nil {
			return err
		}
		links[id] = append(links[id], auth)
		return nil
	}))
	counts := make(map[int64]map[string]int)
	rows, err = s.db.QueryContext(ctx, `SELECT group_id, auth_event_id, n FROM state_group_auth`)
	require.NoError(t, err)
	require.NoError(t, scanRows(rows, func() error {
		var (
			group int64
			auth  string
			n     int
		)
		if err := rows.Scan(&group, &auth, &n); err != nil {
			return err
		}
		require.NotZero(t, n, "group %d, auth event %s: rows with n = 0 are not written", group, auth)
		if counts[group] == nil {
			counts[group] = make(map[string]int)
		}
		counts[group][auth] = n
		return nil
	}))
	var groups []int64
	rows, err = s.db.QueryContext(ctx, `SELECT group_id FROM state_groups WHERE auth_counted ORDER BY group_id`)
	require.NoError(t, err)
	require.NoError(t, scanRows(rows, func() error {
		var g int64
		if err := rows.Scan(&g); err != nil {
			return err
		}
		groups = append(groups, g)
		return nil
	}))

	for _, group := range groups {
		chain, err := s.groupChain(ctx, s.db, make(groupCache), group)
		require.NoError(t, err)
		want := make(map[string]int)
		for _, id := range wholeState(chain) {
			for _, auth := range links[*id] {
				want[auth]++
			}
		}
		got := make(map[string]int)
		for _, g := range chain {
			for auth, n := range counts[g.id] {
				got[auth] += n
				if got[auth] == 0 {
					delete(got, auth)
				}
			}
		}
		require.Equal(t, want, got, "state group %d (chain of %d groups)", group, len(chain))
	}
	return len(groups)
}

// TestAuthCountsOfAStateRedaction: a redaction that is also a state event
// (any server can send one) changes the state, and judging it reads the
// stored power levels, which writes the batch so far out in the middle of
// adding it; its state change must still count its auth links.
func TestAuthCountsOfAStateRedaction(t *testing.T) {
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: "11"})
	require.NoError(t, err)
	require.NoError(t, b.StandardSetup())
	const bob = "@bob:hs2.example"
	_, err = b.Join(bob)
	require.NoError(t, err)
	var targets []string
	for i := range 3 {
		msg, err := b.Message(bob, fmt.Sprintf("message %d", i))
		require.NoError(t, err)
		targets = append(targets, msg.ID)
	}
	for _, target := range targets {
		// The second and third replace the first at its state key.
		_, err := b.State(b.Creator(), "m.room.redaction", "", map[string]any{"redacts": target})
		require.NoError(t, err)
	}
	room := b.Room()
	for _, d := range dialects {
		t.Run(d, func(t *testing.T) {
			s := openTestStore(t, d)
			var batch []Pending
			for _, ev := range room.Events {
				batch = append(batch, Pending{RoomVersion: room.Version, PDU: ev.JSON})
			}
			require.NoError(t, s.AddBatch(context.Background(), batch))
			requireAuthCounts(t, s)
			var redactions int
			require.NoError(t, s.db.QueryRow(`SELECT COUNT(*) FROM events WHERE event_type = 'm.room.redaction' AND redacted = FALSE AND after_group IS NOT NULL`).Scan(&redactions))
			require.Equal(t, 3, redactions)
		})
	}
}
