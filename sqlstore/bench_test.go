package sqlstore

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fedhistory/fedhistory/dag"
	"github.com/stretchr/testify/require"
)

// benchEventsEnv sets the size of the benchmark room (default 10^5 events).
const benchEventsEnv = "FEDHISTORY_BENCH_EVENTS"

// benchRoom returns a synthetic room of n events, newest last: a chain that
// forks every 50 events into two branches of two events that merge again,
// with every 20th event rejected (walked through, not counted). Each event
// carries about 600 bytes of JSON.
func benchRoom(n int) []syntheticEvent {
	const room = "!bench:hs1.example"
	filler := strings.Repeat("x", 500)
	events := make([]syntheticEvent, 0, n)
	id := func(i int) string { return fmt.Sprintf("$bench%08d", i) }
	for i := range n {
		ev := syntheticEvent{Node: dag.Node{ID: id(i), RoomID: room, Depth: int64(i + 1)}}
		switch {
		case i == 0:
		case i%50 == 3 && i >= 4:
			// The merge: the two branches are i-1 (on i-2) and i-3.
			ev.PrevEvents = []string{id(i - 1), id(i - 3)}
		case i%50 == 2 && i >= 4:
			ev.PrevEvents = []string{id(i - 2)} // the second branch
		default:
			ev.PrevEvents = []string{id(i - 1)}
		}
		ev.Rejected = i%20 == 19
		ev.JSON = fmt.Appendf(nil, `{"event_id":%q,"type":"m.room.message","content":{"body":%q}}`, ev.ID, filler)
		events = append(events, ev)
	}
	return events
}

// BenchmarkSQLBackfill measures a backfill of 100 events from the newest
// event of a large room, in ns/op and in SQL statements per walk
// (queries/op). Set FEDHISTORY_BENCH_EVENTS for the room size (the issue's
// target is 10^6); the default of 10^5 keeps a CI smoke run short. The
// PostgreSQL variant runs when FEDHISTORY_TEST_POSTGRES is set.
func BenchmarkSQLBackfill(b *testing.B) {
	n := 100_000
	if env := os.Getenv(benchEventsEnv); env != "" {
		var err error
		n, err = strconv.Atoi(env)
		require.NoError(b, err, benchEventsEnv)
	}
	if testing.Short() && n > 100_000 {
		b.Skipf("building a room of %d events is slow: skipped in short mode", n)
	}
	room := benchRoom(n)
	newest := []string{room[len(room)-1].ID}
	const limit = 100
	// The reference answer, from package dag over the room in memory.
	res, err := dag.Backfill(context.Background(), dag.BackfillRequest{RoomID: room[0].RoomID, From: newest, Limit: limit}, referenceFetch(room))
	require.NoError(b, err)
	want := res.IDs
	require.Len(b, want, limit)

	for _, d := range dialects {
		b.Run(d, func(b *testing.B) {
			s := benchStore(b, d, room)
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			before := s.Queries()
			for b.Loop() {
				events, err := walkBackfill(ctx, s, room[0].RoomID, newest, limit)
				if err != nil {
					b.Fatal(err)
				}
				if len(events) != limit || events[0].ID != want[0] || events[limit-1].ID != want[limit-1] {
					b.Fatalf("walk returned %d events, not the %d package dag returns", len(events), limit)
				}
			}
			b.ReportMetric(float64(s.Queries()-before)/float64(b.N), "queries/op")
		})
	}
}

// benchStore opens a store of the dialect holding room. (b.Loop runs the
// benchmark function once, so the room is built once per run.)
func benchStore(b *testing.B, dialect string, room []syntheticEvent) *Store {
	s := openTestStore(b, dialect) // skips without PostgreSQL
	start := time.Now()
	insertSynthetic(b, s, room)
	if dialect == "postgres" {
		_, err := s.db.Exec(`ANALYZE`)
		require.NoError(b, err)
	}
	b.Logf("%s: inserted %d events in %v", dialect, len(room), time.Since(start))
	return s
}
