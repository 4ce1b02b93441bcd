package memstore

import (
	"context"
	"fmt"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/pdu"
)

// setState works out the state before and after rec, following "State" on
// fedhistory.EventStore: known for a create event, for an event given
// opts.StateBefore, and for an event all of whose prev_events the store
// holds in the room, as non-outliers with a known state; unknown otherwise.
// Called by Add holding addMu, before rec is published.
func (s *Store) setState(version string, rec *record, opts fedhistory.AddOptions) error {
	var before statemap
	known := false
	switch {
	case opts.StateBefore != nil && opts.Outlier:
		return fmt.Errorf("%w: given for the outlier %s, whose state is unknown by definition",
			fedhistory.ErrInvalidStateBefore, rec.ID)
	case opts.StateBefore != nil:
		given, err := s.givenState(rec.RoomID, opts.StateBefore)
		if err != nil {
			return fmt.Errorf("memstore: state before %s: %w", rec.ID, err)
		}
		before, known = given, true
	case rec.Outlier:
		// Its place in the DAG, and so its state, is unknown.
	case pdu.IsCreate(&rec.Event):
		known = true // the empty state
	default:
		derived, ok, err := s.derivedState(version, rec)
		if err != nil {
			return fmt.Errorf("memstore: state before %s: %w", rec.ID, err)
		}
		before, known = derived, ok
	}
	rec.stateKnown = known
	if !known {
		return nil
	}
	rec.before, rec.after = before, before
	if rec.state != nil && !rec.Rejected {
		rec.after = before.Set(rec.state.event.Key, rec)
	}
	return nil
}

// givenState builds the state AddOptions.StateBefore names, or fails with
// fedhistory.ErrInvalidStateBefore. Sorting the events once and building
// the map from the sorted list costs O(k log k) for k events, with no
// intermediate maps: a room's whole state at a join can be large.
func (s *Store) givenState(roomID string, ids []string) (statemap, error) {
	recs := make([]*record, 0, len(ids))
	for _, id := range ids {
		rec, ok := s.events.get(id)
		switch {
		case !ok:
			return statemap{}, fmt.Errorf("%w: the store holds no event %q", fedhistory.ErrInvalidStateBefore, id)
		case rec.RoomID != roomID:
			return statemap{}, fmt.Errorf("%w: %s is an event of another room, %s", fedhistory.ErrInvalidStateBefore, id, rec.RoomID)
		case rec.state == nil:
			return statemap{}, fmt.Errorf("%w: %s is not a state event", fedhistory.ErrInvalidStateBefore, id)
		case rec.Rejected:
			return statemap{}, fmt.Errorf("%w: %s is rejected", fedhistory.ErrInvalidStateBefore, id)
		}
		recs = append(recs, rec)
	}
	slices.SortFunc(recs, func(a, b *record) int { return a.state.event.Key.Compare(b.state.event.Key) })
	keys := make([]stateKey, len(recs))
	for i, rec := range recs {
		keys[i] = rec.state.event.Key
		if i > 0 && keys[i-1] == keys[i] {
			return statemap{}, fmt.Errorf("%w: %s and %s are both the state %q %q",
				fedhistory.ErrInvalidStateBefore, recs[i-1].ID, rec.ID, keys[i].Type, keys[i].StateKey)
		}
	}
	return pmapFromSorted(keys, recs), nil
}

// derivedState is the state before rec from its prev_events: the state
// after the single one, or the state resolution of the states after them.
// It reports false when one of them is not held in the room, is an outlier
// or has an unknown state, and when there are none: only a create event
// may lack prev_events (spec: PDU "prev_events"), and without any there is
// nothing to derive a state from, so fail closed.
func (s *Store) derivedState(version string, rec *record) (statemap, bool, error) {
	if len(rec.PrevEvents) == 0 {
		return statemap{}, false, nil
	}
	var states []statemap
	for _, id := range rec.PrevEvents {
		prev, ok := s.events.get(id)
		if !ok || prev.RoomID != rec.RoomID || prev.Outlier || !prev.stateKnown {
			return statemap{}, false, nil
		}
		if !slices.ContainsFunc(states, prev.after.Same) {
			states = append(states, prev.after)
		}
	}
	if len(states) == 1 {
		return states[0], true, nil
	}
	// Add is the only writer and holds addMu: it reads events without mu.
	lookup := func(id string) *record { rec, _ := s.events.get(id); return rec }
	resolved, err := resolveStates(gomatrixserverlib.RoomVersion(version), states, lookup)
	if err != nil {
		return statemap{}, false, err
	}
	return resolved, true, nil
}

