package stateres

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// The classification of a fork for FuzzResolveV2MatchesGomatrixserverlib:
// whether Resolve and the pinned gomatrixserverlib must resolve it the same
// way. It is worked out from the states and the events' auth_events alone,
// with the test's own code (none of stateres.go's helpers, and neither
// resolution's output), so that neither implementation can excuse itself.
//
// References are to the spec's state resolution v2
// (rooms/fragments/v2-state-res.md): "Definitions" (power events,
// unconflicted state map, conflicted state set, auth chain, auth
// difference, full conflicted set, mainline ordering, iterative auth checks)
// and "Algorithm" steps 1 to 5.
//
// The known divergences of gomatrixserverlib (v0.0.0-20250815065806), each
// pinned by TestResolveV2KnownGomatrixserverlibDivergences, and the rule that
// keeps each out of the compared class:
//
//  1. missing key takes the event, not its auth event: in the iterative auth
//     checks, for a key the authorisation rules need that the partial state
//     lacks, the spec uses the event's own auth event of that key;
//     gomatrixserverlib (authAndApplyEvents, addFromAuthEventsIfNotRejected)
//     adds the event being checked instead. Rules P and K.
//  2. reverse topological order built backwards: gomatrixserverlib's Kahn's
//     algorithm (kahnsAlgorithmUsingAuthEvents) peels events off from the
//     newest and counts duplicated events twice, which is not the spec's
//     lexicographically smallest topological order (step 1). Rule P.
//  3. power closure follows conflicted events only: step 1 adds to the power
//     events the events of their auth chains that are in the full conflicted
//     set; gomatrixserverlib follows only events of the conflicted state set,
//     leaving the rest of the auth difference to the mainline ordering.
//     Rule P.
//  4. unconflicted event in the auth difference: the spec's auth chain of an
//     event holds its auth events, not the event, so an event of the
//     unconflicted state map can be in some states' full auth chains and not
//     others, and so in the auth difference and the full conflicted set. Resolve
//     keeps it there; gomatrixserverlib leaves every unconflicted event out (as
//     Synapse does, which counts each state's own events as part of its auth
//     chain). Rule U.
//
// Let F′ be the full conflicted set without those unconflicted events (the
// full conflicted set as gomatrixserverlib and Synapse compute it), and U
// the unconflicted events in the auth difference, so that the spec's full
// conflicted set F is F′ ∪ U. The rules:
//
//   - P (power events): F′ holds no power event. Then gomatrixserverlib's
//     step 1 is empty: nothing is sorted topologically or pulled in by a power
//     event (2 and 3), and no iterative auth check runs in step 2 (1).
//     Resolve's step 1 holds only events of U and what rule U allows.
//   - U (unconflicted events in the auth difference), under rule P: no event
//     of F′ has the key of an event of U, and the auth chains of the power
//     events of U hold at most one event of F′, and only the one that the
//     mainline ordering of F′ (based on the unconflicted power levels) puts
//     first. Then each check of an event u of U in Resolve can only set u's
//     entry of the partial state to u, which it already holds (the partial
//     state starts as the unconflicted state map, step 2, and nothing else
//     writes u's key); the one event of F′ that Resolve may check in step 1
//     is checked first in both, against the unconflicted state map; and the
//     mainline ordering sorts each event by its own position, timestamp and
//     ID, so U's events in the list of step 3 do not reorder the others. (In
//     rooms without merged forks, as the fuzz rooms are, an event of U has its
//     whole auth chain in every state's full auth chain, so an event of F′ in
//     it is a conflicted one, such as the creator's first join once the
//     creator's membership changed on a branch.)
//   - K (missing auth key), under rules P and U: the partial state after step
//     2 is, in effect, the unconflicted state map, so the power levels event
//     that step 3 orders by is known, and the test replays steps 3 and 4 on F′
//     as the spec words them (the mainline ordering; the iterative auth checks
//     with gomatrixserverlib.Allowed, the auth rules both implementations
//     share). It fails if an event is checked while a key it needs
//     (StateNeededForAuth) is absent from the partial state and present among
//     its auth events, and the verdict changes when, as gomatrixserverlib
//     does (1), the event itself is added in place of that auth event. Where
//     the key is absent from both, both leave it out; where the verdict is
//     the same, so is the partial state after the check.
//
// On a fork that passes all three, both implementations start from the
// unconflicted state map, check the events of F′ in the same order with the
// same verdicts and end with the unconflicted state map on top (step 5), so
// any difference is a divergence not known here.
type forkClass struct {
	// reasons are the rules the fork fails, in the order P, U, K; none if it
	// is compared.
	reasons []exclusion
	// conflicted is the conflicted state set, authDifference the auth
	// difference, unconflictedInAuthDifference U, for failure messages.
	conflicted, authDifference, unconflictedInAuthDifference []*Event
}

// exclusion is a rule of forkClass that a fork fails.
type exclusion int

