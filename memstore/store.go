// Package memstore is a complete in-memory fedhistory.EventStore for tests,
// the demo and small deployments. It implements every optional capability:
// fedhistory.ErasureStore, BackfillWalker, MissingEventsWalker, StateStore,
// EventLookupStore and TimestampStore.
//
// The store works out the state of the room before and after every event
// itself, from the events it is given, including state resolution where the
// DAG merges, and never invents it: after a gap the state is unknown unless
// the homeserver supplies it (fedhistory.AddOptions.StateBefore; see "State"
// on fedhistory.EventStore). It keeps states as persistent maps that share
// all unchanged structure, so a room of a million messages costs little
// more than the messages' JSON.
//
// It applies redactions as the spec does (see "Redactions" on
// fedhistory.EventStore): an event whose redaction applies is handed out
// with Redacted set by every method, whichever of the two arrived first.
//
// The store also walks the DAG itself (fedhistory.BackfillWalker and
// fedhistory.MissingEventsWalker), with the dag package's walks over its
// records, so a walk costs no EventStore round trip per step.
//
// Events must be added in topological order (see Store.Add). Reads never
// block each other; adds are serialised.
package memstore

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/pdu"
	"github.com/fedhistory/fedhistory/internal/stateres"
	"github.com/matrix-org/gomatrixserverlib"
)

// Store is an in-memory event store. The zero value is not usable; call New.
type Store struct {
	// addMu serialises Add. Add is the only writer: holding addMu, it may
	// read everything below without mu.
	addMu sync.Mutex
	// mu guards events, rooms and the extremities, generation and time
	// index of every room against concurrent reads: Add writes them holding
	// mu, readers read them holding mu.RLock. Records, once in events, are
	// never modified (but for record.redacted, which is atomic), so readers
	// take mu only to look them up and do the rest of their work unlocked.
	mu     sync.RWMutex
	events eventIndex
	rooms  map[string]*room

	// The rest is Add's alone (guarded by addMu).

	// dangling holds prev_events of state-bearing events (neither outlier
	// nor rejected) that were unknown when the child was added. If such an
	// event turns up later it already has a child, so it is no forward
	// extremity.
	dangling map[string]struct{}
	// pendingRedactions holds, by target ID, the redactions whose target
	// the store did not hold when they were added (see redact.go).
	pendingRedactions map[string][]pendingRedaction
	// interned deduplicates the strings that repeat across events (room
	// IDs, senders, event types), so that a million messages from a few
	// senders store each sender once.
	interned map[string]string
	// authSets deduplicates the auth links of non-state events, which
	// repeat too: a message's are the create event, the power levels and
	// its sender's membership.
	authSets map[authKey]*[]*record
	// jsonChunk is the unused rest of the block that the JSON of non-state
	// events is packed into (see packJSON).
	jsonChunk []byte

	erasedMu sync.RWMutex
	erased   map[string]struct{}
}

// statemap is a room state: (type, state_key) → the state event.
type statemap = pmap[stateKey, *record]

// record is one stored event. Every field is set before the record is
// published in Store.events and never changed afterwards, except redacted.
type record struct {
	fedhistory.Event
	// before and after are the room state just before and just after the
	// event, when stateKnown; both are empty otherwise.
	before, after statemap
	// state is set for state events only.
	state *stateInfo
	// onlyPrev is the record of the event's prev_event when it has exactly
	// one and the store held it, in the same room, when the event was added:
	// the walks' way down a chain without an index lookup (see
	// backfillChain and walkFetcher). A pointer rather than a slice of all
	// prevs, so that it costs the garbage collector no extra object.
	onlyPrev *record
	// auth are the event's auth events (pdu.Parsed.AuthEvents, so in room
	// version 12 the create event too) that the store held in the same room
	// when the event was added, each once: its auth chain links (see
	// fedhistory.StateStore). Nil for none. Shared between events with the
	// same links (see Store.authLinks), hence a pointer: one word per
	// event rather than a slice header and its own array.
	auth *[]*record
	// redacted is the event as handed out once a redaction of it applies:
	// a copy of Event with Redacted set. Nil while none applies. Handed-out
	// events are never modified, so a redaction publishes a new one.
	redacted atomic.Pointer[fedhistory.Event]
	// stateKnown reports whether the store knows the state before (and so
	// after) the event (see "State" on fedhistory.EventStore).
	stateKnown bool
}

