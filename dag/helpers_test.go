package dag

import (
	"context"
	"slices"
	"strconv"
	"sync"
)

const testRoom = "!room:example.org"

// ev builds an event of testRoom.
func ev(id string, depth int64, prevs ...string) Node {
	return Node{ID: id, RoomID: testRoom, Depth: depth, PrevEvents: prevs}
}

func rejected(n Node) Node { n.Rejected = true; return n }
func outlier(n Node) Node  { n.Outlier = true; return n }
func inRoom(room string, n Node) Node {
	n.RoomID = room
	return n
}

// store is a map-backed FetchFunc that records every call.
type store struct {
	mu     sync.Mutex
	events map[string]Node
	calls  [][]string
	// extra, when set, is appended to every answer: hostile noise.
	extra func(ids []string) []Node
	// reversed answers in the reverse order of the request, which the
	// walks must handle as well as the order asked.
	reversed bool
}

func newStore(nodes ...Node) *store {
	s := &store{events: make(map[string]Node, len(nodes))}
	for _, n := range nodes {
		s.events[n.ID] = n
	}
	return s
}

func (s *store) fetch(ctx context.Context, ids []string) ([]Node, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, slices.Clone(ids))
	var out []Node
	for _, id := range ids {
		if n, ok := s.events[id]; ok {
			out = append(out, n)
		}
	}
	if s.reversed {
		slices.Reverse(out)
	}
	if s.extra != nil {
		out = append(out, s.extra(ids)...)
	}
	return out, nil
}

// fetched returns every ID requested, in order.
func (s *store) fetched() []string {
	var all []string
	for _, c := range s.calls {
		all = append(all, c...)
	}
	return all
}

// chain returns events prefix1 … prefixN, each pointing at the previous one,
// of depth 1 … n.
func chain(prefix string, n int) []Node {
	nodes := make([]Node, n)
	for i := range nodes {
		id := prefix + strconv.Itoa(i+1)
		if i == 0 {
			nodes[i] = ev(id, 1)
		} else {
			nodes[i] = ev(id, int64(i+1), prefix+strconv.Itoa(i))
		}
	}
	return nodes
}

// backfillIDs runs Backfill and returns the IDs it found.
func backfillIDs(ctx context.Context, req BackfillRequest, fetch FetchFunc) ([]string, error) {
	res, err := Backfill(ctx, req, fetch)
	return res.IDs, err
}

// missingEventsIDs runs MissingEvents and returns the IDs it found.
func missingEventsIDs(ctx context.Context, req MissingEventsRequest, fetch FetchFunc) ([]string, error) {
	res, err := MissingEvents(ctx, req, fetch)
	return res.IDs, err
}
