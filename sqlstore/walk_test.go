package sqlstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/dag"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/stretchr/testify/require"
)

const walkRoom = "!walk:hs1.example"

// randomDAG returns the events of a random room DAG. An honest DAG is what
// servers that follow the spec produce: prev_events name earlier events of
// the room, depth is one more than the deepest prev_event. A hostile one
// adds everything the walks must survive: forged depths (some outside
// canonical JSON's range), cycles, unknown and foreign prev_events, more
// than 20 prev_events, repeated prev_events, and events of another room.
func randomDAG(rng *rand.Rand, n int, hostile bool) []syntheticEvent {
	events := make([]syntheticEvent, 0, n)
	// honest holds the depths the events would have in an honest DAG: a
	// forged depth does not spread to the descendants.
	honest := make([]int64, 0, n)
	id := func(i int) string { return fmt.Sprintf("$e%03d", i) }
	for i := range n {
		ev := syntheticEvent{Node: dag.Node{ID: id(i), RoomID: walkRoom}}
		if i > 0 {
			// Mostly chains with forks: the latest events, sometimes an
			// older one.
			for range 1 + rng.IntN(3)*rng.IntN(2) {
				back := 1 + rng.IntN(min(i, 4))
				if rng.IntN(8) == 0 {
					back = 1 + rng.IntN(i)
				}
				if prev := id(i - back); !slices.Contains(ev.PrevEvents, prev) {
					ev.PrevEvents = append(ev.PrevEvents, prev)
				}
			}
		}
		depth := int64(0)
		for _, prev := range ev.PrevEvents {
			var p int
			fmt.Sscanf(prev, "$e%d", &p)
			depth = max(depth, honest[p])
		}
		ev.Depth = depth + 1
		honest = append(honest, ev.Depth)
		ev.Rejected = rng.IntN(6) == 0
		ev.Outlier = rng.IntN(15) == 0
		if hostile {
			switch rng.IntN(12) {
			case 0:
				ev.Depth = rng.Int64N(2*ev.Depth+2) - 1 // forged
			case 1:
				ev.PrevEvents = append(ev.PrevEvents, id(min(n-1, i+1+rng.IntN(5)))) // a cycle
			case 2:
				ev.PrevEvents = append(ev.PrevEvents, fmt.Sprintf("$unknown%d", i))
			case 3:
				ev.PrevEvents = append(ev.PrevEvents, ev.PrevEvents...) // repeats
			case 4:
				for range 25 {
					ev.PrevEvents = append(ev.PrevEvents, id(rng.IntN(n)))
				}
			case 5:
				ev.RoomID = "!other:hs1.example"
			case 6:
				ev.Depth = 1 << 60
			}
		}
		events = append(events, ev)
	}
	return events
}

// referenceFetch is a dag.FetchFunc over events, independent of the store.
func referenceFetch(events []syntheticEvent) dag.FetchFunc {
	byID := make(map[string]dag.Node, len(events))
	for _, ev := range events {
		byID[ev.ID] = ev.Node
	}
	return func(_ context.Context, ids []string) ([]dag.Node, error) {
		var nodes []dag.Node
		for _, id := range ids {
			if n, ok := byID[id]; ok {
				n.PrevEvents = slices.Clone(n.PrevEvents)
				nodes = append(nodes, n)
			}
		}
		return nodes, nil
	}
}

func eventIDs(events []*fedhistory.Event) []string {
	ids := make([]string, 0, len(events))
	for _, ev := range events {
		ids = append(ids, ev.ID)
	}
	return ids
}

