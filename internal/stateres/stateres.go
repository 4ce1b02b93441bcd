// Package stateres is the state resolution that fedhistory's stores share,
// so that every store resolves a merge of the room DAG the same way.
//
// It works on a store-neutral event type, so that memstore and sqlstore run
// the one resolver: state resolution v1 (room version 1) is
// gomatrixserverlib's; v2 (room versions 2 to 11) and v2.1 (room version 12)
// are implemented here, step by step after the spec's "State resolution"
// sections, following Synapse (synapse/state/v2.py) where the spec leaves
// room for interpretation. gomatrixserverlib's v2.1
// (ResolveStateConflictsV2New) panics on the first conflicted power event of
// a version 12 room: it looks for the create event in a partial state that
// v2.1 starts empty. The authorisation rules themselves are
// gomatrixserverlib's (Allowed).
package stateres

import (
	"cmp"
	"container/heap"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/fedhistory/fedhistory/internal/eventcontent"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// StateKey is the (type, state_key) pair that addresses one entry of a room's
// state.
type StateKey struct {
	Type     string
	StateKey string
}

// Compare orders state keys by type, then state key, except that membership
// keys sort by the server part of the user ID first (then the localpart), so
// that the memberships of one server's users are one contiguous range.
// Malformed membership keys without a colon sort before every server's.
func (k StateKey) Compare(other StateKey) int {
	if c := strings.Compare(k.Type, other.Type); c != 0 {
		return c
	}
	if k.Type != spec.MRoomMember {
		return strings.Compare(k.StateKey, other.StateKey)
	}
	kLocal, kServer, kHasServer := strings.Cut(k.StateKey, ":")
	oLocal, oServer, oHasServer := strings.Cut(other.StateKey, ":")
	return cmp.Or(
		compareBool(kHasServer, oHasServer),
		strings.Compare(kServer, oServer),
		strings.Compare(kLocal, oLocal),
	)
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	default:
		return -1
	}
}

// Event is one state event as state resolution sees it.
type Event struct {
	PDU gomatrixserverlib.PDU
	ID  string
	Key StateKey
	// Sender is the event's sender; Membership content.membership of an
	// m.room.member event.
	Sender, Membership string
	// Rejected: the store rejected the event.
	Rejected bool
	// Auth are the event's auth events that the store holds and that are
	// state events of the same room, in the order of auth_events.
	Auth []*Event
}

// NewEvent returns the Event of a parsed state event, without auth events.
// It fails for an event without a state key.
func NewEvent(pdu gomatrixserverlib.PDU, rejected bool) (*Event, error) {
	sk := pdu.StateKey()
	if sk == nil {
		return nil, fmt.Errorf("stateres: event %s is not a state event", pdu.EventID())
	}
	ev := &Event{
		PDU:      pdu,
		ID:       pdu.EventID(),
		Key:      StateKey{Type: pdu.Type(), StateKey: *sk},
		Sender:   string(pdu.SenderID()),
		Rejected: rejected,
	}
	if ev.Key.Type == spec.MRoomMember {
		ev.Membership = eventcontent.String(pdu.Content(), "membership")
	}
	return ev, nil
}

// State is a room state: (type, state_key) → event.
type State map[StateKey]*Event

// Resolve merges two or more distinct room states with the state resolution
// algorithm of version. The result holds only events of states and of their
// auth chains.
//
// gomatrixserverlib answers some malformed input with a panic rather than an
// error; Resolve turns such a panic into an error, because a store must not
// crash on an event a remote server forged.
func Resolve(version gomatrixserverlib.RoomVersion, states []State) (resolved State, err error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil {
		return nil, fmt.Errorf("stateres: %w", err)
	}
	defer func() {
		if r := recover(); r != nil {
			resolved, err = nil, fmt.Errorf("stateres: state resolution: %v", r)
		}
	}()
	switch algorithm := verImpl.StateResAlgorithm(); algorithm {
	case gomatrixserverlib.StateResV1:
		return resolveV1(version, states)
	case gomatrixserverlib.StateResV2, gomatrixserverlib.StateResV2_1:
		return resolveV2(algorithm == gomatrixserverlib.StateResV2_1, states), nil
	default:
		return nil, fmt.Errorf("stateres: unsupported state resolution algorithm %d", algorithm)
	}
}

