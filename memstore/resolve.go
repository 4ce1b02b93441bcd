package memstore

import (
	"cmp"
	"container/heap"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// resolveStates merges two or more distinct room states with the state
// resolution algorithm of the room version, and returns the result as a
// statemap that shares as much as it can with states[0].
//
// It reads only immutable records, so it needs no lock.
func resolveStates(version gomatrixserverlib.RoomVersion, states []statemap) (resolved statemap, err error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(version)
	if err != nil {
		return statemap{}, err
	}
	// gomatrixserverlib answers some malformed input (a create event whose
	// content does not parse, say) with a panic rather than an error.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("state resolution: %v", r)
		}
	}()
	var byKey map[stateKey]*record
	switch algorithm := verImpl.StateResAlgorithm(); algorithm {
	case gomatrixserverlib.StateResV1:
		byKey, err = resolveV1(version, states)
	case gomatrixserverlib.StateResV2, gomatrixserverlib.StateResV2_1:
		byKey = resolveV2(algorithm == gomatrixserverlib.StateResV2_1, states)
	default:
		err = fmt.Errorf("unsupported state resolution algorithm %d", algorithm)
	}
	if err != nil {
		return statemap{}, err
	}

	// Edit states[0] into the result rather than building it afresh, so that
	// the merged state shares every unchanged subtree with one branch.
	result := states[0]
	var gone []stateKey
	result.All(func(key stateKey, _ *record) bool {
		if _, keep := byKey[key]; !keep {
			gone = append(gone, key)
		}
		return true
	})
	for _, key := range gone {
		result = result.Delete(key)
	}
	for key, rec := range byKey {
		if current, ok := result.Get(key); !ok || current != rec {
			result = result.Set(key, rec)
		}
	}
	return result, nil
}

// resolveV1 runs gomatrixserverlib's state resolution v1 (room version 1).
func resolveV1(version gomatrixserverlib.RoomVersion, states []statemap) (map[stateKey]*record, error) {
	known := make(map[string]*record)
	stateSets := make([][]gomatrixserverlib.PDU, len(states))
	for i, state := range states {
		set := make([]gomatrixserverlib.PDU, 0, state.Len())
		state.All(func(_ stateKey, rec *record) bool {
			set = append(set, rec.state.pdu)
			for _, chained := range authChain([]*record{rec}) {
				known[chained.ID] = chained
			}
			known[rec.ID] = rec
			return true
		})
		stateSets[i] = set
	}
	authEvents := make([]gomatrixserverlib.PDU, 0, len(known))
	for _, rec := range known {
		authEvents = append(authEvents, rec.state.pdu)
	}
	isRejected := func(eventID string) bool {
		rec, ok := known[eventID]
		return ok && rec.Rejected
	}
	resolved, err := gomatrixserverlib.ResolveConflictsNew(version, stateSets, authEvents, userIDForSender, isRejected)
	if err != nil {
		return nil, fmt.Errorf("state resolution: %w", err)
	}
	byKey := make(map[stateKey]*record, len(resolved))
	for _, pdu := range resolved {
		rec, ok := known[pdu.EventID()]
		if !ok {
			return nil, fmt.Errorf("state resolution returned unknown event %s", pdu.EventID())
		}
		byKey[rec.state.key] = rec
	}
	return byKey, nil
}

// authChain returns the auth chain of events: their auth events, those
// events' auth events, and so on, as far as the store knows them.
func authChain(events []*record) []*record {
	seen := make(map[*record]bool)
	var chain []*record
	stack := slices.Clone(events)
	for len(stack) > 0 {
		rec := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, auth := range rec.state.auth {
			if !seen[auth] {
				seen[auth] = true
				chain = append(chain, auth)
				stack = append(stack, auth)
			}
		}
	}
	return chain
}