// TestWalksMatchPackageDag runs random walks over random DAGs and requires
// the store's walkers to return exactly what package dag returns, with the
// stored JSON, and honest DAGs to cost two queries per walk.
func TestWalksMatchPackageDag(t *testing.T) {
	forEachDialect(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		for trial := range 12 {
			hostile := trial%2 == 1
			rng := rand.New(rand.NewPCG(uint64(trial), 42))
			events := randomDAG(rng, 150, hostile)
			// Each trial a room of its own: rename the events apart.
			room := fmt.Sprintf("!walk%d:hs1.example", trial)
			prefix := fmt.Sprintf("$t%d", trial)
			for i := range events {
				ev := &events[i]
				ev.ID = prefix + ev.ID[1:]
				if ev.RoomID == walkRoom {
					ev.RoomID = room
				}
				for j, prev := range ev.PrevEvents {
					ev.PrevEvents[j] = prefix + prev[1:]
				}
			}
			insertSynthetic(t, s, events)
			fetch := referenceFetch(events)
			pick := func() string {
				if rng.IntN(15) == 0 {
					return prefix + "unknown"
				}
				return events[len(events)-1-rng.IntN(len(events))].ID
			}

			for walk := range 25 {
				limit := []int{1, 2, 5, 10, 30, 200}[rng.IntN(6)]
				from := []string{pick()}
				for rng.IntN(3) == 0 {
					from = append(from, pick())
				}
				name := fmt.Sprintf("trial %d walk %d: limit %d from %v", trial, walk, limit, from)

				res, err := dag.Backfill(ctx, dag.BackfillRequest{RoomID: room, From: from, Limit: limit}, fetch)
				require.NoError(t, err)
				want := res.IDs
				before := s.Queries()
				got, err := walkBackfill(ctx, s, room, from, limit)
				require.NoError(t, err)
				queries := s.Queries() - before
				require.Equal(t, want, eventIDs(got), "backfill, "+name)
				if len(want) > 0 {
					stored, err := s.Events(ctx, room, want)
					require.NoError(t, err)
					require.Equal(t, stored, got, "the events' JSON")
				}
				if !hostile {
					require.LessOrEqual(t, queries, int64(2), "backfill queries, "+name)
				}

				var earliest []string
				for rng.IntN(2) == 0 {
					earliest = append(earliest, pick())
				}
				minDepth := int64(0)
				if rng.IntN(3) == 0 {
					minDepth = rng.Int64N(100)
				}
				resMissing, err := dag.MissingEvents(ctx, dag.MissingEventsRequest{
					RoomID: room, Earliest: earliest, Latest: from, Limit: limit, MinDepth: minDepth}, fetch)
				require.NoError(t, err)
				wantMissing := resMissing.IDs
				before = s.Queries()
				gotMissing, err := walkMissingEvents(ctx, s, room, earliest, from, limit, minDepth)
				require.NoError(t, err)
				queries = s.Queries() - before
				require.Equal(t, wantMissing, eventIDs(gotMissing), "missing events, earliest %v min depth %d, %s", earliest, minDepth, name)
				if !hostile {
					require.LessOrEqual(t, queries, int64(2), "missing events queries, "+name)
				}
			}
		}
	})
}

// TestWalksStayExactWhenTheCandidatesRunOut forces the candidate query to
// stop after a handful of rows, so that the walks must fetch the rest in
// further queries, and requires the same answers.
func TestWalksStayExactWhenTheCandidatesRunOut(t *testing.T) {
	forEachDialect(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		rng := rand.New(rand.NewPCG(7, 7))
		events := randomDAG(rng, 200, true)
		insertSynthetic(t, s, events)
		fetch := referenceFetch(events)
		s.walkRowLimit = 4
		var extra int64
		for walk := range 40 {
			from := []string{events[len(events)-1-rng.IntN(40)].ID}
			limit := 1 + rng.IntN(30)
			res, err := dag.Backfill(ctx, dag.BackfillRequest{RoomID: walkRoom, From: from, Limit: limit}, fetch)
			require.NoError(t, err)
			want := res.IDs
			before := s.Queries()
			got, err := walkBackfill(ctx, s, walkRoom, from, limit)
			require.NoError(t, err)
			extra += s.Queries() - before - 2
			require.Equal(t, want, eventIDs(got), "backfill walk %d", walk)

			resMissing, err := dag.MissingEvents(ctx, dag.MissingEventsRequest{RoomID: walkRoom, Latest: from, Limit: limit}, fetch)
			require.NoError(t, err)
			wantMissing := resMissing.IDs
			gotMissing, err := walkMissingEvents(ctx, s, walkRoom, nil, from, limit, 0)
			require.NoError(t, err)
			require.Equal(t, wantMissing, eventIDs(gotMissing), "missing events walk %d", walk)
		}
		require.Positive(t, extra, "the candidate queries did run out")
	})
}