// StateBefore returns the IDs of the events of roomID's state just before
// eventID, in state key order: the spec's "state prior to considering any
// state changes induced by the requested event". It fails with an error
// wrapping fedhistory.ErrEventNotFound when the store does not hold the
// event in roomID, or holds it rejected or as an outlier, and with
// fedhistory.ErrStateUnknown when its state is unknown. It costs O(state):
// the state is a map the store already holds.
func (s *Store) StateBefore(_ context.Context, roomID, eventID string) ([]string, error) {
	s.mu.RLock()
	rec, ok := s.events.get(eventID)
	s.mu.RUnlock()
	switch {
	case !ok || rec.RoomID != roomID:
		return nil, fmt.Errorf("memstore: no event %q in room %q: %w", eventID, roomID, fedhistory.ErrEventNotFound)
	case rec.Rejected:
		return nil, fmt.Errorf("memstore: event %s is rejected: %w", eventID, fedhistory.ErrEventNotFound)
	case rec.Outlier:
		return nil, fmt.Errorf("memstore: event %s is an outlier: %w", eventID, fedhistory.ErrEventNotFound)
	case !rec.stateKnown:
		return nil, fmt.Errorf("memstore: state before %s: %w", eventID, fedhistory.ErrStateUnknown)
	}
	ids := make([]string, 0, rec.before.Len())
	rec.before.All(func(_ stateKey, state *record) bool {
		ids = append(ids, state.ID)
		return true
	})
	return ids, nil
}

// ctxCheckEvery is how many events AuthChain visits between two looks at
// its context: often enough to stop a huge walk soon, rarely enough to cost
// nothing.
const ctxCheckEvery = 4096

// AuthChain returns the IDs of the events reachable from eventIDs through
// one or more auth links (record.auth: links to events held in roomID when
// the linking event was added; in room version 12 the create event
// included), without duplicates: an iterative walk with a visited set, so
// that a chain of hundreds of thousands of events needs neither recursion
// nor more than one visit per event. Rejected events are neither returned
// nor walked through, an eventID among them included; outliers are both.
// IDs that the store does not hold in roomID contribute nothing.
func (s *Store) AuthChain(ctx context.Context, roomID string, eventIDs []string) ([]string, error) {
	// Marks: expanded (its links followed or queued), reached (through a
	// link, so part of the answer).
	const (
		expanded = 1 << iota
		reached
	)
	// A state's chain is about twice the state (each member's previous
	// membership): size the set for it rather than grow it step by step.
	marks := make(map[*record]uint8, 2*len(eventIDs))
	stack := make([]*record, 0, len(eventIDs))
	s.mu.RLock()
	for _, id := range eventIDs {
		rec, ok := s.events.get(id)
		if !ok || rec.RoomID != roomID || rec.Rejected || marks[rec]&expanded != 0 {
			continue
		}
		marks[rec] |= expanded
		stack = append(stack, rec)
	}
	s.mu.RUnlock()

	// Records and their links never change: the walk needs no lock.
	var chain []string
	for steps := 0; len(stack) > 0; steps++ {
		if steps%ctxCheckEvery == ctxCheckEvery-1 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		rec := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if rec.auth == nil {
			continue
		}
		for _, auth := range *rec.auth {
			if auth.Rejected {
				continue
			}
			mark := marks[auth]
			if mark&reached == 0 {
				chain = append(chain, auth.ID)
			}
			if mark&expanded == 0 {
				stack = append(stack, auth)
			}
			marks[auth] = mark | reached | expanded
		}
	}
	return chain, nil
}
