package dag

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// benchChain is a linear room of n events; the newest is "$<n-1>".
func benchChain(n int) map[string]Node {
	room := make(map[string]Node, n)
	for i := range n {
		node := Node{ID: "$" + strconv.Itoa(i), RoomID: testRoom, Depth: int64(i + 1)}
		if i > 0 {
			node.PrevEvents = []string{"$" + strconv.Itoa(i-1)}
		}
		room[node.ID] = node
	}
	return room
}

// benchForks is a room of n events that forks and merges every few events:
// each block is a base event, three branches pointing at it, and a merge
// pointing at the three branches; the next base points at the merge.
func benchForks(n int) map[string]Node {
	const blockSize = 5
	room := make(map[string]Node, n)
	id := func(i int) string { return "$" + strconv.Itoa(i) }
	for i := range n {
		block, pos := i/blockSize, i%blockSize
		node := Node{ID: id(i), RoomID: testRoom}
		base := block * blockSize
		switch pos {
		case 0: // base
			node.Depth = int64(3*block + 1)
			if i > 0 {
				node.PrevEvents = []string{id(i - 1)}
			}
		case 1, 2, 3: // branches
			node.Depth = int64(3*block + 2)
			node.PrevEvents = []string{id(base)}
		case 4: // merge
			node.Depth = int64(3*block + 3)
			node.PrevEvents = []string{id(base + 1), id(base + 2), id(base + 3)}
		}
		room[node.ID] = node
	}
	return room
}

// fetchCounts counts what a benchmark's walks asked countingFetch for, and
// the CPU time the process spent (as the root package's benchmarks do: on a
// machine shared with other work, wall time also measures the competition
// for the cores, CPU time does not).
type fetchCounts struct {
	calls, ids int
	cpuStart   time.Duration
	cpuOK      bool
}

// start starts measuring CPU time; call it just before the benchmark loop.
func (c *fetchCounts) start() {
	c.cpuStart, c.cpuOK = processCPUTime()
}

// report adds the counts and the CPU time per operation to b's results;
// call it just after the loop.
func (c *fetchCounts) report(b *testing.B) {
	end, ok := processCPUTime()
	if c.cpuOK && ok && b.N > 0 {
		b.ReportMetric(float64(end-c.cpuStart)/float64(b.N), "cpu-ns/op")
	}
	b.ReportMetric(float64(c.calls)/float64(b.N), "fetches/op")
	b.ReportMetric(float64(c.ids)/float64(b.N), "ids/op")
}

// countingFetch is a FetchFunc over room that counts its calls and the IDs
// asked for.
func countingFetch(room map[string]Node) (FetchFunc, *fetchCounts) {
	counts := new(fetchCounts)
	return func(_ context.Context, ids []string) ([]Node, error) {
		counts.calls++
		counts.ids += len(ids)
		out := make([]Node, 0, len(ids))
		for _, id := range ids {
			if n, ok := room[id]; ok {
				out = append(out, n)
			}
		}
		return out, nil
	}, counts
}

func BenchmarkBackfillWalk(b *testing.B) {
	shapes := []struct {
		prefix string
		build  func(n int) map[string]Node
	}{
		{"", benchChain},
		{"fork/", benchForks},
	}
	sizes := []struct {
		name string
		n    int
	}{
		{"1e3", 1_000},
		{"1e5", 100_000},
		{"1e6", 1_000_000},
	}
	for _, shape := range shapes {
		for _, size := range sizes {
			var room map[string]Node // built once, on first use
			b.Run(shape.prefix+"events="+size.name, func(b *testing.B) {
				if room == nil {
					room = shape.build(size.n)
				}
				fetch, counts := countingFetch(room)
				req := BackfillRequest{RoomID: testRoom, From: []string{"$" + strconv.Itoa(size.n-1)}, Limit: 100}
				ctx := context.Background()
				b.ReportAllocs()
				counts.start()
				for b.Loop() {
					res, err := Backfill(ctx, req, fetch)
					if err != nil {
						b.Fatal(err)
					}
					if got := res.IDs; len(got) != req.Limit {
						b.Fatalf("got %d events, want %d", len(got), req.Limit)
					}
				}
				counts.report(b)
			})
		}
	}
}

// BenchmarkMissingEvents walks back from the newest event of each room
// shape, as a get_missing_events request of 20 events (the handler
// benchmark's limit) and of 100, with an Earliest event far behind.
func BenchmarkMissingEvents(b *testing.B) {
	shapes := []struct {
		prefix string
		build  func(n int) map[string]Node
	}{
		{"", benchChain},
		{"fork/", benchForks},
	}
	const events = 10_000
	for _, shape := range shapes {
		room := shape.build(events)
		for _, limit := range []int{20, 100} {
			b.Run(shape.prefix+"limit="+strconv.Itoa(limit), func(b *testing.B) {
				fetch, counts := countingFetch(room)
				req := MissingEventsRequest{
					RoomID:   testRoom,
					Earliest: []string{"$" + strconv.Itoa(events/2)},
					Latest:   []string{"$" + strconv.Itoa(events-1)},
					Limit:    limit,
				}
				ctx := context.Background()
				b.ReportAllocs()
				counts.start()
				for b.Loop() {
					res, err := MissingEvents(ctx, req, fetch)
					if err != nil {
						b.Fatal(err)
					}
					if got := res.IDs; len(got) != req.Limit {
						b.Fatalf("got %d events, want %d", len(got), req.Limit)
					}
				}
				counts.report(b)
			})
		}
	}
}
