package dag

import (
	"container/heap"
	"context"
	"fmt"
	"slices"
	"strings"
)

// BackfillRequest is one backfill walk.
type BackfillRequest struct {
	RoomID string
	// From are the events to walk back from (the query's "v" values).
	// Repeats are ignored.
	From []string
	// Limit is the number of events to return; <= 0 returns nothing.
	Limit int
	// MaxVisits bounds the number of event IDs passed to the FetchFunc in
	// total; 0 (or less) selects the default, DefaultVisitsPerResult*Limit
	// plus the number of distinct From IDs (see VisitBudget).
	MaxVisits int
}

// Backfill finds up to Limit events, newest first.
//
// The walk is best-first, as in Synapse: it starts with the From events and
// always takes the highest-depth event among those reached and not yet
// taken, ties broken by event ID ascending in byte order, then reaches that
// event's prev_events. The From events themselves are returned when they
// qualify. Rejected events are walked through but neither returned nor
// counted toward Limit; the events the package documentation lists are
// neither entered nor returned. The result is sorted by depth descending,
// ties by event ID ascending; for a DAG whose depths are consistent that is
// also the order in which the events were taken.
//
// Fetches are batched: an event's prev_events are requested before the event
// is taken, together with those of the events likely to be taken next, so a
// whole level of a fork costs one FetchFunc call. The result is nonetheless
// exactly that of the one-event-at-a-time walk, because no event is taken
// before the prev_events of every event taken earlier are known.
//
// When the visit budget cannot pay for the From events, or for the
// prev_events of the event just taken, the walk stops, sets
// Result.Exhausted and returns the events taken so far: they are exactly
// what the unbounded walk returns for a Limit of their number.
//
// Errors are those of fetch and of ctx, wrapped; the Result is then empty.
func Backfill(ctx context.Context, req BackfillRequest, fetch FetchFunc) (Result, error) {
	if req.Limit <= 0 {
		return Result{}, nil
	}
	// Most rooms' DAGs are close to a chain: expect about one ID fetched
	// per event returned, and let the index grow past that if needed.
	expected := min(len(req.From)+min(req.Limit, maxPrealloc), maxPrealloc)
	if req.MaxVisits > 0 {
		expected = min(expected, req.MaxVisits)
	}
	w := newBackfillWalk(req.RoomID, fetch, expected)
	// The distinct From IDs take the first slots; the index drops repeats.
	for _, id := range req.From {
		if _, known := w.index[id]; !known {
			w.register(id)
		}
	}
	seeds := len(w.slots)
	if seeds == 0 {
		return Result{}, nil
	}
	// register counted the seeds against a budget of 0. Without all of From
	// the walk could not be exact; fetching none of it returns the empty
	// prefix of the answer.
	w.budget += VisitBudget(req.MaxVisits, req.Limit, seeds)
	if w.budget < 0 {
		return Result{Exhausted: true}, nil
	}
	if err := w.fetchBatch(ctx, 0); err != nil {
		return Result{}, err
	}
	for seed := range seeds {
		w.reach(seed)
	}

	var taken []int // slots of the events taken, in order
	exhausted := false
	for w.frontier.Len() > 0 {
		next := heap.Pop(&w.frontier).(int)
		w.slots[next].state = slotTaken
		if !w.slots[next].rejected {
			taken = append(taken, next)
			if len(taken) == req.Limit {
				break
			}
		}
		complete, err := w.expand(ctx, next, req.Limit-len(taken))
		if err != nil {
			return Result{}, err
		}
		if !complete {
			exhausted = true
			break
		}
		for _, id := range w.slots[next].prevEvents {
			w.reach(w.index[id]) // expanded: every one has a slot
		}
	}

	slices.SortFunc(taken, w.compareNewerFirst)
	res := newResult(len(taken), w.visits, exhausted)
	for _, s := range taken {
		res.IDs = append(res.IDs, w.ids[s])
		res.Refs = append(res.Refs, w.slots[s].ref)
	}
	return res, nil
}

type slotState uint8

const (
	// slotAwaiting: requested, no answer accepted. Once the fetch that
	// requested it has returned, the ID is unknown to the walk for good.
	slotAwaiting slotState = iota
	// slotUnusable: answered with a node the walk may not enter.
	slotUnusable
	// slotFetched: answered with an enterable node that no taken event
	// points at yet (fetched ahead).
	slotFetched
	// slotReached: in the frontier, waiting to be taken.
	slotReached
	slotTaken
)

// backfillSlot is the walk's knowledge of one requested event ID, whose
// ID is in the walk's ids at the same index.
type backfillSlot struct {
	// From slotFetched on, the node's followed prev_events (the first
	// MaxPrevEvents), depth, Ref and Rejected.
	prevEvents []string
	depth      int64
	ref        int
	rejected   bool
	batch      int // the fetch call that requested the ID
	state      slotState
	// expanded: every followed prev event has been requested.
	expanded bool
}

// compareNewerFirst orders slots newest first, as compareNewerFirst orders
// nodes: the order in which Backfill takes events and returns them.
func (w *backfillWalk) compareNewerFirst(a, b int) int {
	if da, db := w.slots[a].depth, w.slots[b].depth; da != db {
		if da > db {
			return -1
		}
		return 1
	}
	return strings.Compare(w.ids[a], w.ids[b])
}

type backfillWalk struct {
	roomID string
	fetch  FetchFunc
	budget int // IDs that may still be requested
	batch  int // fetch calls made so far
	visits int // IDs passed to fetch so far

	// ids and slots are indexed alike, one entry per requested ID.
	ids   []string
	slots []backfillSlot
	index map[string]int // event ID → slot

	frontier slotHeap // slots indexes of reached events, best first
	ahead    slotHeap // scratch: frontier positions, for lookahead
}

