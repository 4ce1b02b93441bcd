package memstore

import (
	"context"
	"slices"
	"sync"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/dag"
)

// The store walks itself (fedhistory.BackfillWalker and
// fedhistory.MissingEventsWalker) with the dag package's own walks, so its
// answers are dag's by construction. What it saves is the EventStore
// round trip per step: the handler's generic walk calls Events once per
// fetch, and each call allocates its answer and goes through an interface;
// here a fetch reads the records directly and the walk's result maps back
// to them by index.

// WalkBackfill is dag.Backfill over the store's records, with the
// default visit budget. A backfill from one event along a plain chain, the
// shape of most history, takes a shortcut with the same answer (see
// backfillChain).
func (s *Store) WalkBackfill(ctx context.Context, req dag.BackfillRequest) (fedhistory.WalkResult, error) {
	roomID, from, limit := req.RoomID, req.From, req.Limit
	// A cancelled request goes the long way, so that it fails as dag's does.
	// The shortcut fetches exactly the events it takes, as dag would.
	if len(from) == 1 && limit > 0 && req.MaxVisits == 0 && ctx.Err() == nil {
		s.mu.RLock()
		seed, ok := s.events.get(from[0])
		s.mu.RUnlock()
		if ok {
			if events, ok := backfillChain(seed, roomID, limit); ok {
				return fedhistory.WalkResult{Events: events, Visits: len(events)}, nil
			}
		}
	}
	f := s.newWalkFetcher(roomID)
	defer f.release()
	res, err := dag.Backfill(ctx, req, f.fetch)
	if err != nil {
		return fedhistory.WalkResult{}, err
	}
	return fedhistory.WalkResult{Events: f.events(res.Refs), Visits: res.Visits, Exhausted: res.Exhausted}, nil
}

// WalkMissingEvents is dag.MissingEvents over the store's records, with
// the default visit budget.
func (s *Store) WalkMissingEvents(ctx context.Context, req dag.MissingEventsRequest) (fedhistory.WalkResult, error) {
	f := s.newWalkFetcher(req.RoomID)
	defer f.release()
	res, err := dag.MissingEvents(ctx, req, f.fetch)
	if err != nil {
		return fedhistory.WalkResult{}, err
	}
	return fedhistory.WalkResult{Events: f.events(res.Refs), Visits: res.Visits, Exhausted: res.Exhausted}, nil
}

// backfillChain is dag.Backfill with the default visit budget for the one
// shape where that walk is a plain walk down a list: from a single seed,
// every event taken has exactly one prev_event, which the store held in the
// same room when the event was added (record.onlyPrev), and which is neither
// rejected nor an outlier and has a depth in range and strictly below its
// child's. Along such a chain the best-first walk always has exactly one
// event to take, in decreasing depth; it takes min(limit, chain length)
// events and fetches no ID it does not take, so the budget (10 × limit + 1)
// never binds. The walk ends as dag's does at an event without
// prev_events. Anything else reports false and the caller runs the full
// walk: the shortcut only ever answers where the answer is known to be
// dag's. Records never change once added, so it needs no lock.
func backfillChain(seed *record, roomID string, limit int) ([]*fedhistory.Event, bool) {
	if !chainLink(seed, roomID) {
		return nil, false
	}
	// Collect on the stack and allocate the answer only once it is known
	// to be one: a declined walk then costs no garbage, and the answer is
	// filled by one copy rather than a pointer store per event (each one a
	// write barrier while the collector marks).
	var stack [128]*fedhistory.Event
	events := stack[:0]
	rec := seed
	for {
		events = append(events, rec.event())
		if len(events) == limit || len(rec.PrevEvents) == 0 {
			return slices.Clone(events), true
		}
		prev := rec.onlyPrev
		if prev == nil || len(rec.PrevEvents) != 1 {
			return nil, false
		}
		if !chainLink(prev, roomID) || prev.Depth >= rec.Depth {
			return nil, false
		}
		rec = prev
	}
}