// event returns the event as the store hands it out.
func (r *record) event() *fedhistory.Event {
	if ev := r.redacted.Load(); ev != nil {
		return ev
	}
	return &r.Event
}

// stateInfo is what a state event contributes to state resolution and to
// visibility decisions.
type stateInfo struct {
	// event is the record as state resolution sees it: its key, its parsed
	// PDU (which state resolution, and the redaction rules, need),
	// content.membership of an m.room.member event, and, as Auth, the
	// event's auth links (record.auth) to state events. It is built once,
	// when the event is added.
	event stateres.Event
	// historyVisibility is content.history_visibility of an
	// m.room.history_visibility event.
	historyVisibility string
}

// room is the per-room bookkeeping.
type room struct {
	id      string
	version gomatrixserverlib.RoomVersion
	// extremities are the forward extremities: state-bearing events (neither
	// outlier nor rejected) that no state-bearing event names as a
	// prev_event. Written under Store.mu.
	extremities map[string]*record
	// generation counts changes of extremities. Written under Store.mu.
	generation uint64
	// byTime indexes the room's events that are neither rejected nor
	// outliers by (origin_server_ts, depth, event ID), for
	// EventAtTimestamp. Written under Store.mu.
	byTime timeIndex
	// current caches the resolved current state for one generation.
	current atomic.Pointer[resolvedState]
	// resolving serialises the computation of current, so that concurrent
	// readers of a stale cache run state resolution once, not once each.
	resolving sync.Mutex
}

type resolvedState struct {
	generation uint64
	state      statemap
}

// New returns an empty store.
func New() *Store {
	return &Store{
		events:            newEventIndex(),
		rooms:             make(map[string]*room),
		dangling:          make(map[string]struct{}),
		pendingRedactions: make(map[string][]pendingRedaction),
		interned:          make(map[string]string),
		authSets:          make(map[authKey]*[]*record),
		erased:            make(map[string]struct{}),
	}
}

