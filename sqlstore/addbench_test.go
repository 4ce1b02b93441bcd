package sqlstore

import (
	"context"
	"os"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/synthroom"
)

// benchAddEventsEnv sets the size of BenchmarkAddBatch's room (default 10^4).
const benchAddEventsEnv = "FEDHISTORY_BENCH_ADD_EVENTS"

// importRoom returns n events of a synthetic room shaped like an import:
// forked blocks and a join every tenth event, so that the room state grows
// with the room as real rooms' does, and event IDs that look like hashes, so
// that the indexes on them grow as real rooms' do (at random places).
func importRoom(b *testing.B, n int) []Pending {
	g, err := synthroom.New(synthroom.Options{Shape: synthroom.Forked, MessageBytes: 600, JoinEvery: 10, HashIDs: true})
	require.NoError(b, err)
	var events []Pending
	for _, ev := range g.Setup() {
		events = append(events, Pending{RoomVersion: synthroom.Version, PDU: ev.JSON})
	}
	for len(events) < n {
		_, pdu := g.Next(nil)
		events = append(events, Pending{RoomVersion: synthroom.Version, PDU: pdu})
	}
	return events
}

// BenchmarkAddBatch measures an import: one AddBatch of the whole room into
// an empty store, in events/s. Set FEDHISTORY_BENCH_ADD_EVENTS for the room
// size; the PostgreSQL variant runs when FEDHISTORY_TEST_POSTGRES is set.
func BenchmarkAddBatch(b *testing.B) {
	n := 10_000
	if env := os.Getenv(benchAddEventsEnv); env != "" {
		var err error
		n, err = strconv.Atoi(env)
		require.NoError(b, err, benchAddEventsEnv)
	}
	events := importRoom(b, n)
	for _, d := range dialects {
		b.Run(d+"/events="+strconv.Itoa(len(events)), func(b *testing.B) {
			if d == "postgres" && os.Getenv(postgresEnv) == "" {
				b.Skip(postgresEnv + " is not set")
			}
			var s *Store
			for b.Loop() {
				b.StopTimer()
				s = openTestStore(b, d)
				b.StartTimer()
				require.NoError(b, s.AddBatch(context.Background(), events))
			}
			b.ReportMetric(float64(len(events)*b.N)/b.Elapsed().Seconds(), "events/s")
			// State rows written per event: the part of an import's work that
			// grows with the room state (snapshots copy the whole state), and
			// a figure that a busy machine does not blur.
			var entries int
			require.NoError(b, s.db.QueryRowContext(context.Background(), `SELECT COUNT(*) FROM state_group_entries`).Scan(&entries))
			b.ReportMetric(float64(entries)/float64(len(events)), "state-rows/event")
		})
	}
}