// chainLink reports whether rec may be taken by backfillChain.
func chainLink(rec *record, roomID string) bool {
	return rec.RoomID == roomID && !rec.Rejected && !rec.Outlier &&
		rec.Depth >= dag.MinCanonicalInt && rec.Depth <= dag.MaxCanonicalInt // dag enters no other
}

// walkFetcher is a dag.FetchFunc over the store's records. Each node's Ref
// is the record's index in fetched.
type walkFetcher struct {
	store   *Store
	roomID  string
	fetched []*record
	// nodes is reused by every call, as dag.FetchFunc allows: the walks
	// read an answer only until they fetch again.
	nodes []dag.Node
	// recent are the only prevs (record.onlyPrev) of the records the last
	// call returned, at most maxRecent of them. The walks ask next for
	// prev_events of what they
	// were just given, so most IDs are found here by a comparison or two
	// instead of an index lookup. The ID strings the walks pass are the
	// very strings Add shared with the prev records (see Store.Add), so a
	// hit compares equal without reading the bytes.
	recent []*record
}

// maxRecent bounds the linear search of walkFetcher.recent.
const maxRecent = 8

var walkFetchers = sync.Pool{New: func() any { return new(walkFetcher) }}

// maxPooledWalk bounds the buffers kept for reuse, so that one huge walk
// does not pin its memory.
const maxPooledWalk = 4096

func (s *Store) newWalkFetcher(roomID string) *walkFetcher {
	f := walkFetchers.Get().(*walkFetcher)
	f.store, f.roomID = s, roomID
	return f
}

func (f *walkFetcher) fetch(_ context.Context, ids []string) ([]dag.Node, error) {
	nodes := f.nodes[:0]
	first := len(f.fetched)
	f.store.mu.RLock()
	for _, id := range ids {
		rec := f.recentRecord(id)
		if rec == nil {
			var ok bool
			if rec, ok = f.store.events.get(id); !ok {
				continue
			}
		}
		if rec.RoomID != f.roomID {
			continue
		}
		nodes = append(nodes, dag.Node{
			ID: rec.ID, RoomID: rec.RoomID, Depth: rec.Depth, PrevEvents: rec.PrevEvents,
			Rejected: rec.Rejected, Outlier: rec.Outlier, Ref: len(f.fetched),
		})
		f.fetched = append(f.fetched, rec)
	}
	f.store.mu.RUnlock()
	f.nodes = nodes
	f.recent = f.recent[:0]
	for _, rec := range f.fetched[first:] {
		if len(f.recent) == maxRecent {
			break
		}
		if rec.onlyPrev != nil {
			f.recent = append(f.recent, rec.onlyPrev)
		}
	}
	return nodes, nil
}

// recentRecord returns the record among f.recent with ID id, or nil.
func (f *walkFetcher) recentRecord(id string) *record {
	for _, rec := range f.recent {
		if rec.ID == id {
			return rec
		}
	}
	return nil
}

// events returns the records of refs, in order, as the events handed out.
func (f *walkFetcher) events(refs []int) []*fedhistory.Event {
	out := make([]*fedhistory.Event, len(refs))
	for i, ref := range refs {
		out[i] = f.fetched[ref].event()
	}
	return out
}

// release recycles f, dropping its references to records.
func (f *walkFetcher) release() {
	if cap(f.fetched) > maxPooledWalk || cap(f.nodes) > maxPooledWalk {
		return
	}
	clear(f.fetched)
	clear(f.nodes)
	clear(f.recent)
	f.store, f.roomID, f.fetched, f.nodes, f.recent = nil, "", f.fetched[:0], f.nodes[:0], f.recent[:0]
	walkFetchers.Put(f)
}

var (
	_ fedhistory.BackfillWalker      = (*Store)(nil)
	_ fedhistory.MissingEventsWalker = (*Store)(nil)
)
