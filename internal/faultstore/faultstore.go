// Package faultstore wraps a fedhistory.EventStore to inject faults: errors,
// latency, panics, garbage in Events answers (events of another room,
// duplicates, prev_events cycles, missing fields, absurd depths, flags a
// correct store would not set), and Visibility answers that cannot be
// matched to the IDs asked. The handler's hardening tests use it to show
// that a misbehaving database can make a request fail, but never make it
// serve what it must not, loop, or crash the server; and, through Calls,
// that a request rejected early never touched the store.
//
// When the wrapped store implements fedhistory.StateStore,
// EventLookupStore or TimestampStore, the wrapper does too, with the same
// faults: errors, latency and panics in every call, and garbage in the
// answers (IDs of another room or duplicated in StateBefore and AuthChain;
// EventByID and EventAtTimestamp answers of another room, with wrong
// flags, missing fields or absurd depths). It never implements a
// capability the wrapped store lacks.
//
// Faults are drawn from a random source seeded with Faults.Seed: the same
// sequence of calls meets the same faults. Concurrent calls draw in the order
// they reach the store's lock, so only a sequential caller gets an exactly
// reproducible run.
//
// The wrapper never implements fedhistory.BackfillWalker or
// fedhistory.MissingEventsWalker, even over a store that does: the handler
// then walks with the dag package over the faulty Events answers, which is
// what the faults are for.
package faultstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fedhistory/fedhistory"
)

// ErrInjected is the error of a call that Faults.ErrorRate made fail.
var ErrInjected = errors.New("faultstore: injected fault")

// ErrInjectedPanic is wrapped by the value of a panic that Faults.PanicRate
// caused; the panic value is an error.
var ErrInjectedPanic = errors.New("faultstore: injected panic")

// ForeignRoomID is the room of the events that ForeignRoomEvents adds: a
// response that contains it served an event of another room.
const ForeignRoomID = "!foreign:faultstore.invalid"

// OutOfRangeDepth is the magnitude of the depths DepthOutOfRange sets (as
// +OutOfRangeDepth or -OutOfRangeDepth): far outside the integers canonical
// JSON allows (±(2^53-1)).
const OutOfRangeDepth int64 = 1 << 60

// Garbage selects the kinds of garbage added to Events and Visibility
// answers.
type Garbage uint

const (
	// ForeignRoomEvents adds, for each chosen event, a copy that claims to be
	// in ForeignRoomID (metadata and JSON), and for the first requested ID
	// the store did not answer, an event of ForeignRoomID with that ID.
	// EventByID and EventAtTimestamp answer such a copy instead of the
	// event. StateBefore and AuthChain answers gain, for each chosen ID, an
	// ID of another room: one the wrapped store answered for another room
	// earlier when there is one (so a store lookup finds it), else an ID
	// of ForeignRoomID.
	ForeignRoomEvents Garbage = 1 << iota
	// DuplicateIDs answers each chosen event twice, and each chosen ID of a
	// StateBefore or AuthChain answer.
	DuplicateIDs
	// PrevEventCycles adds to each chosen event's prev_events its own ID and
	// an event answered by an earlier Events call of the same room (a
	// descendant, for a walk going back in time), so that following
	// prev_events loops.
	PrevEventCycles
	// MissingFields zeroes one field of each chosen event's metadata (ID,
	// RoomID, Type, StateKey, Sender, PrevEvents or Depth), or truncates or
	// drops its JSON; in StateBefore and AuthChain answers, it empties each
	// chosen ID.
	MissingFields
	// DepthOutOfRange sets each chosen event's depth to ±OutOfRangeDepth.
	DepthOutOfRange
	// MisalignedVisibility shifts each chosen Visibility answer by one
	// entry: either the first entry is dropped, or an extra entry, Known
	// and world_readable, is put in front. Either way the answer has the
	// wrong length, and every entry after the change answers the wrong ID
	// (with a state that, read at face value, may well allow it). It picks
	// whole calls, not events.
	MisalignedVisibility
	// WrongFlags marks each chosen event of an Events, EventByID or
	// EventAtTimestamp answer rejected, an outlier or redacted (one of the
	// three, drawn), though the wrapped store says otherwise. Such flags
	// only ever make an event less servable: a handler that follows them
	// serves less, never more, and must not take a rejected event or an
	// outlier for a timestamp lookup's answer.
	WrongFlags

	// AllGarbage is every kind of garbage.
	AllGarbage = ForeignRoomEvents | DuplicateIDs | PrevEventCycles | MissingFields | DepthOutOfRange | MisalignedVisibility | WrongFlags
)