// sortedEvents returns the events of state in key order, so that nothing
// depends on map iteration order.
func sortedEvents(state State) []*Event {
	keys := make([]StateKey, 0, len(state))
	for key := range state {
		keys = append(keys, key)
	}
	slices.SortFunc(keys, StateKey.Compare)
	events := make([]*Event, len(keys))
	for i, key := range keys {
		events[i] = state[key]
	}
	return events
}

// resolveV1 runs gomatrixserverlib's state resolution v1 (room version 1).
func resolveV1(version gomatrixserverlib.RoomVersion, states []State) (State, error) {
	known := make(map[string]*Event)
	stateSets := make([][]gomatrixserverlib.PDU, len(states))
	for i, state := range states {
		events := sortedEvents(state)
		set := make([]gomatrixserverlib.PDU, 0, len(events))
		for _, ev := range events {
			set = append(set, ev.PDU)
			for _, chained := range authChain([]*Event{ev}) {
				known[chained.ID] = chained
			}
			known[ev.ID] = ev
		}
		stateSets[i] = set
	}
	authEvents := make([]gomatrixserverlib.PDU, 0, len(known))
	for _, ev := range known {
		authEvents = append(authEvents, ev.PDU)
	}
	isRejected := func(eventID string) bool {
		ev, ok := known[eventID]
		return ok && ev.Rejected
	}
	resolved, err := gomatrixserverlib.ResolveConflictsNew(version, stateSets, authEvents, userIDForSender, isRejected)
	if err != nil {
		return nil, fmt.Errorf("stateres: state resolution: %w", err)
	}
	result := make(State, len(resolved))
	for _, pdu := range resolved {
		ev, ok := known[pdu.EventID()]
		if !ok {
			return nil, fmt.Errorf("stateres: state resolution returned unknown event %s", pdu.EventID())
		}
		result[ev.Key] = ev
	}
	return result, nil
}

// authChain returns the auth chain of events: their auth events, those
// events' auth events, and so on, as far as the store knows them.
func authChain(events []*Event) []*Event {
	seen := make(map[*Event]bool)
	var chain []*Event
	stack := slices.Clone(events)
	for len(stack) > 0 {
		ev := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, auth := range ev.Auth {
			if !seen[auth] {
				seen[auth] = true
				chain = append(chain, auth)
				stack = append(stack, auth)
			}
		}
	}
	return chain
}

// resolveV2 is state resolution v2 and, with v21 set, v2.1.
func resolveV2(v21 bool, states []State) State {
	unconflicted, conflicted := splitConflicted(states)

	full := make(map[*Event]bool)
	for _, ev := range conflicted {
		full[ev] = true
	}
	for _, ev := range authDifference(states) {
		full[ev] = true
	}
	if v21 {
		for _, ev := range conflictedSubgraph(conflicted) {
			full[ev] = true
		}
	}

	r := &resolverV2{powerLevels: make(map[*Event]*gomatrixserverlib.PowerLevelContent)}

	// Step 1: the power events of the full conflicted set and, following
	// Synapse (_reverse_topological_power_sort), the events of the full
	// conflicted set reachable from them through auth events that are in
	// the full conflicted set too.
	power := make(map[*Event]bool)
	var stack []*Event
	for ev := range full {
		if isPowerEvent(ev) {
			power[ev] = true
			stack = append(stack, ev)
		}
	}
	for len(stack) > 0 {
		ev := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, auth := range ev.Auth {
			if full[auth] && !power[auth] {
				power[auth] = true
				stack = append(stack, auth)
			}
		}
	}
	// Step 2: iterative auth checks on them, in reverse topological power
	// ordering, from the unconflicted state (v2) or from nothing (v2.1).
	partial := make(State)
	if !v21 {
		for key, ev := range unconflicted {
			partial[key] = ev
		}
	}
	r.iterativeAuthChecks(partial, r.reverseTopologicalPowerOrdering(power))

	// Steps 3 and 4: every other event of the full conflicted set, in
	// mainline ordering based on the partially resolved power levels.
	var others []*Event
	for ev := range full {
		if !power[ev] {
			others = append(others, ev)
		}
	}
	r.iterativeAuthChecks(partial, mainlineOrdering(others, partial[StateKey{Type: spec.MRoomPowerLevels}]))

	// Step 5: the unconflicted state map has the last word.
	for key, ev := range unconflicted {
		partial[key] = ev
	}
	return partial
}

