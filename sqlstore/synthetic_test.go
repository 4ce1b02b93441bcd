package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"testing"

	"github.com/fedhistory/fedhistory/dag"
	"github.com/stretchr/testify/require"
)

// syntheticEvent is a row for insertSynthetic: walk metadata and JSON only,
// no state. The walks read nothing else, so random DAGs (with forged depths,
// cycles, foreign and unknown prev_events, which no real PDU could carry
// past Add) and benchmark rooms of a million events can be written straight
// into the tables.
type syntheticEvent struct {
	dag.Node
	JSON []byte
}

// insertSynthetic writes events into the events and prev_edges tables in one
// transaction, in multi-row statements.
func insertSynthetic(t testing.TB, s *Store, events []syntheticEvent) {
	t.Helper()
	ctx := context.Background()
	tx, err := s.db.BeginTx(ctx, nil)
	require.NoError(t, err)
	defer tx.Rollback() //nolint:errcheck
	// prev_edges names an event by its nid, so the nids are written too,
	// counting on from the largest so far; PostgreSQL's sequence is moved
	// past them at the end, for the Adds that may follow.
	var nid int64
	require.NoError(t, tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(event_nid), 0) FROM events`).Scan(&nid))
	const batch = 2000
	for start := 0; start < len(events); start += batch {
		chunk := events[start:min(start+batch, len(events))]
		var rows, edges [][]any
		for _, ev := range chunk {
			json := ev.JSON
			if json == nil {
				json = []byte(fmt.Sprintf(`{"event_id":%q}`, ev.ID))
			}
			nid++
			rows = append(rows, []any{nid, ev.ID, ev.RoomID, ev.Depth, jsonList(ev.PrevEvents), "m.room.message", "@s:hs1.example", "",
				ev.Rejected, ev.Outlier, sql.NullInt64{}, sql.NullInt64{}, json})
			for i, prev := range ev.PrevEvents {
				edges = append(edges, []any{nid, i, prev})
			}
		}
		require.NoError(t, s.insertRows(ctx, tx, "events", []string{"event_nid", "event_id", "room_id", "depth", "prev_events", "event_type", "sender", "redacts",
			"rejected", "outlier", "before_group", "after_group", "json"}, rows))
		require.NoError(t, s.insertRows(ctx, tx, "prev_edges", edgeColumns, edges))
	}
	if s.dialect == postgres && nid > 0 {
		_, err := tx.ExecContext(ctx, `SELECT setval(pg_get_serial_sequence('events', 'event_nid'), $1)`, nid)
		require.NoError(t, err)
	}
	require.NoError(t, tx.Commit())
}