const (
	excludedPowerEvent exclusion = iota
	excludedUnconflictedInAuthDifference
	excludedMissingAuthKey
)

func (e exclusion) String() string {
	switch e {
	case excludedPowerEvent:
		return "P: power event in the full conflicted set (causes 1-3)"
	case excludedUnconflictedInAuthDifference:
		return "U: unconflicted event in the auth difference that can matter (cause 4)"
	case excludedMissingAuthKey:
		return "K: auth key missing from the partial state (cause 1)"
	}
	return fmt.Sprintf("exclusion(%d)", int(e))
}

func (c forkClass) compared() bool { return len(c.reasons) == 0 }

func (c forkClass) has(e exclusion) bool { return slices.Contains(c.reasons, e) }

// describe lists the classification's facts with the room's labels.
func (c forkClass) describe(room *fuzzRoom) string {
	labels := room.labels()
	list := func(events []*Event) string {
		var names []string
		for _, ev := range events {
			names = append(names, labels[ev])
		}
		return strings.Join(names, " ")
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "classification: compared=%v %v\n", c.compared(), c.reasons)
	fmt.Fprintf(&sb, "  conflicted state set: %s\n", list(c.conflicted))
	fmt.Fprintf(&sb, "  auth difference: %s\n", list(c.authDifference))
	fmt.Fprintf(&sb, "  unconflicted events in it: %s\n", list(c.unconflictedInAuthDifference))
	return sb.String()
}

// classifyFork classifies the fork of states (see forkClass).
func classifyFork(states []State) forkClass {
	var c forkClass

	// Unconflicted state map and conflicted state set.
	keys := make(map[StateKey]bool)
	for _, state := range states {
		for key := range state {
			keys[key] = true
		}
	}
	unconflicted := make(map[StateKey]*Event)
	conflicted := make(map[*Event]bool)
	for key := range keys {
		first, same := states[0][key], true
		for _, state := range states {
			if ev, ok := state[key]; !ok || ev != first {
				same = false
			}
		}
		if same {
			unconflicted[key] = first
			continue
		}
		for _, state := range states {
			if ev, ok := state[key]; ok {
				conflicted[ev] = true
			}
		}
	}

	// Auth difference: the union of the states' full auth chains minus
	// their intersection.
	inChains := make(map[*Event]int)
	for _, state := range states {
		for ev := range authChainOf(slices.Collect(maps.Values(state))) {
			inChains[ev]++
		}
	}
	authDifference := make(map[*Event]bool)
	for ev, n := range inChains {
		if n < len(states) {
			authDifference[ev] = true
		}
	}

	// F′ and U.
	fullWithoutU := maps.Clone(conflicted)
	isUnconflicted := func(ev *Event) bool { return unconflicted[ev.Key] == ev }
	var u []*Event
	for ev := range authDifference {
		if isUnconflicted(ev) {
			u = append(u, ev)
		} else {
			fullWithoutU[ev] = true
		}
	}
	c.conflicted = byTimestamp(slices.Collect(maps.Keys(conflicted)))
	c.authDifference = byTimestamp(slices.Collect(maps.Keys(authDifference)))
	c.unconflictedInAuthDifference = byTimestamp(u)

	// Rule P.
	for ev := range fullWithoutU {
		if specPowerEvent(ev) {
			c.reasons = append(c.reasons, excludedPowerEvent)
			break
		}
	}

	// Rule U.
	ruleU := true
	pulledIn := make(map[*Event]bool)
	for _, unc := range u {
		for ev := range fullWithoutU {
			if ev.Key == unc.Key {
				ruleU = false
			}
		}
		if specPowerEvent(unc) {
			for ev := range authChainOf([]*Event{unc}) {
				if fullWithoutU[ev] {
					pulledIn[ev] = true
				}
			}
		}
	}
	if len(pulledIn) > 1 {
		ruleU = false
	} else if len(pulledIn) == 1 {
		first := specMainlineOrder(slices.Collect(maps.Keys(fullWithoutU)), unconflicted[StateKey{Type: spec.MRoomPowerLevels}])[0]
		ruleU = ruleU && pulledIn[first]
	}
	if !ruleU {
		c.reasons = append(c.reasons, excludedUnconflictedInAuthDifference)
	}

	// Rule K, which needs rules P and U.
	if c.compared() && replayFindsMissingAuthKey(unconflicted, slices.Collect(maps.Keys(fullWithoutU))) {
		c.reasons = append(c.reasons, excludedMissingAuthKey)
	}
	return c
}