// TestWalksOverRealRooms compares the walkers with package dag over the
// generated and scenario rooms, added through Add.
func TestWalksOverRealRooms(t *testing.T) {
	rooms := testRooms(t)
	room, skip := scenarioRoom(t, "10", 9)
	rooms["scenario"] = room
	forEachDialect(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		mem := memstore.New()
		for name, room := range rooms {
			if name == "scenario" {
				addRoom(t, s, mem, room, skip)
			} else {
				addRoom(t, s, mem, room, nil)
			}
		}
		for _, room := range rooms {
			fetch := func(ctx context.Context, ids []string) ([]dag.Node, error) {
				events, err := mem.Events(ctx, room.ID, ids)
				var nodes []dag.Node
				for _, ev := range events {
					nodes = append(nodes, dag.Node{ID: ev.ID, RoomID: ev.RoomID, Depth: ev.Depth,
						PrevEvents: slices.Clone(ev.PrevEvents), Rejected: ev.Rejected, Outlier: ev.Outlier})
				}
				return nodes, err
			}
			latest := room.Events[len(room.Events)-1].ID
			for _, limit := range []int{1, 10, 100} {
				res, err := dag.Backfill(ctx, dag.BackfillRequest{RoomID: room.ID, From: []string{latest}, Limit: limit}, fetch)
				require.NoError(t, err)
				want := res.IDs
				before := s.Queries()
				got, err := walkBackfill(ctx, s, room.ID, []string{latest}, limit)
				require.NoError(t, err)
				require.Equal(t, int64(2), s.Queries()-before)
				require.Equal(t, want, eventIDs(got))

				earliest := []string{room.Events[len(room.Events)/2].ID}
				res, err = dag.MissingEvents(ctx, dag.MissingEventsRequest{RoomID: room.ID, Earliest: earliest, Latest: []string{latest}, Limit: limit}, fetch)
				require.NoError(t, err)
				want = res.IDs
				before = s.Queries()
				got, err = walkMissingEvents(ctx, s, room.ID, earliest, []string{latest}, limit, 0)
				require.NoError(t, err)
				require.LessOrEqual(t, s.Queries()-before, int64(2))
				require.Equal(t, want, eventIDs(got))
			}
		}
	})
}

// TestWalkFirstBatchIsSizedToTheLimit requires a backfill's first candidate
// query to load about 2*limit rows per seed, not the visit budget of
// 10*limit + seeds, and that first batch to be enough for the whole walk
// in the generated rooms (forks every 6 events, one in 5 rejected): one
// candidate query, no follow-up.
func TestWalkFirstBatchIsSizedToTheLimit(t *testing.T) {
	require.Equal(t, 2*10+1+firstBatchSlack, firstBatch(10, 1, dag.VisitBudget(0, 10, 1)))
	require.Equal(t, 2*10*3+3+firstBatchSlack, firstBatch(10, 3, dag.VisitBudget(0, 10, 3)))
	require.Equal(t, 11, firstBatch(1, 1, 11), "never more than the visit budget")
	require.Equal(t, 7, firstBatch(100, 1, 7), "never more than MaxVisits")
	rooms := testRooms(t)
	forEachDialect(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		for name, room := range rooms {
			addRoom(t, s, nil, room, nil)
			latest := room.Events[len(room.Events)-1].ID
			for _, limit := range []int{1, 2, 5, 10, 30} {
				budget := dag.VisitBudget(0, limit, 1)
				first := firstBatch(limit, 1, budget)
				c := s.newCandidates(room.ID, budget, first, nil, dag.MinCanonicalInt)
				before := s.Queries()
				res, err := dag.Backfill(ctx, dag.BackfillRequest{RoomID: room.ID, From: []string{latest}, Limit: limit}, c.fetch)
				require.NoError(t, err)
				require.Len(t, res.IDs, limit, name)
				require.Equal(t, int64(1), s.Queries()-before, "%s, limit %d: one candidate query", name, limit)
				// The query reads one row past its budget (seeds + first) to
				// tell a stop at the budget from the end of the room.
				require.LessOrEqual(t, len(c.nodes), 1+first+1, "%s, limit %d", name, limit)
			}
		}
	})
}
