// Package memstore is a complete in-memory fedhistory.EventStore (and
// fedhistory.ErasureStore) for tests, the demo and small deployments.
//
// The store works out the state of the room before and after every event
// itself, from the events it is given, including state resolution where the
// DAG merges. It keeps those states as persistent maps that share all
// unchanged structure, so a room of a million messages costs little more than
// the messages' JSON.
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
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/eventcontent"
	"github.com/fedhistory/fedhistory/internal/stateres"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Errors returned by Store.Add.
var (
	// ErrDuplicateEvent: the store already holds an event with this ID.
	ErrDuplicateEvent = errors.New("memstore: duplicate event")
	// ErrRoomVersionMismatch: the event's room already exists with another version.
	ErrRoomVersionMismatch = errors.New("memstore: room version mismatch")
	// ErrUnsupportedRoomVersion: the store only handles room versions 1 to 12.
	ErrUnsupportedRoomVersion = errors.New("memstore: unsupported room version")
	// ErrInvalidEvent: the PDU could not be parsed for its room version.
	ErrInvalidEvent = errors.New("memstore: invalid event")
)

// Store is an in-memory event store. The zero value is not usable; call New.
type Store struct {
	// addMu serialises Add. Add is the only writer: holding addMu, it may
	// read everything below without mu.
	addMu sync.Mutex
	// mu guards events, rooms and the extremities and generation of every
	// room against concurrent reads: Add writes them holding mu, readers
	// read them holding mu.RLock. Records, once in events, are never
	// modified, so readers take mu only to look them up and do the rest of
	// their work unlocked.
	mu     sync.RWMutex
	events eventIndex
	rooms  map[string]*room

	// The rest is Add's alone (guarded by addMu).

	// dangling holds prev_events of state-bearing events (neither outlier
	// nor rejected) that were unknown when the child was added. If such an
	// event turns up later it already has a child, so it is no forward
	// extremity.
	dangling map[string]struct{}
	// interned deduplicates the strings that repeat across events (room
	// IDs, senders, event types), so that a million messages from a few
	// senders store each sender once.
	interned map[string]string
	// jsonChunk is the unused rest of the block that the JSON of non-state
	// events is packed into (see packJSON).
	jsonChunk []byte

	erasedMu sync.RWMutex
	erased   map[string]struct{}
}

// statemap is a room state: (type, state_key) → the state event.
type statemap = pmap[stateKey, *record]

// record is one stored event. Every field is set before the record is
// published in Store.events and never changed afterwards.
type record struct {
	fedhistory.Event
	// before and after are the room state just before and just after the
	// event; both are empty for outliers, whose state is unknown.
	before, after statemap
	// state is set for state events only.
	state *stateInfo
	// onlyPrev is the record of the event's prev_event when it has exactly
	// one and the store held it, in the same room, when the event was added:
	// the walks' way down a chain without an index lookup (see
	// backfillChain and walkFetcher). A pointer rather than a slice of all
	// prevs, so that it costs the garbage collector no extra object.
	onlyPrev *record
}

// stateInfo is what a state event contributes to state resolution and to
// visibility decisions.
type stateInfo struct {
	// event is the record as state resolution sees it: its key, its parsed
	// PDU (which state resolution needs), content.membership of an
	// m.room.member event, and, as Auth, the event's auth_events that the
	// store held when the event was added and that are themselves state
	// events of the same room. It is built once, when the event is added.
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
		events:   newEventIndex(),
		rooms:    make(map[string]*room),
		dangling: make(map[string]struct{}),
		interned: make(map[string]string),
		erased:   make(map[string]struct{}),
	}
}

// AddOptions qualify an event given to Store.Add.
type AddOptions struct {
	// Rejected marks an event that failed authorisation: it is kept in the
	// DAG (walks pass through it, its children inherit the state before it)
	// but it is never served and never becomes part of the room state.
	Rejected bool
	// Outlier marks an event whose state is not known (fetched as an auth
	// event, say): walks never enter it, it is never served, and Visibility
	// has no entry for it. An outlier state event is still available to
	// state resolution as an auth event of later events.
	Outlier bool
}

// supportedRoomVersions are the stable versions of the spec. Versions built
// on pseudonymous sender IDs are refused: this store maps senders to servers
// by their user IDs.
var supportedRoomVersions = map[string]bool{
	"1": true, "2": true, "3": true, "4": true, "5": true, "6": true,
	"7": true, "8": true, "9": true, "10": true, "11": true, "12": true,
}