// resolveV2 is state resolution v2 (room versions 2 to 11) and, with v21
// set, v2.1 (room version 12), following the spec's "State resolution"
// section of those room versions step by step. Where the spec leaves room for
// interpretation, it follows Synapse (synapse/state/v2.py); the places say so.
//
// It is implemented here rather than taken from gomatrixserverlib because
// gomatrixserverlib's v2.1 (ResolveStateConflictsV2New) fails on the first
// conflicted power event of a version 12 room: it looks for the create event
// in a partial state that v2.1 starts empty. The authorisation rules
// themselves are still gomatrixserverlib's (Allowed).
func resolveV2(v21 bool, states []statemap) map[stateKey]*record {
	unconflicted, conflicted := splitConflicted(states)

	full := make(map[*record]bool)
	for _, rec := range conflicted {
		full[rec] = true
	}
	for _, rec := range authDifference(states) {
		full[rec] = true
	}
	if v21 {
		for _, rec := range conflictedSubgraph(conflicted) {
			full[rec] = true
		}
	}

	r := &resolverV2{powerLevels: make(map[*record]*gomatrixserverlib.PowerLevelContent)}

	// Step 1: the power events of the full conflicted set and, following
	// Synapse (_reverse_topological_power_sort), the events of the full
	// conflicted set reachable from them through auth events that are in
	// the full conflicted set too.
	power := make(map[*record]bool)
	var stack []*record
	for rec := range full {
		if isPowerEvent(rec) {
			power[rec] = true
			stack = append(stack, rec)
		}
	}
	for len(stack) > 0 {
		rec := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, auth := range rec.state.auth {
			if full[auth] && !power[auth] {
				power[auth] = true
				stack = append(stack, auth)
			}
		}
	}
	// Step 2: iterative auth checks on them, in reverse topological power
	// ordering, from the unconflicted state (v2) or from nothing (v2.1).
	partial := make(map[stateKey]*record)
	if !v21 {
		for key, rec := range unconflicted {
			partial[key] = rec
		}
	}
	r.iterativeAuthChecks(partial, r.reverseTopologicalPowerOrdering(power))

	// Steps 3 and 4: every other event of the full conflicted set, in
	// mainline ordering based on the partially resolved power levels.
	var others []*record
	for rec := range full {
		if !power[rec] {
			others = append(others, rec)
		}
	}
	r.iterativeAuthChecks(partial, mainlineOrdering(others, partial[stateKey{eventType: spec.MRoomPowerLevels}]))

	// Step 5: the unconflicted state map has the last word.
	for key, rec := range unconflicted {
		partial[key] = rec
	}
	return partial
}

// splitConflicted divides the entries of states into the unconflicted state
// map (same event under a key in every state) and the conflicted state set
// (everything else, a key missing from some state included).
func splitConflicted(states []statemap) (unconflicted map[stateKey]*record, conflicted []*record) {
	type entry struct {
		first    *record
		count    int
		conflict bool
	}
	entries := make(map[stateKey]*entry)
	for _, state := range states {
		state.All(func(key stateKey, rec *record) bool {
			e := entries[key]
			if e == nil {
				e = &entry{first: rec}
				entries[key] = e
			}
			e.count++
			if rec != e.first {
				e.conflict = true
			}
			return true
		})
	}
	unconflicted = make(map[stateKey]*record)
	for key, e := range entries {
		if e.count == len(states) && !e.conflict {
			unconflicted[key] = e.first
		}
	}
	seen := make(map[*record]bool)
	for _, state := range states {
		state.All(func(key stateKey, rec *record) bool {
			if _, ok := unconflicted[key]; !ok && !seen[rec] {
				seen[rec] = true
				conflicted = append(conflicted, rec)
			}
			return true
		})
	}
	return unconflicted, conflicted
}

// authDifference is the union of the full auth chains of states minus their
// intersection.
func authDifference(states []statemap) []*record {
	inChains := make(map[*record]int)
	for _, state := range states {
		var events []*record
		state.All(func(_ stateKey, rec *record) bool {
			events = append(events, rec)
			return true
		})
		for _, rec := range authChain(events) {
			inChains[rec]++
		}
	}
	var difference []*record
	for rec, n := range inChains {
		if n < len(states) {
			difference = append(difference, rec)
		}
	}
	return difference
}