// splitConflicted divides the entries of states into the unconflicted state
// map (same event under a key in every state) and the conflicted state set
// (everything else, a key missing from some state included).
func splitConflicted(states []State) (unconflicted State, conflicted []*Event) {
	type entry struct {
		first    *Event
		count    int
		conflict bool
	}
	entries := make(map[StateKey]*entry)
	for _, state := range states {
		for key, ev := range state {
			e := entries[key]
			if e == nil {
				e = &entry{first: ev}
				entries[key] = e
			}
			e.count++
			if ev != e.first {
				e.conflict = true
			}
		}
	}
	unconflicted = make(State)
	for key, e := range entries {
		if e.count == len(states) && !e.conflict {
			unconflicted[key] = e.first
		}
	}
	seen := make(map[*Event]bool)
	for _, state := range states {
		for _, ev := range sortedEvents(state) {
			if _, ok := unconflicted[ev.Key]; !ok && !seen[ev] {
				seen[ev] = true
				conflicted = append(conflicted, ev)
			}
		}
	}
	return unconflicted, conflicted
}

// authDifference is the union of the full auth chains of states minus their
// intersection.
func authDifference(states []State) []*Event {
	inChains := make(map[*Event]int)
	for _, state := range states {
		for _, ev := range authChain(sortedEvents(state)) {
			inChains[ev]++
		}
	}
	var difference []*Event
	for ev, n := range inChains {
		if n < len(states) {
			difference = append(difference, ev)
		}
	}
	return difference
}

// conflictedSubgraph returns the events on auth-event paths between events
// of the conflicted state set, endpoints included (state resolution v2.1):
// the events reachable from a conflicted event that can themselves reach a
// conflicted event.
func conflictedSubgraph(conflicted []*Event) []*Event {
	isConflicted := make(map[*Event]bool, len(conflicted))
	for _, ev := range conflicted {
		isConflicted[ev] = true
	}
	reachesConflicted := make(map[*Event]bool)
	var reaches func(ev *Event) bool
	reaches = func(ev *Event) bool {
		if r, ok := reachesConflicted[ev]; ok {
			return r
		}
		// Mark before recursing: auth_events of forged events may form a
		// cycle, which must not recurse forever.
		reachesConflicted[ev] = isConflicted[ev]
		result := isConflicted[ev]
		for _, auth := range ev.Auth {
			// No short cut: every auth event's answer is memoised for later.
			if reaches(auth) {
				result = true
			}
		}
		reachesConflicted[ev] = result
		return result
	}
	var subgraph []*Event
	for _, ev := range conflicted {
		if reaches(ev) {
			subgraph = append(subgraph, ev)
		}
	}
	for _, ev := range authChain(conflicted) {
		if !isConflicted[ev] && reaches(ev) {
			subgraph = append(subgraph, ev)
		}
	}
	return subgraph
}