// replayFindsMissingAuthKey replays steps 3 and 4 of the algorithm on events,
// starting from the partial state partial (which it does not modify), and
// reports whether an event was checked while a key the authorisation rules
// need for it was absent from the partial state and present among its auth
// events, and gomatrixserverlib's substitute for that auth event (see
// gomatrixserverlibAllows) changes whether the event is allowed.
func replayFindsMissingAuthKey(partial map[StateKey]*Event, events []*Event) bool {
	partial = maps.Clone(partial)
	for _, ev := range specMainlineOrder(events, partial[StateKey{Type: spec.MRoomPowerLevels}]) {
		provider, _ := gomatrixserverlib.NewAuthEvents(nil)
		missing := false
		for _, tuple := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev.PDU}).Tuples() {
			key := StateKey{Type: tuple.EventType, StateKey: tuple.StateKey}
			if current, ok := partial[key]; ok {
				_ = provider.AddEvent(current.PDU)
				continue
			}
			for _, auth := range ev.Auth {
				if auth.Key == key {
					missing = true
					_ = provider.AddEvent(auth.PDU)
				}
			}
		}
		allowed := gomatrixserverlib.Allowed(ev.PDU, provider, userIDForSender) == nil
		if missing && allowed != gomatrixserverlibAllows(ev, partial) {
			return true
		}
		if allowed {
			partial[ev.Key] = ev
		}
	}
	return false
}

// gomatrixserverlibAllows reports whether the pinned gomatrixserverlib's
// iterative auth checks (stateResolverV2.authAndApplyEvents) allow ev against
// partial: for each key the authorisation rules need, in the order of
// StateNeeded (create, join rules, power levels, members, third-party
// invites), the partial state's event if it has one, and otherwise, if ev has
// an auth event of that key, ev itself (addFromAuthEventsIfNotRejected adds
// the event being checked, under its own key, where the spec takes the auth
// event).
func gomatrixserverlibAllows(ev *Event, partial map[StateKey]*Event) bool {
	provider, _ := gomatrixserverlib.NewAuthEvents(nil)
	for _, tuple := range gomatrixserverlib.StateNeededForAuth([]gomatrixserverlib.PDU{ev.PDU}).Tuples() {
		key := StateKey{Type: tuple.EventType, StateKey: tuple.StateKey}
		if current, ok := partial[key]; ok {
			_ = provider.AddEvent(current.PDU)
			continue
		}
		for _, auth := range ev.Auth {
			if auth.Key == key {
				_ = provider.AddEvent(ev.PDU)
			}
		}
	}
	return gomatrixserverlib.Allowed(ev.PDU, provider, userIDForSender) == nil
}

// specMainlineOrder sorts events by the mainline ordering based on the power
// levels event pl: greater mainline position first (∞ for an event whose
// power levels auth events never reach the mainline), then smaller
// origin_server_ts, then smaller event ID.
func specMainlineOrder(events []*Event, pl *Event) []*Event {
	plAuth := func(ev *Event) *Event {
		for _, auth := range ev.Auth {
			if auth.Key.Type == spec.MRoomPowerLevels && auth.Key.StateKey == "" {
				return auth
			}
		}
		return nil
	}
	mainline := make(map[*Event]int)
	for i, p := 0, pl; p != nil; i, p = i+1, plAuth(p) {
		mainline[p] = i
	}
	position := func(ev *Event) int {
		for p := plAuth(ev); p != nil; p = plAuth(p) {
			if i, ok := mainline[p]; ok {
				return i
			}
		}
		return math.MaxInt
	}
	sorted := slices.Clone(events)
	slices.SortFunc(sorted, func(a, b *Event) int {
		return cmp.Or(
			cmp.Compare(position(b), position(a)),
			cmp.Compare(a.PDU.OriginServerTS(), b.PDU.OriginServerTS()),
			strings.Compare(a.ID, b.ID),
		)
	})
	return sorted
}

// specPowerEvent: a state event of type m.room.power_levels or
// m.room.join_rules, or an m.room.member event whose membership is leave or
// ban and whose sender is not its state_key.
func specPowerEvent(ev *Event) bool {
	switch ev.PDU.Type() {
	case spec.MRoomPowerLevels, spec.MRoomJoinRules:
		return true
	case spec.MRoomMember:
		var content struct {
			Membership string `json:"membership"`
		}
		_ = json.Unmarshal(ev.PDU.Content(), &content)
		return (content.Membership == spec.Leave || content.Membership == spec.Ban) &&
			string(ev.PDU.SenderID()) != *ev.PDU.StateKey()
	}
	return false
}

// authChainOf is the union of the auth chains of events: their auth events,
// those events' auth events, and so on, through the Auth links the test set
// up (parseNewEvents).
func authChainOf(events []*Event) map[*Event]bool {
	chain := make(map[*Event]bool)
	stack := slices.Clone(events)
	for len(stack) > 0 {
		ev := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, auth := range ev.Auth {
			if !chain[auth] {
				chain[auth] = true
				stack = append(stack, auth)
			}
		}
	}
	return chain
}

// byTimestamp sorts events by origin_server_ts, then ID.
func byTimestamp(events []*Event) []*Event {
	slices.SortFunc(events, func(a, b *Event) int {
		return cmp.Or(cmp.Compare(a.PDU.OriginServerTS(), b.PDU.OriginServerTS()), strings.Compare(a.ID, b.ID))
	})
	return events
}