// garbageNames are the names of the Garbage bits, lowest first.
var garbageNames = []string{"ForeignRoomEvents", "DuplicateIDs", "PrevEventCycles", "MissingFields", "DepthOutOfRange", "MisalignedVisibility", "WrongFlags"}

// String names the kinds of garbage in g, joined by "|".
func (g Garbage) String() string {
	var names []string
	for i, name := range garbageNames {
		if g&(1<<i) != 0 {
			names = append(names, name)
		}
	}
	if unknown := g &^ AllGarbage; unknown != 0 {
		names = append(names, fmt.Sprintf("Garbage(%#x)", uint(unknown)))
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, "|")
}

// Faults configure Wrap. The zero value injects nothing.
type Faults struct {
	// ErrorRate is the fraction of calls that fail with ErrInjected
	// (without reaching the wrapped store).
	ErrorRate float64
	// Latency is added to each call before it reaches the wrapped store. A
	// call whose context ends first returns the context's error.
	Latency time.Duration
	// PanicRate is the fraction of calls that panic with an error wrapping
	// ErrInjectedPanic. Panics are drawn before errors.
	PanicRate float64
	// Garbage is the set of garbage kinds added to the answers.
	Garbage Garbage
	// GarbageRate is the fraction of answered events (or IDs) each kind of
	// Garbage picks (of Visibility calls, for MisalignedVisibility). 0, the
	// default, picks every one.
	GarbageRate float64
	// Seed seeds the random source every fault is drawn from.
	Seed int64
}

// Faulty is what Wrap returns: a *Store, which is a fedhistory.ErasureStore,
// with the capabilities of the wrapped store.
type Faulty interface {
	fedhistory.ErasureStore
	// Calls: see Store.Calls.
	Calls() map[string]int
}

// Store is a fedhistory.EventStore that injects faults into the calls to the
// store it wraps. It is safe for concurrent use.
//
// Store implements fedhistory.ErasureStore. When the wrapped store is not
// one, ErasedUsers reports nobody erased, which is what the handler assumes
// of a store that cannot tell; the call is still counted and may still fail.
type Store struct {
	inner  fedhistory.EventStore
	faults Faults

	mu    sync.Mutex
	rng   *rand.Rand
	calls map[string]int
	// answered keeps the last IDs answered per room, for PrevEventCycles
	// and for foreign IDs.
	answered map[string][]string
	// foreignSerial numbers the IDs of ForeignRoomID that StateBefore and
	// AuthChain garbage makes up.
	foreignSerial int
}

// maxRemembered bounds Store.answered per room.
const maxRemembered = 64

var (
	_ fedhistory.EventStore   = (*Store)(nil)
	_ fedhistory.ErasureStore = (*Store)(nil)
)

// Wrap returns store with faults injected: a *Store, which also implements
// each of fedhistory.StateStore, EventLookupStore and TimestampStore that
// store implements, and no other capability (never BackfillWalker or
// MissingEventsWalker).
func Wrap(store fedhistory.EventStore, faults Faults) Faulty {
	s := &Store{
		inner:    store,
		faults:   faults,
		rng:      rand.New(rand.NewPCG(uint64(faults.Seed), 0x6661756c74)),
		calls:    map[string]int{},
		answered: map[string][]string{},
	}
	return s.withCapabilities()
}

// Calls returns the number of calls of each method so far ("RoomVersion",
// "Events", "CurrentState", "Visibility", "ErasedUsers", "StateBefore",
// "AuthChain", "EventByID", "EventAtTimestamp"), failed and panicking calls
// included. Methods never called are absent.
func (s *Store) Calls() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	calls := make(map[string]int, len(s.calls))
	for method, n := range s.calls {
		calls[method] = n
	}
	return calls
}

