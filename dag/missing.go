package dag

import (
	"context"
	"fmt"
	"slices"
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
	// total; 0 means 10*Limit plus the number of distinct Latest IDs not in
	// Earliest (see the package documentation).
	MaxVisits int
}

// Marks in MissingEvents' seen map besides the walk step (>= 1) in which
// an ID is requested; an answer is accepted only in that step.
const (
	markEarliest = 0  // never requested
	markAnswered = -1 // requested and answered; later answers are ignored
)

// MissingEvents returns the IDs of up to Limit events, oldest first.
//
// As the spec asks, the walk is breadth-first over prev_events, starting
// from the Latest events that are in the room (Latest events that are
// unknown, outliers or in another room are ignored). Latest events are never
// returned, even when one is reached from another. Earliest events are
// neither fetched, returned nor walked past; an ID in both lists counts as
// Earliest, as in Synapse. Events with a depth below MinDepth are neither
// returned nor walked past: the spec defines min_depth, and unlike Synapse,
// which ignores it, we honour it. Rejected events are walked through but
// neither returned nor counted toward Limit; outliers, events of other rooms
// and events with a depth outside canonical JSON's integer range are neither
// entered nor returned.
//
// Each level of the walk is one FetchFunc call. When Limit truncates, the
// events nearest to Latest are kept: those fewer prev_events steps away, and
// among events equally far, higher depth first, then event ID ascending in
// byte order. The result is sorted by depth ascending, ties by event ID
// ascending in byte order.
//
// When the visit budget cannot pay for the next whole level, the walk stops
// and returns the events of the levels it has: they are exactly what the
// unbounded walk returns for a Limit of their number.
//
// Errors are those of fetch and of ctx, wrapped.
func MissingEvents(ctx context.Context, req MissingEventsRequest, fetch FetchFunc) ([]string, error) {
	nodes, err := missingEvents(ctx, req, fetch)
	if nodes == nil {
		return nil, err
	}
	ids := make([]string, len(nodes))
	for i := range nodes {
		ids[i] = nodes[i].ID
	}
	return ids, nil
}

// MissingEventsRefs is MissingEvents returning the Ref of each node rather
// than its ID: the caller's own reference to each event, so that it need
// not look the IDs up again.
func MissingEventsRefs(ctx context.Context, req MissingEventsRequest, fetch FetchFunc) ([]int, error) {
	nodes, err := missingEvents(ctx, req, fetch)
	if nodes == nil {
		return nil, err
	}
	refs := make([]int, len(nodes))
	for i := range nodes {
		refs[i] = nodes[i].Ref
	}
	return refs, nil
}

// missingEvents runs the walk and returns the nodes found, nil when it
// fails or returns nothing before the walk starts.
func missingEvents(ctx context.Context, req MissingEventsRequest, fetch FetchFunc) ([]Node, error) {
	if req.Limit <= 0 {
		return nil, nil
	}
	// seen holds every ID the walk must not request again, with its mark.
	seen := make(map[string]int, min(len(req.Earliest)+len(req.Latest), maxPrealloc))
	for _, id := range req.Earliest {
		seen[id] = markEarliest
	}
	level := make([]string, 0, min(len(req.Latest), maxPrealloc))
	for _, id := range req.Latest {
		if _, ok := seen[id]; ok {
			continue
		}
		seen[id] = 1
		level = append(level, id)
	}
	budget := visitBudget(req.MaxVisits, req.Limit, len(level))

	found := make([]Node, 0, min(req.Limit, maxPrealloc))
walk:
	for step := 1; len(level) > 0; step++ {
		// A partial level would make the answer depend on which part was
		// fetched; stop where it is still exact instead.
		if len(level) > budget {
			break
		}
		budget -= len(level)
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("dag: get_missing_events walk: %w", err)
		}
		nodes, err := fetch(ctx, level)
		if err != nil {
			return nil, fmt.Errorf("dag: get_missing_events walk: fetching %d events: %w", len(level), err)
		}

		answered := make([]Node, 0, min(len(nodes), len(level)))
		for i := range nodes {
			n := &nodes[i]
			if mark, ok := seen[n.ID]; !ok || mark != step {
				continue // not asked for in this call, or a repeat
			}
			seen[n.ID] = markAnswered
			if enterable(n, req.RoomID) {
				answered = append(answered, *n)
			}
		}
		slices.SortFunc(answered, func(a, b Node) int { return compareNewerFirst(&a, &b) })

		var next []string
		nextAffordable := true // false once next outgrows the budget
		for i := range answered {
			n := &answered[i]
			if n.Depth < req.MinDepth {
				continue
			}
			if step > 1 && !n.Rejected { // step 1 fetches Latest
				found = append(found, *n)
				if len(found) == req.Limit {
					break walk
				}
			}
			for _, prev := range followedPrevEvents(n) {
				if _, ok := seen[prev]; ok || !nextAffordable {
					continue
				}
				if len(next) == budget {
					// The next level cannot be fetched whole; keep
					// collecting this level's events but stop growing
					// memory for a level that will never be walked.
					nextAffordable = false
					continue
				}
				seen[prev] = step + 1
				next = append(next, prev)
			}
		}
		if !nextAffordable {
			break
		}
		level = next
	}

	slices.SortFunc(found, func(a, b Node) int { return olderFirst(&a, &b) })
	return found, nil
}
