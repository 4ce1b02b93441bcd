package faultstore

import (
	"context"
	"fmt"
	"slices"

	"github.com/fedhistory/fedhistory"
)

// The optional read capabilities. The handler finds them by type assertion,
// so the wrapper must implement exactly those the wrapped store does: one
// type per combination, each a *Store with the methods of its capabilities
// (withState, withLookup, withTimestamps) embedded.

type withState struct{ s *Store }

// StateBefore implements fedhistory.StateStore, with the faults of Store.
func (w withState) StateBefore(ctx context.Context, roomID, eventID string) ([]string, error) {
	if err := w.s.begin(ctx, "StateBefore"); err != nil {
		return nil, err
	}
	ids, err := w.s.inner.(fedhistory.StateStore).StateBefore(ctx, roomID, eventID)
	if err != nil {
		return nil, err
	}
	return w.s.garbleIDs(roomID, ids), nil
}

// AuthChain implements fedhistory.StateStore, with the faults of Store.
func (w withState) AuthChain(ctx context.Context, roomID string, eventIDs []string) ([]string, error) {
	if err := w.s.begin(ctx, "AuthChain"); err != nil {
		return nil, err
	}
	ids, err := w.s.inner.(fedhistory.StateStore).AuthChain(ctx, roomID, eventIDs)
	if err != nil {
		return nil, err
	}
	return w.s.garbleIDs(roomID, ids), nil
}

type withLookup struct{ s *Store }

// EventByID implements fedhistory.EventLookupStore, with the faults of
// Store.
func (w withLookup) EventByID(ctx context.Context, eventID string) (*fedhistory.Event, error) {
	if err := w.s.begin(ctx, "EventByID"); err != nil {
		return nil, err
	}
	ev, err := w.s.inner.(fedhistory.EventLookupStore).EventByID(ctx, eventID)
	if err != nil {
		return nil, err
	}
	return w.s.garbleEvent(ev), nil
}

type withTimestamps struct{ s *Store }

// EventAtTimestamp implements fedhistory.TimestampStore, with the faults of
// Store.
func (w withTimestamps) EventAtTimestamp(ctx context.Context, roomID string, ts int64, dir fedhistory.Direction) (*fedhistory.Event, error) {
	if err := w.s.begin(ctx, "EventAtTimestamp"); err != nil {
		return nil, err
	}
	ev, err := w.s.inner.(fedhistory.TimestampStore).EventAtTimestamp(ctx, roomID, ts, dir)
	if err != nil {
		return nil, err
	}
	return w.s.garbleEvent(ev), nil
}

type (
	stateStore struct {
		*Store
		withState
	}
	lookupStore struct {
		*Store
		withLookup
	}
	timestampStore struct {
		*Store
		withTimestamps
	}
	stateLookupStore struct {
		*Store
		withState
		withLookup
	}
	stateTimeStore struct {
		*Store
		withState
		withTimestamps
	}
	lookupTimeStore struct {
		*Store
		withLookup
		withTimestamps
	}
	allCapabilityStore struct {
		*Store
		withState
		withLookup
		withTimestamps
	}
)

var (
	_ fedhistory.StateStore       = stateStore{}
	_ fedhistory.EventLookupStore = lookupStore{}
	_ fedhistory.TimestampStore   = timestampStore{}
	_ fedhistory.StateStore       = allCapabilityStore{}
	_ fedhistory.EventLookupStore = allCapabilityStore{}
	_ fedhistory.TimestampStore   = allCapabilityStore{}
)

// withCapabilities returns s as the type that implements the capabilities
// of the wrapped store.
func (s *Store) withCapabilities() Faulty {
	_, state := s.inner.(fedhistory.StateStore)
	_, lookup := s.inner.(fedhistory.EventLookupStore)
	_, timestamps := s.inner.(fedhistory.TimestampStore)
	st, lk, ts := withState{s}, withLookup{s}, withTimestamps{s}
	switch {
	case state && lookup && timestamps:
		return allCapabilityStore{s, st, lk, ts}
	case state && lookup:
		return stateLookupStore{s, st, lk}
	case state && timestamps:
		return stateTimeStore{s, st, ts}
	case lookup && timestamps:
		return lookupTimeStore{s, lk, ts}
	case state:
		return stateStore{s, st}
	case lookup:
		return lookupStore{s, lk}
	case timestamps:
		return timestampStore{s, ts}
	default:
		return s
	}
}

// garbleIDs returns a copy of ids, an answer about roomID, with the
// configured garbage.
func (s *Store) garbleIDs(roomID string, ids []string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.faults.Garbage
	genuine := slices.Clone(ids)
	out := slices.Clone(ids)
	if g&MissingFields != 0 {
		for i := range out {
			if s.pick() {
				out[i] = ""
			}
		}
	}
	n := len(out)
	for i := range n {
		if g&DuplicateIDs != 0 && s.pick() {
			out = append(out, out[i])
		}
		if g&ForeignRoomEvents != 0 && s.pick() {
			out = append(out, s.foreignID(roomID))
		}
	}
	s.remember(roomID, genuine...)
	return out
}

// foreignID returns an ID of a room other than roomID: one answered for
// another room earlier when there is one, else one of ForeignRoomID.
// Called with s.mu held.
func (s *Store) foreignID(roomID string) string {
	var others []string
	for room, ids := range s.answered {
		if room != roomID {
			others = append(others, ids...)
		}
	}
	if len(others) > 0 {
		// Sorted, so that the draw does not depend on map order.
		slices.Sort(others)
		return others[s.rng.IntN(len(others))]
	}
	s.foreignSerial++
	return fmt.Sprintf("$faultstore%d:faultstore.invalid", s.foreignSerial)
}

// garbleEvent returns ev, or a copy of it with the configured garbage: an
// event of another room, wrong flags, a missing field or an absurd depth.
// The wrapped store's event is never modified.
func (s *Store) garbleEvent(ev *fedhistory.Event) *fedhistory.Event {
	if ev == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.remember(ev.RoomID, ev.ID)
	g := s.faults.Garbage
	out := ev
	changed := func() *fedhistory.Event {
		if out == ev {
			out = clone(ev)
		}
		return out
	}
	if g&ForeignRoomEvents != 0 && s.pick() {
		out = foreign(ev, ev.ID)
	}
	if g&WrongFlags != 0 && s.pick() {
		s.wrongFlag(changed())
	}
	if g&DepthOutOfRange != 0 && s.pick() {
		changed().Depth = OutOfRangeDepth
		if s.rng.IntN(2) == 0 {
			out.Depth = -OutOfRangeDepth
		}
	}
	if g&MissingFields != 0 && s.pick() {
		s.dropField(changed())
	}
	return out
}