// begin counts a call of method, waits out the latency and injects a panic
// or an error as drawn.
func (s *Store) begin(ctx context.Context, method string) error {
	s.mu.Lock()
	s.calls[method]++
	// Both draws happen at entry, under the lock, so that the sequence of
	// faults follows the sequence of calls, not of latencies.
	panicking := s.faults.PanicRate > 0 && s.rng.Float64() < s.faults.PanicRate
	failing := s.faults.ErrorRate > 0 && s.rng.Float64() < s.faults.ErrorRate
	s.mu.Unlock()

	if s.faults.Latency > 0 {
		timer := time.NewTimer(s.faults.Latency)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("faultstore: %s: %w", method, ctx.Err())
		case <-timer.C:
		}
	}
	if panicking {
		panic(fmt.Errorf("%s: %w", method, ErrInjectedPanic))
	}
	if failing {
		return fmt.Errorf("%s: %w", method, ErrInjected)
	}
	return nil
}

// RoomVersion implements fedhistory.EventStore.
func (s *Store) RoomVersion(ctx context.Context, roomID string) (string, error) {
	if err := s.begin(ctx, "RoomVersion"); err != nil {
		return "", err
	}
	return s.inner.RoomVersion(ctx, roomID)
}

// Events implements fedhistory.EventStore, adding the configured garbage to
// the wrapped store's answer. The events of the wrapped store are never
// modified: garbage goes into copies.
func (s *Store) Events(ctx context.Context, roomID string, ids []string) ([]*fedhistory.Event, error) {
	if err := s.begin(ctx, "Events"); err != nil {
		return nil, err
	}
	events, err := s.inner.Events(ctx, roomID, ids)
	if err != nil || s.faults.Garbage == 0 {
		return events, err
	}
	return s.garble(roomID, ids, events), nil
}

// CurrentState implements fedhistory.EventStore.
func (s *Store) CurrentState(ctx context.Context, roomID, server string) (*fedhistory.CurrentState, error) {
	if err := s.begin(ctx, "CurrentState"); err != nil {
		return nil, err
	}
	return s.inner.CurrentState(ctx, roomID, server)
}

// Visibility implements fedhistory.EventStore, misaligning the wrapped
// store's answer when MisalignedVisibility picks the call. The wrapped
// store's slice is never modified: garbage goes into a copy.
func (s *Store) Visibility(ctx context.Context, roomID, server string, eventIDs []string) ([]fedhistory.EventVisibility, error) {
	if err := s.begin(ctx, "Visibility"); err != nil {
		return nil, err
	}
	visibility, err := s.inner.Visibility(ctx, roomID, server, eventIDs)
	if err != nil || s.faults.Garbage&MisalignedVisibility == 0 {
		return visibility, err
	}
	return s.misalign(visibility), nil
}

// misalign returns visibility shifted by one entry, or unchanged when the
// call is not picked.
func (s *Store) misalign(visibility []fedhistory.EventVisibility) []fedhistory.EventVisibility {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.pick() {
		return visibility
	}
	if len(visibility) > 0 && s.rng.IntN(2) == 0 {
		return slices.Clone(visibility[1:])
	}
	readable := fedhistory.VisibilityState{HistoryVisibility: "world_readable", Memberships: map[string]string{}}
	extra := fedhistory.EventVisibility{Known: true, Before: readable, After: readable}
	return append([]fedhistory.EventVisibility{extra}, visibility...)
}

// ErasedUsers implements fedhistory.ErasureStore; see Store.
func (s *Store) ErasedUsers(ctx context.Context, userIDs []string) (map[string]bool, error) {
	if err := s.begin(ctx, "ErasedUsers"); err != nil {
		return nil, err
	}
	erasure, ok := s.inner.(fedhistory.ErasureStore)
	if !ok {
		return map[string]bool{}, nil
	}
	return erasure.ErasedUsers(ctx, userIDs)
}

