package sqlstore

import (
	"context"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/dag"
)

// TestEventAtTimestampComparesIDsAsBytes ties two events on (origin_server_ts,
// depth) whose IDs a language collation orders the other way round from
// bytes: "$B" < "$a" as bytes (0x42 < 0x61), "$a" < "$B" in English. On
// PostgreSQL the event_id column is given an English collation first, as a
// database created with such a default would have, so that only the query's
// own COLLATE "C" can give the contract's answer.
func TestEventAtTimestampComparesIDsAsBytes(t *testing.T) {
	const room = "!collation:hs1.example"
	forEachDialect(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		if s.dialect == postgres {
			_, err := s.db.ExecContext(ctx, `ALTER TABLE events ALTER COLUMN event_id TYPE TEXT COLLATE "en-x-icu"`)
			require.NoError(t, err)
			var lessInEnglish bool
			require.NoError(t, s.db.QueryRowContext(ctx, `SELECT '$a' < '$B' COLLATE "en-x-icu"`).Scan(&lessInEnglish))
			require.True(t, lessInEnglish, "the collation must disagree with bytes for the test to mean anything")
		}
		_, err := s.db.ExecContext(ctx, s.dialect.rebind(`INSERT INTO rooms (room_id, room_version) VALUES ($1, '1')`), room)
		require.NoError(t, err)
		insertSynthetic(t, s, []syntheticEvent{
			{Node: dag.Node{ID: "$a", RoomID: room, Depth: 5}},
			{Node: dag.Node{ID: "$B", RoomID: room, Depth: 5}},
		})
		_, err = s.db.ExecContext(ctx, s.dialect.rebind(`UPDATE events SET origin_server_ts = 1000 WHERE room_id = $1`), room)
		require.NoError(t, err)

		for _, tc := range []struct {
			dir  fedhistory.Direction
			want string
		}{
			{fedhistory.Forward, "$B"},  // the least: "$B" < "$a" as bytes
			{fedhistory.Backward, "$a"}, // the greatest
		} {
			ev, err := s.EventAtTimestamp(ctx, room, 1000, tc.dir)
			require.NoError(t, err)
			require.Equal(t, tc.want, ev.ID, "direction %c", tc.dir)
		}
	})
}

// TestLookupPlansUseIndexes reads SQLite's plans of the lookups: each
// table is searched through an index, never scanned, so that the cost
// follows the answer and not the room's history. (PostgreSQL's planner
// picks by table statistics, so its plans on a small test database say
// nothing; the benchmarks check them on large rooms.)
func TestLookupPlansUseIndexes(t *testing.T) {
	s := openTestStore(t, "sqlite")
	ctx := context.Background()
	for _, tc := range []struct {
		name, query string
		args        []any
	}{
		{"AuthChain", authChainQueries[sqlite], []any{"!r:hs1.example", `["$x"]`}},
		{"Events", eventsQuery, []any{"!r:hs1.example", `["$x"]`}},
		{"Visibility", visibilitySQL[sqlite], []any{"!r:hs1.example", `["$x"]`, "hs1.example", 5, 5}},
		{"StateBefore", stateBeforeQueries[sqlite], []any{"!r:hs1.example", "$x"}},
		{"EventByID", eventByIDQuery, []any{"$x"}},
		{"EventAtTimestamp backward", timestampQueries[sqlite].atOrBefore, []any{"!r:hs1.example", int64(5)}},
		{"EventAtTimestamp forward", timestampQueries[sqlite].atOrAfter, []any{"!r:hs1.example", int64(5)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rows, err := s.db.QueryContext(ctx, "EXPLAIN QUERY PLAN "+s.dialect.rebind(tc.query), tc.args...)
			require.NoError(t, err)
			defer rows.Close()
			var plan []string
			for rows.Next() {
				var id, parent, unused int
				var detail string
				require.NoError(t, rows.Scan(&id, &parent, &unused, &detail))
				plan = append(plan, detail)
			}
			require.NoError(t, rows.Err())
			// SQLite names a scanned table by its alias: only the CTEs'
			// working tables and the JSON list of parameters may be scanned.
			for _, step := range plan {
				name, scan := strings.CutPrefix(step, "SCAN ")
				if !scan {
					continue
				}
				name, _, _ = strings.Cut(name, " ")
				require.Contains(t, []string{"c", "chain", "target", "roots", "links", "groups", "json_each"}, name,
					"%s scans a table:\n%s", tc.name, strings.Join(plan, "\n"))
			}
			require.Contains(t, strings.Join(plan, "\n"), "USING", "%s uses no index:\n%s", tc.name, strings.Join(plan, "\n"))
			// Nor may it read a whole room's events through an index on
			// (room_id, …) (see UNINDEXED).
			require.NotRegexp(t, `INDEX events_room_\w+ \(room_id=\?\)`, strings.Join(plan, "\n"),
				"%s reads a room's events by room", tc.name)
		})
	}
}

// TestOneStatementPerCall counts the statements each read of the state,
// event and timestamp capabilities runs, whatever the answer: one.
func TestOneStatementPerCall(t *testing.T) {
	room := testRooms(t)["generated v11"]
	forEachDialect(t, func(t *testing.T, s *Store) {
		addRoom(t, s, nil, room, nil)
		ctx := context.Background()
		var ids []string
		for _, ev := range room.Events {
			ids = append(ids, ev.ID)
		}
		last := ids[len(ids)-1]
		for _, tc := range []struct {
			name string
			call func() error
		}{
			{"StateBefore", func() error { _, err := s.StateBefore(ctx, room.ID, last); return err }},
			{"StateBefore of an unknown event", func() error {
				_, err := s.StateBefore(ctx, room.ID, "$unknown")
				require.ErrorIs(t, err, fedhistory.ErrEventNotFound)
				return nil
			}},
			{"AuthChain of every event", func() error { _, err := s.AuthChain(ctx, room.ID, ids); return err }},
			{"EventByID", func() error { _, err := s.EventByID(ctx, last); return err }},
			{"EventAtTimestamp backward", func() error {
				_, err := s.EventAtTimestamp(ctx, room.ID, math.MaxInt64, fedhistory.Backward)
				return err
			}},
			{"EventAtTimestamp of an unknown room", func() error {
				_, err := s.EventAtTimestamp(ctx, "!unknown:hs1.example", 0, fedhistory.Forward)
				require.ErrorIs(t, err, fedhistory.ErrRoomNotFound)
				return nil
			}},
		} {
			before := s.Queries()
			require.NoError(t, tc.call(), tc.name)
			require.Equal(t, int64(1), s.Queries()-before, tc.name)
		}
	})
}