// Add adds one PDU and returns its event ID.
//
// data is the event in the federation format of roomVersion. Add keeps a
// copy of it (the caller may reuse data), which is what Events serves, byte
// for byte. The store trusts its input: it checks neither hashes nor
// signatures nor authorisation (that is the caller's job, and opts.Rejected
// records the outcome). For room versions 1 and 2 the event ID is the
// JSON's event_id; from version 3 on it is the reference hash.
//
// Events must be added in topological order (see "Order of adds" on
// fedhistory.EventStore). An event whose prev_events the store does not
// all hold, as non-outliers with a known state, has an unknown state unless
// opts.StateBefore gives it (see "State" there). An auth_event the store
// does not hold in the room is no auth chain link, now or later.
//
// The first event of a room fixes the room's version. Add fails, wrapping
// the errors of package fedhistory, with ErrRoomVersionMismatch for an event
// of the same room in another version, ErrDuplicateEvent when it holds the
// event ID already, ErrUnsupportedRoomVersion, ErrInvalidEvent, or
// ErrInvalidStateBefore. A failed Add changes nothing.
func (s *Store) Add(roomVersion string, data []byte, opts fedhistory.AddOptions) (eventID string, err error) {
	parsed, err := pdu.Parse(roomVersion, bytes.Clone(data))
	if err != nil {
		return "", err
	}
	rec, err := newRecord(parsed, opts)
	if err != nil {
		return "", err
	}

	// Adds are serialised by addMu, and only Add changes the store, so from
	// here on this goroutine reads the store without mu. It takes mu only to
	// publish the new event, for a few map assignments: readers never wait
	// for a state resolution.
	s.addMu.Lock()
	defer s.addMu.Unlock()

	if _, dup := s.events.get(rec.ID); dup {
		return "", fmt.Errorf("%w: %s", fedhistory.ErrDuplicateEvent, rec.ID)
	}
	rm := s.rooms[rec.RoomID]
	if rm != nil && string(rm.version) != roomVersion {
		return "", fmt.Errorf("%w: event %s is version %s, room %s is version %s",
			fedhistory.ErrRoomVersionMismatch, rec.ID, roomVersion, rec.RoomID, rm.version)
	}

	rec.RoomID = s.intern(rec.RoomID)
	rec.Type = s.intern(rec.Type)
	rec.Sender = s.intern(rec.Sender)
	// Point prev IDs at the strings the store already holds, so that a
	// linear history does not store every ID twice.
	for i, id := range rec.PrevEvents {
		if prev, ok := s.events.get(id); ok {
			rec.PrevEvents[i] = prev.ID
		}
	}
	if len(rec.PrevEvents) == 1 {
		if prev, ok := s.events.get(rec.PrevEvents[0]); ok && prev.RoomID == rec.RoomID {
			rec.onlyPrev = prev
		}
	}
	var links []*record
	for _, id := range parsed.AuthEvents {
		if auth, ok := s.events.get(id); ok && auth.RoomID == rec.RoomID && !slices.Contains(links, auth) {
			links = append(links, auth)
		}
	}
	if rec.state != nil {
		for _, auth := range links {
			if auth.state != nil {
				rec.state.event.Auth = append(rec.state.event.Auth, &auth.state.event)
			}
		}
	}
	rec.auth = s.authLinks(links, rec.state == nil)

	if err := s.setState(roomVersion, rec, opts); err != nil {
		return "", err
	}
	redactions := s.redactionsOnAdd(roomVersion, rec)

	// Nothing can fail from here on.
	if rec.state == nil {
		// Only state events keep their parsed PDU, which refers to the
		// bytes it was parsed from; any other event's JSON can move.
		rec.JSON = s.packJSON(rec.JSON)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if rm == nil {
		rm = &room{
			id:          rec.RoomID,
			version:     gomatrixserverlib.RoomVersion(roomVersion),
			extremities: make(map[string]*record),
		}
		s.rooms[rm.id] = rm
	}
	// A record is complete, its own redaction included, before readers can
	// see it; the targets it redacts are marked as it becomes visible.
	redactions.apply()
	s.events.put(rec)
	_, hasChild := s.dangling[rec.ID]
	delete(s.dangling, rec.ID)
	if !rec.Outlier && !rec.Rejected {
		// Forward extremities follow Synapse: outliers and rejected events
		// neither become extremities nor retire their prev_events.
		for _, id := range rec.PrevEvents {
			if _, known := s.events.get(id); known {
				delete(rm.extremities, id)
			} else {
				s.dangling[id] = struct{}{}
			}
		}
		if !hasChild {
			rm.extremities[rec.ID] = rec
		}
		rm.generation++
		// The contract's timestamp lookup skips rejected events and
		// outliers (Synapse: "no way to check whether it's next to a gap").
		rm.byTime.insert(rec)
	}
	return rec.ID, nil
}

// authKey is a set of up to four auth links, as a map key.
type authKey [4]*record

// authLinks returns links as a record's auth links, shared with earlier
// events that have the same ones when share is set and they are few.
// Only non-state events share: a state event's links usually include the
// previous holder of its state, so they rarely repeat and a map entry would
// cost more than it saves.
func (s *Store) authLinks(links []*record, share bool) *[]*record {
	if len(links) == 0 {
		return nil
	}
	if !share || len(links) > len(authKey{}) {
		return &links
	}
	var key authKey
	copy(key[:], links)
	if set, ok := s.authSets[key]; ok {
		return set
	}
	set := slices.Clip(links)
	s.authSets[key] = &set
	return &set
}

func (s *Store) intern(str string) string {
	if in, ok := s.interned[str]; ok {
		return in
	}
	s.interned[str] = str
	return str
}

// jsonBlockSize is the size of the blocks packJSON fills.
const jsonBlockSize = 64 << 10

// packJSON copies data into a shared block. Allocated one by one, event JSON
// would be rounded up to the allocator's next size class, which wastes about
// a tenth of the store's memory; packed, nothing is wasted but a block's
// tail. The returned slice has its capacity capped at its length, so that no
// append can reach into its neighbour. Blocks live as long as any event in
// them, which is for ever: the store never deletes.
func (s *Store) packJSON(data []byte) []byte {
	if len(data) > jsonBlockSize/8 {
		return data // large enough that rounding does not matter
	}
	if len(s.jsonChunk) < len(data) {
		s.jsonChunk = make([]byte, jsonBlockSize)
	}
	packed := s.jsonChunk[:len(data):len(data)]
	copy(packed, data)
	s.jsonChunk = s.jsonChunk[len(data):]
	return packed
}

// newRecord fills in the event metadata that does not depend on the store.
func newRecord(parsed *pdu.Parsed, opts fedhistory.AddOptions) (*record, error) {
	rec := &record{Event: parsed.Event}
	rec.Rejected, rec.Outlier, rec.Redacted = opts.Rejected, opts.Outlier, false
	if parsed.IsState() {
		event, err := stateres.NewEvent(parsed.PDU, opts.Rejected)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", fedhistory.ErrInvalidEvent, err)
		}
		rec.state = &stateInfo{event: *event, historyVisibility: parsed.HistoryVisibility}
	}
	return rec, nil
}