// isPowerEvent: power levels, join rules, and a membership event that makes
// somebody else leave (kick) or bans them.
func isPowerEvent(ev *Event) bool {
	switch ev.Key.Type {
	case spec.MRoomPowerLevels, spec.MRoomJoinRules:
		return ev.Key.StateKey == ""
	case spec.MRoomMember:
		return (ev.Membership == spec.Leave || ev.Membership == spec.Ban) && ev.Sender != ev.Key.StateKey
	}
	return false
}

type resolverV2 struct {
	// powerLevels caches parsed m.room.power_levels contents.
	powerLevels map[*Event]*gomatrixserverlib.PowerLevelContent
}

// authEventOf returns the event of key among ev's auth events, or nil.
func authEventOf(ev *Event, key StateKey) *Event {
	for _, auth := range ev.Auth {
		if auth.Key == key {
			return auth
		}
	}
	return nil
}

// senderPowerLevel is the power level of ev's sender according to ev's own
// auth events, as the reverse topological power ordering compares them.
// Without a power levels event the creator has 100 and everybody else 0
// (Synapse, _get_power_level_for_sender); from room version 12 the creators
// have a level above every other.
func (r *resolverV2) senderPowerLevel(ev *Event) int64 {
	create := authEventOf(ev, StateKey{Type: spec.MRoomCreate})
	if create != nil {
		verImpl, err := gomatrixserverlib.GetRoomVersion(create.PDU.Version())
		if err == nil && verImpl.PrivilegedCreators() &&
			slices.Contains(gomatrixserverlib.CreatorsFromCreateEvent(create.PDU), ev.Sender) {
			return gomatrixserverlib.CreatorPowerLevel
		}
	}
	pl := authEventOf(ev, StateKey{Type: spec.MRoomPowerLevels})
	if pl == nil {
		if create != nil && roomCreator(create) == ev.Sender {
			return 100
		}
		return 0
	}
	content, ok := r.powerLevels[pl]
	if !ok {
		parsed, err := gomatrixserverlib.NewPowerLevelContentFromEvent(pl.PDU)
		if err == nil {
			content = &parsed
		}
		r.powerLevels[pl] = content
	}
	if content == nil {
		return 0
	}
	return content.UserLevel(spec.SenderID(ev.Sender))
}

// roomCreator is content.creator of the create event before room version 11,
// and its sender from 11 on.
func roomCreator(create *Event) string {
	if v := create.PDU.Version(); v == gomatrixserverlib.RoomVersionV11 || v == gomatrixserverlib.RoomVersionV12 {
		return create.Sender
	}
	return eventcontent.String(create.PDU.Content(), "creator")
}

// reverseTopologicalPowerOrdering sorts events so that every event comes after
// its auth events among them, choosing, whenever several could come next, the
// one whose sender has the highest power level, then the lowest
// origin_server_ts, then the lowest event ID (Kahn's algorithm).
func (r *resolverV2) reverseTopologicalPowerOrdering(events map[*Event]bool) []*Event {
	pending := make(map[*Event]int, len(events))
	dependents := make(map[*Event][]*Event)
	ready := &powerHeap{}
	for ev := range events {
		for _, auth := range ev.Auth {
			if events[auth] {
				pending[ev]++
				dependents[auth] = append(dependents[auth], ev)
			}
		}
		if pending[ev] == 0 {
			ready.items = append(ready.items, r.powerItem(ev))
		}
	}
	heap.Init(ready)
	sorted := make([]*Event, 0, len(events))
	for ready.Len() > 0 {
		ev := heap.Pop(ready).(powerItem).ev
		sorted = append(sorted, ev)
		for _, dependent := range dependents[ev] {
			pending[dependent]--
			if pending[dependent] == 0 {
				heap.Push(ready, r.powerItem(dependent))
			}
		}
	}
	return sorted
}

type powerItem struct {
	ev         *Event
	powerLevel int64
	ts         spec.Timestamp
}

