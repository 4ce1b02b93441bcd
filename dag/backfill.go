package dag

import (
	"context"
	"fmt"
	"slices"
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
	// total; 0 means 10*Limit plus the number of distinct From IDs (see the
	// package documentation).
	MaxVisits int
}

// Backfill returns the IDs of up to Limit events, newest first.
//
// The walk is best-first, as in Synapse: it starts with the From events and
// always takes the highest-depth event among those reached and not yet
// taken, ties broken by event ID ascending in byte order, then reaches that
// event's prev_events. The From events themselves are returned when they
// qualify. Rejected events are walked through but neither returned nor
// counted toward Limit; outliers, events of other rooms and events with a
// depth outside canonical JSON's integer range are neither entered nor
// returned. The result is sorted by depth descending, ties by event ID
// ascending; for a DAG whose depths are consistent that is also the order in
// which the events were taken.
//
// Fetches are batched: an event's prev_events are requested before the event
// is taken, together with those of the events likely to be taken next, so a
// whole level of a fork costs one FetchFunc call. The result is nonetheless
// exactly that of the one-event-at-a-time walk, because no event is taken
// before the prev_events of every event taken earlier are known.
//
// When the visit budget cannot pay for the prev_events of the event just
// taken, the walk stops and returns the events taken so far: they are
// exactly what the unbounded walk returns for a Limit of their number.
//
// Errors are those of fetch and of ctx, wrapped.
func Backfill(ctx context.Context, req BackfillRequest, fetch FetchFunc) ([]string, error) {
	if req.Limit <= 0 {
		return nil, nil
	}
	seeds := dedupe(req.From)
	budget := visitBudget(req.MaxVisits, req.Limit, len(seeds))
	// Most rooms' DAGs are close to a chain: expect about one ID fetched
	// per event returned, and let the maps grow past that if needed.
	expected := min(budget, len(seeds)+2*min(req.Limit, maxPrealloc), maxPrealloc)
	w := &backfillWalk{
		roomID: req.RoomID,
		fetch:  fetch,
		budget: budget,
		index:  make(map[string]int, expected),
		slots:  make([]backfillSlot, 0, expected),
	}
	w.frontier.less = w.newerFirst
	w.ahead.less = w.aheadFirst
	// Without all of From the walk could not be exact; fetching none of it
	// returns the empty prefix of the answer.
	if len(seeds) == 0 || len(seeds) > w.budget {
		return nil, nil
	}
	for _, id := range seeds {
		w.register(id)
	}
	if err := w.fetchBatch(ctx, seeds); err != nil {
		return nil, err
	}
	// The seeds took the first slots; fetch may have scribbled on seeds.
	for seed := range len(seeds) {
		w.reach(seed)
	}

	taken := make([]int, 0, min(req.Limit, maxPrealloc))
	for w.frontier.len() > 0 {
		next := w.frontier.pop()
		w.slots[next].state = slotTaken
		if !w.slots[next].node.Rejected {
			taken = append(taken, next)
			if len(taken) == req.Limit {
				break
			}
		}
		complete, err := w.expand(ctx, next, req.Limit-len(taken))
		if err != nil {
			return nil, err
		}
		if !complete {
			break
		}
		for _, id := range w.slots[next].node.PrevEvents {
			if prev, ok := w.index[id]; ok { // always, once expanded
				w.reach(prev)
			}
		}
	}

	slices.SortFunc(taken, func(a, b int) int {
		return compareNewerFirst(&w.slots[a].node, &w.slots[b].node)
	})
	ids := make([]string, len(taken))
	for i, s := range taken {
		ids[i] = w.slots[s].node.ID
	}
	return ids, nil
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

// backfillSlot is the walk's knowledge of one requested event ID.
type backfillSlot struct {
	node  Node // valid from slotFetched on; PrevEvents already capped
	batch int  // the fetch call that requested the ID
	state slotState
	// expanded: every followed prev event has been requested.
	expanded bool
}

type backfillWalk struct {
	roomID string
	fetch  FetchFunc
	budget int // IDs that may still be requested
	batch  int // fetch calls made so far

	index map[string]int // event ID → slots index, for every requested ID
	slots []backfillSlot

	frontier intHeap // slots indexes of reached events, best first
	ahead    intHeap // scratch: frontier positions, for lookahead
}

func (w *backfillWalk) newerFirst(a, b int) bool {
	return newerFirst(&w.slots[a].node, &w.slots[b].node)
}

func (w *backfillWalk) aheadFirst(a, b int) bool {
	return w.newerFirst(w.frontier.items[a], w.frontier.items[b])
}

// register records id as requested by the next fetch call. The caller makes
// sure it was not requested before and that the budget allows it.
func (w *backfillWalk) register(id string) {
	w.index[id] = len(w.slots)
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
	w.frontier.push(slot)
}

// fetchBatch requests ids, all registered for this call, and records the
// answers it may trust: the first node for each ID of this call.
func (w *backfillWalk) fetchBatch(ctx context.Context, ids []string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("dag: backfill walk: %w", err)
	}
	w.batch++
	nodes, err := w.fetch(ctx, ids)
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
		s.node = *n
		s.node.PrevEvents = followedPrevEvents(n)
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
	batch := w.appendUnrequested(nil, &w.slots[slot].node)
	if len(batch) > w.budget {
		return false, nil
	}
	w.slots[slot].expanded = true
	if len(batch) == 0 {
		return true, nil
	}
	for _, id := range batch {
		w.register(id)
	}
	batch = w.lookahead(batch, w.slots[slot].node.Depth-1, need)
	return true, w.fetchBatch(ctx, batch)
}

// lookahead appends to batch the unrequested prev_events of the next events
// in the frontier, best first, while the budget allows. It considers at most
// need events (no more can be returned) and only events of depth >= minDepth:
// in a DAG with consistent depths every prev event of the event just taken
// has a depth below that event's, so the frontier events at most one below
// it will be taken before them (or tie), whereas lower ones may never be.
func (w *backfillWalk) lookahead(batch []string, minDepth int64, need int) []string {
	if w.frontier.len() == 0 || w.budget == 0 {
		return batch
	}
	// Walk the frontier heap in priority order without popping it: a
	// second heap of positions, seeded with the root, yields each position
	// before its children.
	w.ahead.items = append(w.ahead.items[:0], 0)
	for considered := 0; considered < need && w.ahead.len() > 0; considered++ {
		pos := w.ahead.pop()
		slot := w.frontier.items[pos]
		if w.slots[slot].node.Depth < minDepth {
			break
		}
		if !w.slots[slot].expanded {
			start := len(batch)
			batch = w.appendUnrequested(batch, &w.slots[slot].node)
			if len(batch)-start > w.budget {
				return batch[:start]
			}
			w.slots[slot].expanded = true
			for _, id := range batch[start:] {
				w.register(id)
			}
		}
		for _, child := range [2]int{2*pos + 1, 2*pos + 2} {
			if child < w.frontier.len() {
				w.ahead.push(child)
			}
		}
	}
	return batch
}

// appendUnrequested appends n's followed prev_events that have never been
// requested, each once.
func (w *backfillWalk) appendUnrequested(dst []string, n *Node) []string {
	start := len(dst)
	for _, id := range n.PrevEvents {
		if _, requested := w.index[id]; requested || slices.Contains(dst[start:], id) {
			continue
		}
		dst = append(dst, id)
	}
	return dst
}