// conflictedSubgraph returns the events on auth-event paths between events
// of the conflicted state set, endpoints included (state resolution v2.1):
// the events reachable from a conflicted event that can themselves reach a
// conflicted event.
func conflictedSubgraph(conflicted []*record) []*record {
	isConflicted := make(map[*record]bool, len(conflicted))
	for _, rec := range conflicted {
		isConflicted[rec] = true
	}
	reachesConflicted := make(map[*record]bool)
	var reaches func(rec *record) bool
	reaches = func(rec *record) bool {
		if r, ok := reachesConflicted[rec]; ok {
			return r
		}
		result := isConflicted[rec]
		for _, auth := range rec.state.auth {
			// No short cut: every auth event's answer is memoised for later.
			if reaches(auth) {
				result = true
			}
		}
		reachesConflicted[rec] = result
		return result
	}
	// The conflicted events themselves, then the events their auth events
	// lead to (authChain lists each once, but may list conflicted events).
	var subgraph []*record
	for _, rec := range conflicted {
		if reaches(rec) {
			subgraph = append(subgraph, rec)
		}
	}
	for _, rec := range authChain(conflicted) {
		if !isConflicted[rec] && reaches(rec) {
			subgraph = append(subgraph, rec)
		}
	}
	return subgraph
}

// isPowerEvent: power levels, join rules, and a membership event that makes
// somebody else leave (kick) or bans them.
func isPowerEvent(rec *record) bool {
	switch rec.state.key.eventType {
	case spec.MRoomPowerLevels, spec.MRoomJoinRules:
		return rec.state.key.stateKey == ""
	case spec.MRoomMember:
		return (rec.state.membership == spec.Leave || rec.state.membership == spec.Ban) &&
			rec.Sender != rec.state.key.stateKey
	}
	return false
}

type resolverV2 struct {
	// powerLevels caches parsed m.room.power_levels contents.
	powerLevels map[*record]*gomatrixserverlib.PowerLevelContent
}

// authEventOf returns the event of key among rec's auth events, or nil.
func authEventOf(rec *record, key stateKey) *record {
	for _, auth := range rec.state.auth {
		if auth.state.key == key {
			return auth
		}
	}
	return nil
}

// senderPowerLevel is the power level of rec's sender according to rec's own
// auth events, as the reverse topological power ordering compares them.
// Without a power levels event the creator has 100 and everybody else 0
// (Synapse, _get_power_level_for_sender); from room version 12 the creators
// have a level above every other.
func (r *resolverV2) senderPowerLevel(rec *record) int64 {
	sender := spec.SenderID(rec.Sender)
	create := authEventOf(rec, stateKey{eventType: spec.MRoomCreate})
	if create != nil {
		verImpl, err := gomatrixserverlib.GetRoomVersion(create.state.pdu.Version())
		if err == nil && verImpl.PrivilegedCreators() &&
			slices.Contains(gomatrixserverlib.CreatorsFromCreateEvent(create.state.pdu), rec.Sender) {
			return gomatrixserverlib.CreatorPowerLevel
		}
	}
	pl := authEventOf(rec, stateKey{eventType: spec.MRoomPowerLevels})
	if pl == nil {
		if create != nil && roomCreator(create) == rec.Sender {
			return 100
		}
		return 0
	}
	content, ok := r.powerLevels[pl]
	if !ok {
		parsed, err := gomatrixserverlib.NewPowerLevelContentFromEvent(pl.state.pdu)
		if err == nil {
			content = &parsed
		}
		r.powerLevels[pl] = content
	}
	if content == nil {
		return 0
	}
	return content.UserLevel(sender)
}

// roomCreator is content.creator of the create event before room version 11,
// and its sender from 11 on.
func roomCreator(create *record) string {
	if v := create.state.pdu.Version(); v == gomatrixserverlib.RoomVersionV11 || v == gomatrixserverlib.RoomVersionV12 {
		return create.Sender
	}
	return contentString(create.state.pdu.Content(), "creator")
}