// EraseUser marks userID as erased (GDPR): ErasedUsers reports it from now on.
func (s *Store) EraseUser(userID string) {
	s.erasedMu.Lock()
	defer s.erasedMu.Unlock()
	s.erased[userID] = struct{}{}
}

// ErasedUsers returns the subset of userIDs that EraseUser has erased.
func (s *Store) ErasedUsers(_ context.Context, userIDs []string) (map[string]bool, error) {
	s.erasedMu.RLock()
	defer s.erasedMu.RUnlock()
	if len(s.erased) == 0 {
		return nil, nil // the common case: nobody erased, nothing to allocate
	}
	erased := make(map[string]bool)
	for _, id := range userIDs {
		if _, ok := s.erased[id]; ok {
			erased[id] = true
		}
	}
	return erased, nil
}

// RoomVersion returns the version of roomID, or an error wrapping
// fedhistory.ErrRoomNotFound.
func (s *Store) RoomVersion(_ context.Context, roomID string) (string, error) {
	s.mu.RLock()
	rm := s.rooms[roomID]
	s.mu.RUnlock()
	if rm == nil {
		return "", fmt.Errorf("memstore: room %q: %w", roomID, fedhistory.ErrRoomNotFound)
	}
	return string(rm.version), nil
}

// Events returns the events among ids that the store holds in roomID,
// outliers and rejected events included (their flags say so), in the order
// of ids. The *Event values are shared by every caller and never change:
// callers must not modify them or their JSON.
func (s *Store) Events(_ context.Context, roomID string, ids []string) ([]*fedhistory.Event, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	events := make([]*fedhistory.Event, 0, len(ids))
	for _, id := range ids {
		if rec, ok := s.events.get(id); ok && rec.RoomID == roomID {
			events = append(events, rec.event())
		}
	}
	return events, nil
}

// CurrentState returns the current server ACL of roomID and the current
// memberships of server's users. The current state is the state after the
// room's forward extremities, resolved with the room version's state
// resolution when there are several; it fails with an error wrapping
// fedhistory.ErrStateUnknown when the state after one of them is unknown,
// or when the room has none (only outliers and rejected events).
func (s *Store) CurrentState(_ context.Context, roomID, server string) (*fedhistory.CurrentState, error) {
	state, err := s.currentState(roomID)
	if err != nil {
		return nil, err
	}
	current := &fedhistory.CurrentState{Memberships: memberships(state, server)}
	if acl, ok := state.Get(stateKey{Type: pdu.TypeServerACL}); ok {
		// A copy: the caller gets bytes it may keep or change.
		current.ServerACL = bytes.Clone(acl.state.event.PDU.Content())
	}
	return current, nil
}

func (s *Store) currentState(roomID string) (statemap, error) {
	s.mu.RLock()
	rm := s.rooms[roomID]
	if rm == nil {
		s.mu.RUnlock()
		return statemap{}, fmt.Errorf("memstore: room %q: %w", roomID, fedhistory.ErrRoomNotFound)
	}
	generation := rm.generation
	extremities := make([]*record, 0, len(rm.extremities))
	for _, rec := range rm.extremities {
		extremities = append(extremities, rec)
	}
	s.mu.RUnlock()

	if len(extremities) == 0 {
		// Only outliers or rejected events so far: nothing to derive the
		// current state from.
		return statemap{}, fmt.Errorf("memstore: current state of %s: no forward extremity: %w", roomID, fedhistory.ErrStateUnknown)
	}
	for _, rec := range extremities {
		if !rec.stateKnown {
			return statemap{}, fmt.Errorf("memstore: current state of %s: state after forward extremity %s: %w",
				roomID, rec.ID, fedhistory.ErrStateUnknown)
		}
	}
	if len(extremities) == 1 {
		// The common case, a room without forks in flight: no resolution.
		return extremities[0].after, nil
	}
	if cached := rm.current.Load(); cached != nil && cached.generation == generation {
		return cached.state, nil
	}
	rm.resolving.Lock()
	defer rm.resolving.Unlock()
	if cached := rm.current.Load(); cached != nil && cached.generation >= generation {
		// Someone resolved this generation (or a newer one) while we waited;
		// a newer state is as good an answer: it is what an add that raced
		// this call would have given. A newer generation's extremities had
		// known states too, or it would not have been cached.
		return cached.state, nil
	}
	// Sorted, so that the result does not depend on map iteration order.
	slices.SortFunc(extremities, func(a, b *record) int { return strings.Compare(a.ID, b.ID) })
	var states []statemap
	for _, rec := range extremities {
		if !slices.ContainsFunc(states, rec.after.Same) {
			states = append(states, rec.after)
		}
	}
	state := states[0]
	if len(states) > 1 {
		var err error
		// Readers look events up under mu, as everywhere else.
		lookup := func(id string) *record {
			s.mu.RLock()
			defer s.mu.RUnlock()
			rec, _ := s.events.get(id)
			return rec
		}
		if state, err = resolveStates(rm.version, states, lookup); err != nil {
			return statemap{}, fmt.Errorf("memstore: current state of %s: %w", roomID, err)
		}
	}
	rm.current.Store(&resolvedState{generation: generation, state: state})
	return state, nil
}