// newBackfillWalk returns an empty walk with room for expected IDs.
func newBackfillWalk(roomID string, fetch FetchFunc, expected int) *backfillWalk {
	w := &backfillWalk{
		roomID: roomID,
		fetch:  fetch,
		ids:    make([]string, 0, expected),
		slots:  make([]backfillSlot, 0, expected),
		index:  make(map[string]int, expected),
	}
	w.frontier.less = w.newerFirst
	w.ahead.less = w.aheadFirst
	return w
}

func (w *backfillWalk) newerFirst(a, b int) bool {
	return w.compareNewerFirst(a, b) < 0
}

func (w *backfillWalk) aheadFirst(a, b int) bool {
	return w.newerFirst(w.frontier.items[a], w.frontier.items[b])
}

// register gives id the next slot, as requested by the next fetch call,
// and counts it against the budget (which the caller checks).
func (w *backfillWalk) register(id string) {
	w.index[id] = len(w.ids)
	w.ids = append(w.ids, id)
	w.slots = append(w.slots, backfillSlot{batch: w.batch + 1})
	w.budget--
}

// reach moves a fetched event into the frontier; anything else (unknown,
// unusable, already reached or taken) is left alone.
func (w *backfillWalk) reach(slot int) {
	if w.slots[slot].state != slotFetched {
		return
	}
	w.slots[slot].state = slotReached
	heap.Push(&w.frontier, slot)
}

// fetchBatch requests the IDs of the slots from first on, all registered
// for this call, and records the answers it may trust: the first node for
// each ID of this call.
func (w *backfillWalk) fetchBatch(ctx context.Context, first int) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dag: backfill walk: %w", err)
	}
	w.batch++
	ids := w.ids[first:]
	w.visits += len(ids)
	nodes, err := w.fetch(ctx, slices.Clone(ids))
	if err != nil {
		return fmt.Errorf("dag: backfill walk: fetching %d events: %w", len(ids), err)
	}
	for i := range nodes {
		n := &nodes[i]
		slot, ok := w.index[n.ID]
		if !ok {
			continue
		}
		s := &w.slots[slot]
		if s.batch != w.batch || s.state != slotAwaiting {
			continue
		}
		if !enterable(n, w.roomID) {
			s.state = slotUnusable
			continue
		}
		// Only what the walk reads from here on: every pointer copied is
		// work for the garbage collector's write barrier while it marks.
		s.prevEvents = followedPrevEvents(n)
		s.depth, s.ref, s.rejected = n.Depth, n.Ref, n.Rejected
		s.state = slotFetched
	}
	return nil
}

// expand makes sure the prev_events of slot, an event just taken, have been
// fetched. If a fetch is needed it also requests, one step ahead, the
// prev_events of the events likely to be taken next, so that they do not
// cost a call each. It reports false when the budget cannot pay for slot's
// prev_events: the walk cannot stay exact and must stop.
func (w *backfillWalk) expand(ctx context.Context, slot, need int) (bool, error) {
	if w.slots[slot].expanded {
		return true, nil
	}
	first := len(w.slots)
	if !w.expandSlot(slot) {
		return false, nil
	}
	if len(w.slots) == first {
		return true, nil
	}
	w.lookahead(w.slots[slot].depth-1, need)
	return true, w.fetchBatch(ctx, first)
}

// lookahead registers the unrequested prev_events of the next events in
// the frontier, best first, while the budget allows. It considers at most
// need events (no more can be returned) and only events of depth >= minDepth:
// in a DAG with consistent depths every prev event of the event just taken
// has a depth below that event's, so the frontier events at most one below
// it will be taken before them (or tie), whereas lower ones may never be.
func (w *backfillWalk) lookahead(minDepth int64, need int) {
	if w.frontier.Len() == 0 || w.budget == 0 {
		return
	}
	// Walk the frontier heap in priority order without popping it: a
	// second heap of positions, seeded with the root, yields each position
	// before its children (at 2i+1 and 2i+2, as container/heap documents).
	w.ahead.items = append(w.ahead.items[:0], 0)
	for considered := 0; considered < need && w.ahead.Len() > 0; considered++ {
		pos := heap.Pop(&w.ahead).(int)
		slot := w.frontier.items[pos]
		if w.slots[slot].depth < minDepth {
			break
		}
		if !w.slots[slot].expanded && !w.expandSlot(slot) {
			return
		}
		for _, child := range [2]int{2*pos + 1, 2*pos + 2} {
			if child < w.frontier.Len() {
				heap.Push(&w.ahead, child)
			}
		}
	}
}

// expandSlot expands slot if the budget allows: it registers, for the next
// fetch call, the IDs among the slot's followed prev_events that have never
// been requested, and records the slots of all its followed prev_events.
// When the budget cannot pay for them it leaves the walk as it was and
// returns false.
func (w *backfillWalk) expandSlot(slot int) bool {
	firstNew := len(w.slots)
	for _, id := range w.slots[slot].prevEvents {
		// Register new IDs right away, so that a repeat in prevEvents is
		// known too; undo it below if the budget cannot pay.
		if _, known := w.index[id]; !known {
			w.register(id)
		}
	}
	if w.budget < 0 {
		for _, id := range w.ids[firstNew:] {
			delete(w.index, id)
		}
		clear(w.ids[firstNew:])
		w.budget += len(w.ids) - firstNew
		w.ids, w.slots = w.ids[:firstNew], w.slots[:firstNew]
		return false
	}
	w.slots[slot].expanded = true
	return true
}