func (r *resolverV2) powerItem(ev *Event) powerItem {
	return powerItem{ev: ev, powerLevel: r.senderPowerLevel(ev), ts: ev.PDU.OriginServerTS()}
}

// powerHeap is a min-heap in the reverse topological power order.
type powerHeap struct{ items []powerItem }

func (h *powerHeap) Len() int { return len(h.items) }
func (h *powerHeap) Less(i, j int) bool {
	a, b := h.items[i], h.items[j]
	return cmp.Or(
		cmp.Compare(b.powerLevel, a.powerLevel), // higher power first
		cmp.Compare(a.ts, b.ts),
		strings.Compare(a.ev.ID, b.ev.ID),
	) < 0
}
func (h *powerHeap) Swap(i, j int) { h.items[i], h.items[j] = h.items[j], h.items[i] }
func (h *powerHeap) Push(x any)    { h.items = append(h.items, x.(powerItem)) }
func (h *powerHeap) Pop() any {
	last := h.items[len(h.items)-1]
	h.items = h.items[:len(h.items)-1]
	return last
}

// mainlineOrdering sorts events by their mainline position relative to the
// power levels event powerLevels (events based on older power levels, or on
// none of the mainline, first), then origin_server_ts, then event ID.
func mainlineOrdering(events []*Event, powerLevels *Event) []*Event {
	plKey := StateKey{Type: spec.MRoomPowerLevels}
	mainline := make(map[*Event]int)
	for i, pl := 0, powerLevels; pl != nil; i, pl = i+1, authEventOf(pl, plKey) {
		if _, cycle := mainline[pl]; cycle {
			break // forged auth_events can loop
		}
		mainline[pl] = i
	}
	position := func(ev *Event) int {
		seen := make(map[*Event]bool)
		for pl := authEventOf(ev, plKey); pl != nil && !seen[pl]; pl = authEventOf(pl, plKey) {
			seen[pl] = true
			if i, ok := mainline[pl]; ok {
				return i
			}
		}
		return math.MaxInt
	}
	type positioned struct {
		ev       *Event
		position int
		ts       spec.Timestamp
	}
	list := make([]positioned, len(events))
	for i, ev := range events {
		list[i] = positioned{ev: ev, position: position(ev), ts: ev.PDU.OriginServerTS()}
	}
	slices.SortFunc(list, func(a, b positioned) int {
		return cmp.Or(
			cmp.Compare(b.position, a.position), // greater position first
			cmp.Compare(a.ts, b.ts),
			strings.Compare(a.ev.ID, b.ev.ID),
		)
	})
	sorted := make([]*Event, len(list))
	for i, p := range list {
		sorted[i] = p.ev
	}
	return sorted
}

// iterativeAuthChecks applies each of events, in order, to partial if the
// authorisation rules allow it. The auth events an event is checked against
// are its own (non-rejected) auth_events, replaced by the partial state's
// entries for every key the rules need that the partial state has (as
// Synapse's _iterative_auth_checks does).
func (r *resolverV2) iterativeAuthChecks(partial State, events []*Event) {
	for _, ev := range events {
		provider, _ := gomatrixserverlib.NewAuthEvents(nil)
		for _, auth := range ev.Auth {
			if !auth.Rejected {
				_ = provider.AddEvent(auth.PDU)
			}
		}
		for _, tuple := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev.PDU}).Tuples() {
			current, ok := partial[StateKey{Type: tuple.EventType, StateKey: tuple.StateKey}]
			if ok && !current.Rejected {
				_ = provider.AddEvent(current.PDU)
			}
		}
		if gomatrixserverlib.Allowed(ev.PDU, provider, userIDForSender) == nil {
			partial[ev.Key] = ev
		}
	}
}

// userIDForSender maps a sender to its user ID. In every room version
// fedhistory's stores accept (1 to 12, none with pseudonymous sender IDs),
// the sender is the user ID.
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}