// redactsInContent reports whether the room version carries the target of a
// redaction in content.redacts instead of the top-level "redacts" key: room
// version 11 moved it there, and version 12 builds on 11.
func redactsInContent(version string) bool {
	return version == "11" || version == "12"
}

// Add adds one PDU and returns its event ID.
//
// pdu is the event in the federation format of roomVersion. Add keeps a
// copy of it (the caller may reuse pdu), which is what Events serves, byte
// for byte. The store trusts its
// input: it checks neither hashes nor signatures nor authorisation (that is
// the caller's job, and opts.Rejected records the outcome). For room versions
// 1 and 2 the event ID is the JSON's event_id; from version 3 on it is the
// reference hash.
//
// Events must be added in topological order: every prev_event and
// auth_event the store should know about must already be in it. A
// prev_event that is unknown (or an outlier) is treated as a gap: the state
// before the event is computed from its other prev_events only, and an event
// none of whose prev_events is known starts from the empty state, like the
// create event. An auth_event that is unknown is left out of the auth chains
// that state resolution sees.
//
// The first event of a room fixes the room's version; an event of the same
// room in another version fails with ErrRoomVersionMismatch. Re-adding an
// event ID fails with ErrDuplicateEvent.
func (s *Store) Add(roomVersion string, pdu []byte, opts AddOptions) (eventID string, err error) {
	if !supportedRoomVersions[roomVersion] {
		return "", fmt.Errorf("%w: %q", ErrUnsupportedRoomVersion, roomVersion)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(roomVersion))
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrUnsupportedRoomVersion, err)
	}
	parsed, err := parsePDU(verImpl, bytes.Clone(pdu))
	if err != nil {
		return "", err
	}
	rec, err := newRecord(roomVersion, parsed, opts)
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
		return "", fmt.Errorf("%w: %s", ErrDuplicateEvent, rec.ID)
	}
	rm := s.rooms[parsed.roomID]
	if rm != nil && string(rm.version) != roomVersion {
		return "", fmt.Errorf("%w: event %s is version %s, room %s is version %s",
			ErrRoomVersionMismatch, rec.ID, roomVersion, parsed.roomID, rm.version)
	}

	rec.RoomID = s.intern(parsed.roomID)
	rec.Type = s.intern(rec.Type)
	rec.Sender = s.intern(rec.Sender)
	// Point prev IDs at the strings the store already holds, so that a
	// linear history does not store every ID twice.
	prevs := make([]*record, 0, len(rec.PrevEvents))
	for i, id := range rec.PrevEvents {
		if prev, ok := s.events.get(id); ok {
			rec.PrevEvents[i] = prev.ID
			if prev.RoomID == rec.RoomID {
				prevs = append(prevs, prev)
			}
		}
	}
	if rec.state != nil {
		for _, id := range parsed.pdu.AuthEventIDs() {
			if auth, ok := s.events.get(id); ok && auth.state != nil && auth.RoomID == rec.RoomID {
				rec.state.event.Auth = append(rec.state.event.Auth, &auth.state.event)
			}
		}
	}

	if !rec.Outlier {
		// Add is the only writer and holds addMu: it reads events without mu.
		lookup := func(id string) *record { rec, _ := s.events.get(id); return rec }
		before, err := stateBefore(gomatrixserverlib.RoomVersion(roomVersion), prevs, lookup)
		if err != nil {
			return "", fmt.Errorf("state before %s: %w", rec.ID, err)
		}
		rec.before, rec.after = before, before
		if len(rec.PrevEvents) == 1 && len(prevs) == 1 {
			rec.onlyPrev = prevs[0]
		}
		if rec.state != nil && !rec.Rejected {
			rec.after = before.Set(rec.state.event.Key, rec)
		}
	}

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
	}
	return rec.ID, nil
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

// parsedPDU is a PDU parsed by gomatrixserverlib, with the two fields whose
// accessors can panic already extracted.
type parsedPDU struct {
	pdu     gomatrixserverlib.PDU
	json    []byte
	eventID string
	roomID  string
}

// parsePDU parses data, which it keeps (the PDU refers to it).
func parsePDU(verImpl gomatrixserverlib.IRoomVersion, data []byte) (parsed parsedPDU, err error) {
	// gomatrixserverlib panics on some malformed input (an unparsable room
	// ID, an event it cannot hash); an event store must answer with an error.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%w: %v", ErrInvalidEvent, r)
		}
	}()
	pdu, err := verImpl.NewEventFromTrustedJSON(data, false)
	if err != nil {
		return parsedPDU{}, fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	parsed.pdu = pdu
	parsed.json = data
	parsed.eventID = pdu.EventID()
	if parsed.eventID == "" {
		return parsedPDU{}, fmt.Errorf("%w: no event_id", ErrInvalidEvent)
	}
	// For room version 12, gomatrixserverlib derives the create event's room
	// ID from its event ID; the event itself has no room_id.
	parsed.roomID = pdu.RoomID().String()
	return parsed, nil
}