// reverseTopologicalPowerOrdering sorts events so that every event comes after
// its auth events among them, choosing, whenever several could come next, the
// one whose sender has the highest power level, then the lowest
// origin_server_ts, then the lowest event ID (Kahn's algorithm).
func (r *resolverV2) reverseTopologicalPowerOrdering(events map[*record]bool) []*record {
	pending := make(map[*record]int, len(events))
	dependents := make(map[*record][]*record)
	ready := &powerHeap{}
	for rec := range events {
		for _, auth := range rec.state.auth {
			if events[auth] {
				pending[rec]++
				dependents[auth] = append(dependents[auth], rec)
			}
		}
		if pending[rec] == 0 {
			ready.items = append(ready.items, r.powerItem(rec))
		}
	}
	heap.Init(ready)
	sorted := make([]*record, 0, len(events))
	for ready.Len() > 0 {
		rec := heap.Pop(ready).(powerItem).rec
		sorted = append(sorted, rec)
		for _, dependent := range dependents[rec] {
			pending[dependent]--
			if pending[dependent] == 0 {
				heap.Push(ready, r.powerItem(dependent))
			}
		}
	}
	return sorted
}

type powerItem struct {
	rec        *record
	powerLevel int64
	ts         spec.Timestamp
}

func (r *resolverV2) powerItem(rec *record) powerItem {
	return powerItem{rec: rec, powerLevel: r.senderPowerLevel(rec), ts: rec.state.pdu.OriginServerTS()}
}

// powerHeap is a min-heap in the reverse topological power order.
type powerHeap struct{ items []powerItem }

func (h *powerHeap) Len() int { return len(h.items) }
func (h *powerHeap) Less(i, j int) bool {
	a, b := h.items[i], h.items[j]
	return cmp.Or(
		cmp.Compare(b.powerLevel, a.powerLevel), // higher power first
		cmp.Compare(a.ts, b.ts),
		strings.Compare(a.rec.ID, b.rec.ID),
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
func mainlineOrdering(events []*record, powerLevels *record) []*record {
	plKey := stateKey{eventType: spec.MRoomPowerLevels}
	mainline := make(map[*record]int)
	for i, pl := 0, powerLevels; pl != nil; i, pl = i+1, authEventOf(pl, plKey) {
		mainline[pl] = i
	}
	position := func(rec *record) int {
		for pl := authEventOf(rec, plKey); pl != nil; pl = authEventOf(pl, plKey) {
			if i, ok := mainline[pl]; ok {
				return i
			}
		}
		return math.MaxInt
	}
	type positioned struct {
		rec      *record
		position int
		ts       spec.Timestamp
	}
	list := make([]positioned, len(events))
	for i, rec := range events {
		list[i] = positioned{rec: rec, position: position(rec), ts: rec.state.pdu.OriginServerTS()}
	}
	slices.SortFunc(list, func(a, b positioned) int {
		return cmp.Or(
			cmp.Compare(b.position, a.position), // greater position first
			cmp.Compare(a.ts, b.ts),
			strings.Compare(a.rec.ID, b.rec.ID),
		)
	})
	sorted := make([]*record, len(list))
	for i, p := range list {
		sorted[i] = p.rec
	}
	return sorted
}

// iterativeAuthChecks applies each of events, in order, to partial if the
// authorisation rules allow it. The auth events an event is checked against
// are its own (non-rejected) auth_events, replaced by the partial state's
// entries for every key the rules need that the partial state has (as
// Synapse's _iterative_auth_checks does).
func (r *resolverV2) iterativeAuthChecks(partial map[stateKey]*record, events []*record) {
	for _, rec := range events {
		provider, _ := gomatrixserverlib.NewAuthEvents(nil)
		for _, auth := range rec.state.auth {
			if !auth.Rejected {
				_ = provider.AddEvent(auth.state.pdu)
			}
		}
		for _, tuple := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{rec.state.pdu}).Tuples() {
			current, ok := partial[stateKey{eventType: tuple.EventType, stateKey: tuple.StateKey}]
			if ok && !current.Rejected {
				_ = provider.AddEvent(current.state.pdu)
			}
		}
		if gomatrixserverlib.Allowed(rec.state.pdu, provider, userIDForSender) == nil {
			partial[rec.state.key] = rec
		}
	}
}

// userIDForSender maps a sender to its user ID. In every room version this
// store accepts, the sender is the user ID.
func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}