// garble returns copies of events with the configured garbage.
func (s *Store) garble(roomID string, requested []string, events []*fedhistory.Event) []*fedhistory.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	g := s.faults.Garbage

	out := make([]*fedhistory.Event, 0, 2*len(events)+1)
	answered := make(map[string]bool, len(events))
	var genuine []string
	for _, ev := range events {
		if ev == nil {
			out = append(out, nil)
			continue
		}
		answered[ev.ID] = true
		genuine = append(genuine, ev.ID)
		out = append(out, clone(ev))
	}
	earlier := s.answered[roomID]

	for _, ev := range out {
		if ev == nil {
			continue
		}
		if g&PrevEventCycles != 0 && s.pick() {
			ev.PrevEvents = append(ev.PrevEvents, ev.ID)
			if len(earlier) > 0 {
				ev.PrevEvents = append(ev.PrevEvents, earlier[s.rng.IntN(len(earlier))])
			}
		}
		if g&DepthOutOfRange != 0 && s.pick() {
			ev.Depth = OutOfRangeDepth
			if s.rng.IntN(2) == 0 {
				ev.Depth = -OutOfRangeDepth
			}
		}
		if g&MissingFields != 0 && s.pick() {
			s.dropField(ev)
		}
		if g&WrongFlags != 0 && s.pick() {
			s.wrongFlag(ev)
		}
	}

	n := len(out)
	for _, ev := range out[:n] {
		if ev == nil {
			continue
		}
		if g&DuplicateIDs != 0 && s.pick() {
			out = append(out, clone(ev))
		}
		if g&ForeignRoomEvents != 0 && s.pick() {
			out = append(out, foreign(ev, ev.ID))
		}
	}
	if g&ForeignRoomEvents != 0 {
		for _, id := range requested {
			if !answered[id] {
				template := &fedhistory.Event{Type: "m.room.message", Sender: "@mallory:faultstore.invalid", Depth: 1}
				if len(events) > 0 && events[0] != nil {
					template = events[0]
				}
				out = append(out, foreign(template, id))
				break
			}
		}
	}

	s.remember(roomID, genuine...)
	return out
}

// remember notes ids as answered for roomID. Called with s.mu held.
func (s *Store) remember(roomID string, ids ...string) {
	remembered := slices.Concat(s.answered[roomID], ids)
	if len(remembered) > maxRemembered {
		remembered = remembered[len(remembered)-maxRemembered:]
	}
	s.answered[roomID] = remembered
}

// wrongFlag marks ev rejected, an outlier or redacted, one it is not if it
// can. Called with s.mu held.
func (s *Store) wrongFlag(ev *fedhistory.Event) {
	flags := []*bool{&ev.Rejected, &ev.Outlier, &ev.Redacted}
	start := s.rng.IntN(len(flags))
	for i := range flags {
		if flag := flags[(start+i)%len(flags)]; !*flag {
			*flag = true
			return
		}
	}
}

// pick draws whether a garbage kind alters one event. Called with s.mu held.
func (s *Store) pick() bool {
	return s.faults.GarbageRate <= 0 || s.rng.Float64() < s.faults.GarbageRate
}

// dropField zeroes one field of ev, or truncates or drops its JSON. Called
// with s.mu held.
func (s *Store) dropField(ev *fedhistory.Event) {
	switch s.rng.IntN(9) {
	case 0:
		ev.ID = ""
	case 1:
		ev.RoomID = ""
	case 2:
		ev.Type = ""
	case 3:
		ev.StateKey = nil
	case 4:
		ev.Sender = ""
	case 5:
		ev.PrevEvents = nil
	case 6:
		ev.Depth = 0
	case 7:
		ev.JSON = ev.JSON[: len(ev.JSON)/2 : len(ev.JSON)/2]
	case 8:
		ev.JSON = nil
	}
}

// clone copies ev deeply enough that changing the copy's fields, PrevEvents
// included, leaves ev alone. JSON is shared: garbage only reslices it.
func clone(ev *fedhistory.Event) *fedhistory.Event {
	c := *ev
	c.PrevEvents = slices.Clone(ev.PrevEvents)
	if ev.StateKey != nil {
		key := *ev.StateKey
		c.StateKey = &key
	}
	return &c
}

// foreign returns a copy of template with ID id in ForeignRoomID, its JSON
// saying so too.
func foreign(template *fedhistory.Event, id string) *fedhistory.Event {
	ev := clone(template)
	ev.ID = id
	ev.RoomID = ForeignRoomID
	var fields map[string]json.RawMessage
	if json.Unmarshal(template.JSON, &fields) != nil || fields == nil {
		fields = map[string]json.RawMessage{}
	}
	fields["room_id"], _ = json.Marshal(ForeignRoomID)
	fields["event_id"], _ = json.Marshal(id)
	ev.JSON, _ = json.Marshal(fields)
	return ev
}