// newRecord fills in the event metadata that does not depend on the store.
func newRecord(roomVersion string, parsed parsedPDU, opts AddOptions) (*record, error) {
	pdu := parsed.pdu
	rec := &record{Event: fedhistory.Event{
		ID:         parsed.eventID,
		Depth:      pdu.Depth(),
		PrevEvents: slices.Clone(pdu.PrevEventIDs()),
		Type:       pdu.Type(),
		Sender:     string(pdu.SenderID()),
		JSON:       parsed.json,
		Rejected:   opts.Rejected,
		Outlier:    opts.Outlier,
	}}
	if rec.Type == "m.room.redaction" {
		if redactsInContent(roomVersion) {
			rec.Redacts = eventcontent.String(pdu.Content(), "redacts")
		} else {
			rec.Redacts = pdu.Redacts()
		}
	}
	if sk := pdu.StateKey(); sk != nil {
		rec.StateKey = sk
		event, err := stateres.NewEvent(pdu, opts.Rejected)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidEvent, err)
		}
		info := &stateInfo{event: *event}
		if rec.Type == typeHistoryVisibility && *sk == "" {
			info.historyVisibility = eventcontent.String(pdu.Content(), "history_visibility")
		}
		rec.state = info
	}
	return rec, nil
}

// stateBefore is the state before an event whose known, non-outlier
// prev_events in the same room are prevs.
//
// lookup returns the record of an event ID, or nil (see resolveStates).
func stateBefore(version gomatrixserverlib.RoomVersion, prevs []*record, lookup func(eventID string) *record) (statemap, error) {
	var states []statemap
	for _, prev := range prevs {
		if prev.Outlier {
			continue
		}
		if !slices.ContainsFunc(states, prev.after.Same) {
			states = append(states, prev.after)
		}
	}
	switch len(states) {
	case 0:
		return statemap{}, nil
	case 1:
		return states[0], nil
	default:
		return resolveStates(version, states, lookup)
	}
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
			events = append(events, &rec.Event)
		}
	}
	return events, nil
}

// CurrentState returns the current server ACL of roomID and the current
// memberships of server's users. The current state is the state after the
// room's forward extremities, resolved with the room version's state
// resolution when there are several.
func (s *Store) CurrentState(_ context.Context, roomID, server string) (*fedhistory.CurrentState, error) {
	state, err := s.currentState(roomID)
	if err != nil {
		return nil, err
	}
	current := &fedhistory.CurrentState{Memberships: memberships(state, server)}
	if acl, ok := state.Get(stateKey{Type: typeServerACL}); ok {
		// A copy: the caller gets bytes it may keep or change.
		current.ServerACL = bytes.Clone(acl.state.event.PDU.Content())
	}
	return current, nil
}

const (
	typeHistoryVisibility = spec.MRoomHistoryVisibility
	typeServerACL         = "m.room.server_acl"
)

func (s *Store) currentState(roomID string) (statemap, error) {
	s.mu.RLock()
	rm := s.rooms[roomID]
	if rm == nil {
		s.mu.RUnlock()
		return statemap{}, fmt.Errorf("memstore: room %q: %w", roomID, fedhistory.ErrRoomNotFound)
	}
	generation := rm.generation
	if len(rm.extremities) == 1 {
		// The common case, a room without forks in flight: no resolution,
		// nothing to collect.
		var only *record
		for _, rec := range rm.extremities {
			only = rec
		}
		s.mu.RUnlock()
		return only.after, nil
	}
	extremities := make([]*record, 0, len(rm.extremities))
	for _, rec := range rm.extremities {
		extremities = append(extremities, rec)
	}
	s.mu.RUnlock()

	switch len(extremities) {
	case 0:
		// Only outliers or rejected events so far.
		return statemap{}, nil
	case 1:
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
		// this call would have given.
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
// An entry is Known when the store holds the event in roomID and it is no
// outlier. Memberships maps in the result may be shared between entries of
// the same result (events with the same state); callers must not modify
// them. The only allocations are the result, and one memberships map per
// distinct state.
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
		if !ok || rec.RoomID != roomID || rec.Outlier {
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
		if hv, ok := state.Get(stateKey{Type: typeHistoryVisibility}); ok {
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
	_ fedhistory.EventStore   = (*Store)(nil)
	_ fedhistory.ErasureStore = (*Store)(nil)
)
