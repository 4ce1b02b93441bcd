package dag

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// MissingEventsRequest is one get_missing_events walk.
type MissingEventsRequest struct {
	RoomID string
	// Earliest are events the requester already has: never fetched,
	// returned or walked past.
	Earliest []string
	// Latest are the events to walk back from; never returned.
	Latest []string
	// Limit is the number of events to return; <= 0 returns nothing.
	Limit int
	// MinDepth: events of lower depth are neither returned nor walked past.
	MinDepth int64
	// MaxVisits bounds the number of event IDs passed to the FetchFunc in
	// total; 0 (or less) selects the default, DefaultVisitsPerResult*Limit
	// plus the number of distinct Latest IDs not in Earliest (see
	// VisitBudget).
	MaxVisits int
}

// MissingEvents finds up to Limit events, oldest first.
//
// As the spec asks, the walk is breadth-first over prev_events, starting
// from the Latest events that are in the room (Latest events that are
// unknown, outliers or in another room are ignored). Latest events are never
// returned, even when one is reached from another. Earliest events are
// neither fetched, returned nor walked past; an ID in both lists counts as
// Earliest, as in Synapse. Events with a depth below MinDepth are neither
// returned nor walked past: the spec defines min_depth, and unlike Synapse,
// which ignores it, we honour it. Rejected events are walked through but
// neither returned nor counted toward Limit; the events the package
// documentation lists are neither entered nor returned.
//
// Each level of the walk is one FetchFunc call. When Limit truncates, the
// events nearest to Latest are kept: those fewer prev_events steps away, and
// among events equally far, higher depth first, then event ID ascending in
// byte order. The result is sorted by depth ascending, ties by event ID
// ascending in byte order.
//
// When the visit budget cannot pay for the next whole level, the walk stops,
// sets Result.Exhausted and returns the events of the levels it has: they
// are exactly what the unbounded walk returns for a Limit of their number.
//
// Errors are those of fetch and of ctx, wrapped; the Result is then empty.
func MissingEvents(ctx context.Context, req MissingEventsRequest, fetch FetchFunc) (Result, error) {
	if req.Limit <= 0 {
		return Result{}, nil
	}
	// Expect about one ID fetched per event returned, as in Backfill.
	w := newMissingWalk(min(len(req.Earliest)+len(req.Latest)+min(req.Limit, maxPrealloc), maxPrealloc))
	// Earliest IDs take the first slots, marked never to be requested;
	// the distinct Latest IDs not among them are the first level.
	for _, id := range req.Earliest {
		w.add(id, markEarliest)
	}
	levelStart := len(w.ids)
	for _, id := range req.Latest {
		w.add(id, 1)
	}
	budget := VisitBudget(req.MaxVisits, req.Limit, len(w.ids)-levelStart)
	visits, exhausted := 0, false

	var found []int       // slots of the events found, in order
	var answered []answer // the accepted nodes of a fetch's answer, reused per level
walk:
	for step := 1; len(w.ids) > levelStart; step++ {
		level := w.ids[levelStart:]
		// A partial level would make the answer depend on which part was
		// fetched; stop where it is still exact instead.
		if len(level) > budget {
			exhausted = true
			break
		}
		budget -= len(level)
		if err := ctx.Err(); err != nil {
			return Result{}, fmt.Errorf("dag: get_missing_events walk: %w", err)
		}
		visits += len(level)
		nodes, err := fetch(ctx, slices.Clone(level))
		if err != nil {
			return Result{}, fmt.Errorf("dag: get_missing_events walk: fetching %d events: %w", len(level), err)
		}

		answered = answered[:0]
		for i := range nodes {
			n := &nodes[i]
			slot, ok := w.index[n.ID]
			if !ok {
				continue // not asked for
			}
			if w.slots[slot].mark != step {
				continue // not asked for in this call, or a repeat
			}
			w.slots[slot].mark = markAnswered
			if enterable(n, req.RoomID) {
				answered = append(answered, answer{node: i, slot: slot})
			}
		}
		slices.SortFunc(answered, func(a, b answer) int { return compareNewerFirst(&nodes[a.node], &nodes[b.node]) })

		levelStart = len(w.ids)
		nextAffordable := true // false once the next level outgrows the budget
		for _, a := range answered {
			n := &nodes[a.node]
			if n.Depth < req.MinDepth {
				continue
			}
			if step > 1 && !n.Rejected { // step 1 fetches Latest
				// Keep what the result needs: nodes is valid only until
				// the next fetch.
				w.slots[a.slot].depth, w.slots[a.slot].ref = n.Depth, n.Ref
				found = append(found, a.slot)
				if len(found) == req.Limit {
					break walk
				}
			}
			if !nextAffordable {
				continue
			}
			for _, prev := range followedPrevEvents(n) {
				if len(w.ids)-levelStart < budget {
					w.add(prev, step+1)
					continue
				}
				// The next level cannot be fetched whole; keep collecting
				// this level's events but stop growing memory for a level
				// that will never be walked.
				if _, known := w.index[prev]; !known {
					nextAffordable = false
					break
				}
			}
		}
		if !nextAffordable {
			exhausted = true
			break
		}
	}

	slices.SortFunc(found, w.olderFirst)
	res := newResult(len(found), visits, exhausted)
	for _, slot := range found {
		res.IDs = append(res.IDs, w.ids[slot])
		res.Refs = append(res.Refs, w.slots[slot].ref)
	}
	return res, nil
}

// Marks of a MissingEvents slot besides the walk step (>= 1) in which its
// ID is requested; an answer is accepted only in that step.
const (
	markEarliest = 0  // never requested
	markAnswered = -1 // requested and answered; later answers are ignored
)

// missingSlot is the walk's knowledge of one event ID, whose ID is in the
// walk's ids at the same index.
type missingSlot struct {
	mark int
	// depth and ref of a node found for the result.
	depth int64
	ref   int
}

type missingWalk struct {
	// ids and slots are indexed alike, one entry per distinct ID of
	// Earliest, Latest and the levels requested since.
	ids   []string
	slots []missingSlot
	index map[string]int // event ID → slot
}

// answer is a node of fetch's answer accepted for a slot.
type answer struct {
	node int // position in the answer
	slot int
}

// newMissingWalk returns an empty walk with room for expected IDs.
func newMissingWalk(expected int) *missingWalk {
	return &missingWalk{
		ids:   make([]string, 0, expected),
		slots: make([]missingSlot, 0, expected),
		index: make(map[string]int, expected),
	}
}

// add gives id a slot with mark unless it has one already.
func (w *missingWalk) add(id string, mark int) {
	if _, known := w.index[id]; !known {
		w.index[id] = len(w.ids)
		w.ids = append(w.ids, id)
		w.slots = append(w.slots, missingSlot{mark: mark})
	}
}

// olderFirst orders slots by depth ascending, ties broken by event ID
// ascending in byte order: the order of MissingEvents' result.
func (w *missingWalk) olderFirst(a, b int) int {
	if da, db := w.slots[a].depth, w.slots[b].depth; da != db {
		if da < db {
			return -1
		}
		return 1
	}
	return strings.Compare(w.ids[a], w.ids[b])
}