// Visibility returns one answer per entry of eventIDs, in the same order.
// An entry is Known when the store holds the event in roomID, it is no
// outlier and its state is known. Memberships maps in the result may be
// shared between entries of the same result (events with the same state);
// callers must not modify them. The only allocations are the result, and
// one memberships map per distinct state.
func (s *Store) Visibility(_ context.Context, roomID, server string, eventIDs []string) ([]fedhistory.EventVisibility, error) {
	result := make([]fedhistory.EventVisibility, len(eventIDs))
	if len(eventIDs) == 0 {
		return result, nil
	}
	// The states are persistent maps: take the records under the lock and
	// read their states after it, so that a writer never waits for the
	// memberships to be collected. A nil record stands for "not known".
	var stack [128]*record // a backfill page fits: no allocation
	found := stack[:0]
	if len(eventIDs) > len(stack) {
		found = make([]*record, 0, len(eventIDs))
	}
	s.mu.RLock()
	for _, id := range eventIDs {
		rec, ok := s.events.get(id)
		if !ok || rec.RoomID != roomID || rec.Outlier || !rec.stateKnown {
			rec = nil
		}
		found = append(found, rec)
	}
	s.mu.RUnlock()

	// Most events share their state with their neighbours; compute each
	// distinct state once. A page holds few distinct states, and the last
	// one computed is by far the likeliest to come again: a short list,
	// newest first, beats a map.
	type memoized struct {
		root *pnode[stateKey, *record]
		vis  fedhistory.VisibilityState
	}
	var memoStack [8]memoized
	memo := memoStack[:0]
	visibility := func(state statemap) fedhistory.VisibilityState {
		for i := len(memo) - 1; i >= 0; i-- {
			if memo[i].root == state.root {
				return memo[i].vis
			}
		}
		v := fedhistory.VisibilityState{Memberships: memberships(state, server)}
		if hv, ok := state.Get(stateKey{Type: pdu.TypeHistoryVisibility}); ok {
			v.HistoryVisibility = hv.state.historyVisibility
		}
		if len(memo) == cap(memo) {
			memo = append(memo[:0], memo[len(memo)/2:]...) // keep the newer half
		}
		memo = append(memo, memoized{root: state.root, vis: v})
		return v
	}
	for i, rec := range found {
		if rec != nil {
			result[i] = fedhistory.EventVisibility{Known: true, Before: visibility(rec.before), After: visibility(rec.after)}
		}
	}
	return result, nil
}

// memberships returns content.membership of every user of server in state.
func memberships(state statemap, server string) map[string]string {
	members := make(map[string]string)
	state.Ascend(firstMemberOf(server), func(key stateKey, rec *record) bool {
		if !isMemberOf(key, server) {
			return false
		}
		if rec.state.event.Membership != "" {
			members[key.StateKey] = rec.state.event.Membership
		}
		return true
	})
	return members
}

var (
	_ fedhistory.EventStore       = (*Store)(nil)
	_ fedhistory.ErasureStore     = (*Store)(nil)
	_ fedhistory.StateStore       = (*Store)(nil)
	_ fedhistory.EventLookupStore = (*Store)(nil)
	_ fedhistory.TimestampStore   = (*Store)(nil)
)
