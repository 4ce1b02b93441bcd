package dag

import (
	"context"
	"math/rand"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// The reference walks below are the straightforward versions: one event
// fetched per call, a linear scan for the best event, a plain queue. They
// share no code with the package so that the property tests compare two
// independent readings of the same rules.

func refEnterable(n Node, roomID string) bool {
	const limit = 1<<53 - 1
	return n.RoomID == roomID && !n.Outlier && n.Depth >= -limit && n.Depth <= limit
}

// refFetcher fetches one ID at a time, at most once each, and trusts only
// the first answer carrying the requested ID.
type refFetcher struct {
	t         *testing.T
	roomID    string
	fetch     FetchFunc
	requested map[string]bool
}

func (f *refFetcher) get(id string) (Node, bool) {
	if f.requested[id] {
		return Node{}, false
	}
	f.requested[id] = true
	nodes, err := f.fetch(context.Background(), []string{id})
	require.NoError(f.t, err)
	for _, n := range nodes {
		if n.ID != id {
			continue
		}
		if !refEnterable(n, f.roomID) {
			return Node{}, false
		}
		if len(n.PrevEvents) > 20 {
			n.PrevEvents = n.PrevEvents[:20]
		}
		return n, true
	}
	return Node{}, false
}

func referenceBackfill(t *testing.T, req BackfillRequest, fetch FetchFunc) []string {
	if req.Limit <= 0 {
		return nil
	}
	f := &refFetcher{t: t, roomID: req.RoomID, fetch: fetch, requested: map[string]bool{}}
	better := func(a, b Node) bool {
		return a.Depth > b.Depth || (a.Depth == b.Depth && a.ID < b.ID)
	}
	var frontier []Node
	for _, id := range req.From {
		if n, ok := f.get(id); ok {
			frontier = append(frontier, n)
		}
	}
	var taken []Node
	for len(frontier) > 0 {
		best := 0
		for i := range frontier {
			if better(frontier[i], frontier[best]) {
				best = i
			}
		}
		n := frontier[best]
		frontier = slices.Delete(frontier, best, best+1)
		if !n.Rejected {
			taken = append(taken, n)
			if len(taken) == req.Limit {
				break
			}
		}
		for _, prev := range n.PrevEvents {
			if p, ok := f.get(prev); ok {
				frontier = append(frontier, p)
			}
		}
	}
	slices.SortFunc(taken, func(a, b Node) int {
		if better(a, b) {
			return -1
		}
		return 1
	})
	var ids []string
	for _, n := range taken {
		ids = append(ids, n.ID)
	}
	return ids
}

func referenceMissingEvents(t *testing.T, req MissingEventsRequest, fetch FetchFunc) []string {
	if req.Limit <= 0 {
		return nil
	}
	f := &refFetcher{t: t, roomID: req.RoomID, fetch: fetch, requested: map[string]bool{}}
	for _, id := range req.Earliest {
		f.requested[id] = true // never fetched
	}
	type queued struct {
		node     Node
		distance int
	}
	var queue, found []queued
	for _, id := range req.Latest {
		if n, ok := f.get(id); ok {
			queue = append(queue, queued{n, 0})
		}
	}
	for len(queue) > 0 {
		q := queue[0]
		queue = queue[1:]
		if q.node.Depth < req.MinDepth {
			continue
		}
		if q.distance > 0 && !q.node.Rejected {
			found = append(found, q)
		}
		for _, prev := range q.node.PrevEvents {
			if p, ok := f.get(prev); ok {
				queue = append(queue, queued{p, q.distance + 1})
			}
		}
	}
	// Nearest first, then newest, then by ID; keep Limit; oldest first.
	slices.SortFunc(found, func(a, b queued) int {
		if a.distance != b.distance {
			return a.distance - b.distance
		}
		if a.node.Depth != b.node.Depth {
			if a.node.Depth > b.node.Depth {
				return -1
			}
			return 1
		}
		return strings.Compare(a.node.ID, b.node.ID)
	})
	found = found[:min(len(found), req.Limit)]
	slices.SortFunc(found, func(a, b queued) int {
		if a.node.Depth != b.node.Depth {
			if a.node.Depth < b.node.Depth {
				return -1
			}
			return 1
		}
		return strings.Compare(a.node.ID, b.node.ID)
	})
	var ids []string
	for _, q := range found {
		ids = append(ids, q.node.ID)
	}
	return ids
}

// randomRoom builds a random event graph: either with consistent depths
// (prev_events point at earlier events, depth = max prev depth + 1) or
// forged (random depths with many ties, prev_events anywhere, cycles),
// sprinkled with rejected events, outliers, foreign events, out-of-range
// depths, unknown prev_events and events with more than 20 prev_events.
func randomRoom(rng *rand.Rand) []Node {
	n := 1 + rng.Intn(60)
	consistent := rng.Intn(2) == 0
	id := func(i int) string { return "$e" + strconv.Itoa(i) }
	nodes := make([]Node, n)
	for i := range nodes {
		prevCount := rng.Intn(4)
		if rng.Intn(20) == 0 {
			prevCount = 21 + rng.Intn(5)
		}
		node := Node{ID: id(i), RoomID: testRoom, Ref: 1000 + i}
		var depth int64
		for range prevCount {
			switch {
			case rng.Intn(20) == 0:
				node.PrevEvents = append(node.PrevEvents, "$missing"+strconv.Itoa(rng.Intn(5)))
			case consistent && i > 0:
				p := rng.Intn(i)
				node.PrevEvents = append(node.PrevEvents, id(p))
				depth = max(depth, nodes[p].Depth)
			case !consistent:
				node.PrevEvents = append(node.PrevEvents, id(rng.Intn(n)))
			}
		}
		if consistent {
			node.Depth = depth + 1
		} else {
			node.Depth = rng.Int63n(8)
		}
		switch r := rng.Intn(100); {
		case r < 20:
			node.Rejected = true
		case r < 28:
			node.Outlier = true
		case r < 33:
			node.RoomID = "!other:example.org"
		case r < 35:
			node.Depth = 1 << 53
		case r < 37:
			node.Depth = -(1 << 53)
		}
		nodes[i] = node
	}
	return nodes
}

// randomStore serves nodes; when hostile, every answer also carries a
// tampered copy of each requested event and tampered events nobody asked for.
// Half the well-behaved stores answer in reverse order.
func randomStore(rng *rand.Rand, nodes []Node) *store {
	s := newStore(nodes...)
	if rng.Intn(2) == 0 {
		// Decided without a draw, so that the seeds keep their rooms and
		// requests.
		s.reversed = len(nodes)%2 == 1
		return s
	}
	s.extra = func(ids []string) []Node {
		var out []Node
		for _, id := range ids {
			out = append(out, Node{ID: id, RoomID: testRoom, Depth: 1000, PrevEvents: []string{"$e0"}})
		}
		for _, n := range nodes[:min(2, len(nodes))] {
			if !slices.Contains(ids, n.ID) {
				n.Depth, n.Rejected, n.Outlier, n.RoomID = 999, false, false, testRoom
				out = append(out, n)
			}
		}
		return out
	}
	return s
}

func randomIDs(rng *rand.Rand, nodes []Node, max int) []string {
	var ids []string
	for range 1 + rng.Intn(max) {
		if rng.Intn(10) == 0 {
			ids = append(ids, "$missing0")
			continue
		}
		ids = append(ids, nodes[rng.Intn(len(nodes))].ID)
	}
	return ids
}

// refsOf returns the Ref of each of ids in nodes: the node a store serves
// first for its ID. An ID the room lacks can only have been answered by a
// hostile store's tampered copy, whose Ref is 0.
func refsOf(nodes []Node, ids []string) []int {
	refs := make([]int, 0, len(ids))
	for _, id := range ids {
		ref := 0
		for _, n := range nodes {
			if n.ID == id {
				ref = n.Ref
				break
			}
		}
		refs = append(refs, ref)
	}
	return refs
}

func orEmpty(ids []string) []string {
	if ids == nil {
		return []string{}
	}
	return ids
}

func orNone(refs []int) []int {
	if refs == nil {
		return []int{}
	}
	return refs
}

func TestBackfillMatchesReference(t *testing.T) {
	for seed := int64(1); seed <= 3000; seed++ {
		rng := rand.New(rand.NewSource(seed))
		nodes := randomRoom(rng)
		req := BackfillRequest{
			RoomID:    testRoom,
			From:      randomIDs(rng, nodes, 3),
			Limit:     rng.Intn(len(nodes) + 3),
			MaxVisits: 1 << 30,
		}
		s := randomStore(rng, nodes)

		res, err := Backfill(context.Background(), req, s.fetch)
		require.NoError(t, err)
		got := res.IDs
		requireNoRepeats(t, s.fetched())
		require.Equal(t, len(s.fetched()), res.Visits, "visits of seed %d", seed)
		require.False(t, res.Exhausted, "seed %d", seed)
		unbounded := orEmpty(referenceBackfill(t, req, s.fetch))
		require.Equal(t, unbounded, orEmpty(got), "seed %d", seed)
		require.Equal(t, refsOf(nodes, got), orNone(res.Refs), "refs of seed %d", seed)

		// Any budget: never exceeded, and what is returned is exactly the
		// unbounded answer for that many events; all of it unless the
		// budget ran out.
		req.MaxVisits = 1 + rng.Intn(2*len(nodes)+2)
		s.calls = nil
		res, err = Backfill(context.Background(), req, s.fetch)
		require.NoError(t, err)
		got = res.IDs
		require.LessOrEqual(t, len(s.fetched()), req.MaxVisits, "seed %d", seed)
		require.Equal(t, len(s.fetched()), res.Visits, "visits of budget-bound walk of seed %d", seed)
		requireNoRepeats(t, s.fetched())
		if !res.Exhausted {
			require.Equal(t, unbounded, orEmpty(got), "budget-bound walk of seed %d", seed)
		}
		req.Limit = len(got)
		require.Equal(t, orEmpty(referenceBackfill(t, req, s.fetch)), orEmpty(got), "budget-bound walk of seed %d", seed)
	}
}

func TestMissingEventsMatchesReference(t *testing.T) {
	for seed := int64(1); seed <= 3000; seed++ {
		rng := rand.New(rand.NewSource(seed))
		nodes := randomRoom(rng)
		req := MissingEventsRequest{
			RoomID:    testRoom,
			Latest:    randomIDs(rng, nodes, 3),
			Limit:     rng.Intn(len(nodes) + 3),
			MinDepth:  int64(rng.Intn(4)) - 1,
			MaxVisits: 1 << 30,
		}
		if rng.Intn(2) == 0 {
			req.Earliest = randomIDs(rng, nodes, 3)
		}
		s := randomStore(rng, nodes)

		res, err := MissingEvents(context.Background(), req, s.fetch)
		require.NoError(t, err)
		got := res.IDs
		requireNoRepeats(t, s.fetched())
		require.Equal(t, len(s.fetched()), res.Visits, "visits of seed %d", seed)
		require.False(t, res.Exhausted, "seed %d", seed)
		unbounded := orEmpty(referenceMissingEvents(t, req, s.fetch))
		require.Equal(t, unbounded, orEmpty(got), "seed %d", seed)
		require.Equal(t, refsOf(nodes, got), orNone(res.Refs), "refs of seed %d", seed)

		req.MaxVisits = 1 + rng.Intn(2*len(nodes)+2)
		s.calls = nil
		res, err = MissingEvents(context.Background(), req, s.fetch)
		require.NoError(t, err)
		got = res.IDs
		require.LessOrEqual(t, len(s.fetched()), req.MaxVisits, "seed %d", seed)
		require.Equal(t, len(s.fetched()), res.Visits, "visits of budget-bound walk of seed %d", seed)
		requireNoRepeats(t, s.fetched())
		if !res.Exhausted {
			require.Equal(t, unbounded, orEmpty(got), "budget-bound walk of seed %d", seed)
		}
		req.Limit = len(got)
		require.Equal(t, orEmpty(referenceMissingEvents(t, req, s.fetch)), orEmpty(got), "budget-bound walk of seed %d", seed)
	}
}
