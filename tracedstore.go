package fedhistory

import (
	"context"

	"github.com/fedhistory/fedhistory/dag"
)

// tracedStore reports every call to the store it wraps to Trace.StoreCall.
// The handler uses it only when that callback is set, so an untraced
// handler calls its store directly. It offers every capability; the
// handler routes only to those the wrapped store has (New checks cfg.Store),
// and the few it probes for (ErasureStore, the walkers) fall back to what
// the handler would do without them.
type tracedStore struct {
	inner EventStore
	call  func(ctx context.Context, method string) (context.Context, func(err error))
}

// traced runs f as method, reporting it.
func traced[T any](s *tracedStore, ctx context.Context, method string, f func(context.Context) (T, error)) (T, error) {
	ctx, end := s.call(ctx, method)
	result, err := f(ctx)
	end(err)
	return result, err
}

func (s *tracedStore) RoomVersion(ctx context.Context, roomID string) (string, error) {
	return traced(s, ctx, "RoomVersion", func(ctx context.Context) (string, error) {
		return s.inner.RoomVersion(ctx, roomID)
	})
}

func (s *tracedStore) Events(ctx context.Context, roomID string, ids []string) ([]*Event, error) {
	return traced(s, ctx, "Events", func(ctx context.Context) ([]*Event, error) {
		return s.inner.Events(ctx, roomID, ids)
	})
}

func (s *tracedStore) CurrentState(ctx context.Context, roomID, server string) (*CurrentState, error) {
	return traced(s, ctx, "CurrentState", func(ctx context.Context) (*CurrentState, error) {
		return s.inner.CurrentState(ctx, roomID, server)
	})
}

func (s *tracedStore) Visibility(ctx context.Context, roomID, server string, ids []string) ([]EventVisibility, error) {
	return traced(s, ctx, "Visibility", func(ctx context.Context) ([]EventVisibility, error) {
		return s.inner.Visibility(ctx, roomID, server, ids)
	})
}

// ErasedUsers answers "nobody" for a store that cannot tell, as the filter
// does for such a store.
func (s *tracedStore) ErasedUsers(ctx context.Context, userIDs []string) (map[string]bool, error) {
	erasure, ok := s.inner.(ErasureStore)
	if !ok {
		return nil, nil
	}
	return traced(s, ctx, "ErasedUsers", func(ctx context.Context) (map[string]bool, error) {
		return erasure.ErasedUsers(ctx, userIDs)
	})
}

// eventsOnly hides every capability of the traced store but the core
// methods, so that WalkBackfill's fallback walks over traced Events calls.
type eventsOnly struct{ EventStore }

func (s *tracedStore) WalkBackfill(ctx context.Context, req dag.BackfillRequest) (WalkResult, error) {
	walker, ok := s.inner.(BackfillWalker)
	if !ok {
		return WalkBackfill(ctx, eventsOnly{s}, req)
	}
	return traced(s, ctx, "WalkBackfill", func(ctx context.Context) (WalkResult, error) {
		return walker.WalkBackfill(ctx, req)
	})
}

func (s *tracedStore) WalkMissingEvents(ctx context.Context, req dag.MissingEventsRequest) (WalkResult, error) {
	walker, ok := s.inner.(MissingEventsWalker)
	if !ok {
		return WalkMissingEvents(ctx, eventsOnly{s}, req)
	}
	return traced(s, ctx, "WalkMissingEvents", func(ctx context.Context) (WalkResult, error) {
		return walker.WalkMissingEvents(ctx, req)
	})
}

func (s *tracedStore) StateBefore(ctx context.Context, roomID, eventID string) ([]string, error) {
	return traced(s, ctx, "StateBefore", func(ctx context.Context) ([]string, error) {
		return s.inner.(StateStore).StateBefore(ctx, roomID, eventID)
	})
}

func (s *tracedStore) AuthChain(ctx context.Context, roomID string, eventIDs []string) ([]string, error) {
	return traced(s, ctx, "AuthChain", func(ctx context.Context) ([]string, error) {
		return s.inner.(StateStore).AuthChain(ctx, roomID, eventIDs)
	})
}

// stateOnly hides the traced store's StateIDs, so that StateIDs over a
// store without it falls back to traced StateBefore and AuthChain calls.
type stateOnly struct{ StateStore }

func (s *tracedStore) StateIDs(ctx context.Context, roomID, eventID string) (pduIDs, authChainIDs []string, err error) {
	both, ok := s.inner.(StateIDsStore)
	if !ok {
		return StateIDs(ctx, stateOnly{s}, roomID, eventID)
	}
	type answer struct{ pduIDs, authChainIDs []string }
	a, err := traced(s, ctx, "StateIDs", func(ctx context.Context) (answer, error) {
		pduIDs, authChainIDs, err := both.StateIDs(ctx, roomID, eventID)
		return answer{pduIDs, authChainIDs}, err
	})
	return a.pduIDs, a.authChainIDs, err
}

func (s *tracedStore) EventByID(ctx context.Context, eventID string) (*Event, error) {
	return traced(s, ctx, "EventByID", func(ctx context.Context) (*Event, error) {
		return s.inner.(EventLookupStore).EventByID(ctx, eventID)
	})
}

func (s *tracedStore) EventAtTimestamp(ctx context.Context, roomID string, ts int64, dir Direction) (*Event, error) {
	return traced(s, ctx, "EventAtTimestamp", func(ctx context.Context) (*Event, error) {
		return s.inner.(TimestampStore).EventAtTimestamp(ctx, roomID, ts, dir)
	})
}
