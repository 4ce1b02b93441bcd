package fedhistory

import (
	"context"

	"github.com/fedhistory/fedhistory/dag"
)

// WalkBackfill runs the backfill walk req over store: with the store's own
// walker when it has one (BackfillWalker), else with dag.Backfill over
// batched Events calls. Like fs.ReadFile, it is how the handler walks, and
// how a homeserver can walk its store the same way.
func WalkBackfill(ctx context.Context, store EventStore, req dag.BackfillRequest) (WalkResult, error) {
	if walker, ok := store.(BackfillWalker); ok {
		return walker.WalkBackfill(ctx, req)
	}
	f := &eventFetcher{store: store, roomID: req.RoomID}
	res, err := dag.Backfill(ctx, req, f.fetch)
	if err != nil {
		return WalkResult{}, err
	}
	return f.result(res), nil
}

// WalkMissingEvents runs the get_missing_events walk req over store: with
// the store's own walker when it has one (MissingEventsWalker), else with
// dag.MissingEvents over batched Events calls.
func WalkMissingEvents(ctx context.Context, store EventStore, req dag.MissingEventsRequest) (WalkResult, error) {
	if walker, ok := store.(MissingEventsWalker); ok {
		return walker.WalkMissingEvents(ctx, req)
	}
	f := &eventFetcher{store: store, roomID: req.RoomID}
	res, err := dag.MissingEvents(ctx, req, f.fetch)
	if err != nil {
		return WalkResult{}, err
	}
	return f.result(res), nil
}

// eventFetcher adapts an EventStore to dag.FetchFunc. It keeps every event
// the store returns and gives each node the event's index among them as its
// Ref, so that the walk's answer maps back to stored events without a second
// lookup.
type eventFetcher struct {
	store   EventStore
	roomID  string
	fetched []*Event
}

func (f *eventFetcher) fetch(ctx context.Context, ids []string) ([]dag.Node, error) {
	events, err := f.store.Events(ctx, f.roomID, ids)
	if err != nil {
		return nil, err
	}
	nodes := make([]dag.Node, 0, len(events))
	for _, ev := range events {
		if ev == nil {
			continue // a misbehaving store; the walk treats the ID as unknown
		}
		// The walk keeps the first answer for each ID it asked for and
		// ignores the rest: duplicates need no filtering here.
		nodes = append(nodes, dag.Node{
			ID: ev.ID, RoomID: ev.RoomID, Depth: ev.Depth, PrevEvents: ev.PrevEvents,
			Rejected: ev.Rejected, Outlier: ev.Outlier, Ref: len(f.fetched),
		})
		f.fetched = append(f.fetched, ev)
	}
	return nodes, nil
}

// result maps the walk's answer (Refs of fetch's nodes) back to the events.
func (f *eventFetcher) result(res dag.Result) WalkResult {
	events := make([]*Event, len(res.Refs))
	for i, ref := range res.Refs {
		events[i] = f.fetched[ref]
	}
	return WalkResult{Events: events, Visits: res.Visits, Exhausted: res.Exhausted}
}

// walkBackfill runs the backfill walk for a request, noting its cost.
func (req *request) walkBackfill(walk dag.BackfillRequest) (WalkResult, error) {
	end := req.stage("walk")
	result, err := WalkBackfill(req.ctx, req.h.store, walk)
	end(err)
	req.walkVisits, req.walkExhausted = result.Visits, result.Exhausted
	return result, err
}

// walkMissingEvents runs the get_missing_events walk for a request, noting
// its cost.
func (req *request) walkMissingEvents(walk dag.MissingEventsRequest) (WalkResult, error) {
	end := req.stage("walk")
	result, err := WalkMissingEvents(req.ctx, req.h.store, walk)
	end(err)
	req.walkVisits, req.walkExhausted = result.Visits, result.Exhausted
	return result, err
}
