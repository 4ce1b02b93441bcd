package stateres

import (
	"slices"
	"testing"

	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/stretchr/testify/require"
)

const bob, carol = "@bob:hs2.example", "@carol:other:8448"

// forkedRoom builds a room whose two branches change state concurrently and
// returns the parsed events (with their auth events) and the state of each
// branch before the merge, plus the builder, positioned after the merge.
//
// Branch A bans bob and makes history visibility "joined"; branch B lets
// carol leave and, where concurrent changes of one key are possible
// (roomgen cannot build them in room version 12), makes history visibility
// "invited".
func forkedRoom(t *testing.T, version string) (map[string]*Event, []State, *roomgen.Builder) {
	t.Helper()
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: version, Seed: 3})
	require.NoError(t, err)
	require.NoError(t, b.StandardSetup())
	alice := b.Creator()
	must := func(_ roomgen.Event, err error) { t.Helper(); require.NoError(t, err) }
	must(b.Join(bob))
	must(b.Join(carol))

	keys := []StateKey{
		{Type: spec.MRoomCreate}, {Type: spec.MRoomPowerLevels}, {Type: spec.MRoomJoinRules},
		{Type: spec.MRoomHistoryVisibility}, {Type: spec.MRoomMember, StateKey: alice},
		{Type: spec.MRoomMember, StateKey: bob}, {Type: spec.MRoomMember, StateKey: carol},
	}
	snapshot := func() map[StateKey]string {
		ids := make(map[StateKey]string)
		for _, key := range keys {
			if id, ok := b.StateEvent(key.Type, key.StateKey); ok {
				ids[key] = id
			}
		}
		return ids
	}

	other := b.Fork()
	must(b.HistoryVisibility(alice, "joined"))
	must(b.Member(alice, bob, "ban"))
	stateA := snapshot()
	require.NoError(t, b.Branch(other))
	must(b.Leave(carol))
	if version != "12" {
		must(b.HistoryVisibility(alice, "invited"))
	}
	stateB := snapshot()
	require.NoError(t, b.Merge())

	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	require.NoError(t, err)
	events := make(map[string]*Event)
	for _, ev := range b.Events() {
		pdu, err := verImpl.NewEventFromTrustedJSON(ev.JSON, false)
		require.NoError(t, err)
		if pdu.StateKey() == nil {
			continue
		}
		parsed, err := NewEvent(pdu, ev.Rejected)
		require.NoError(t, err)
		for _, id := range pdu.AuthEventIDs() {
			if auth, ok := events[id]; ok {
				parsed.Auth = append(parsed.Auth, auth)
			}
		}
		events[parsed.ID] = parsed
	}
	var states []State
	for _, ids := range []map[StateKey]string{stateA, stateB} {
		state := make(State)
		for key, id := range ids {
			state[key] = events[id]
		}
		states = append(states, state)
	}
	return events, states, b
}

func ids(state State) []string {
	var out []string
	for _, ev := range state {
		out = append(out, ev.ID)
	}
	slices.Sort(out)
	return out
}

// TestResolveAgreesWithGomatrixserverlib: for the room versions where
// gomatrixserverlib's resolution works (v1 and v2, room versions 1 to 11),
// Resolve gives its answer.
func TestResolveAgreesWithGomatrixserverlib(t *testing.T) {
	for _, version := range []string{"1", "2", "3", "10", "11"} {
		t.Run("room v"+version, func(t *testing.T) {
			events, states, _ := forkedRoom(t, version)
			var stateSets [][]gomatrixserverlib.PDU
			for _, state := range states {
				var set []gomatrixserverlib.PDU
				for _, ev := range state {
					set = append(set, ev.PDU)
				}
				stateSets = append(stateSets, set)
			}
			var authEvents []gomatrixserverlib.PDU
			for _, ev := range events {
				authEvents = append(authEvents, ev.PDU)
			}
			theirs, err := gomatrixserverlib.ResolveConflictsNew(gomatrixserverlib.RoomVersion(version), stateSets, authEvents,
				userIDForSender, func(string) bool { return false })
			require.NoError(t, err)
			var theirIDs []string
			for _, pdu := range theirs {
				theirIDs = append(theirIDs, pdu.EventID())
			}
			slices.Sort(theirIDs)

			ours, err := Resolve(gomatrixserverlib.RoomVersion(version), states)
			require.NoError(t, err)
			require.Equal(t, theirIDs, ids(ours))

			// Whatever the order of the state sets.
			swapped, err := Resolve(gomatrixserverlib.RoomVersion(version), []State{states[1], states[0]})
			require.NoError(t, err)
			require.Equal(t, ids(ours), ids(swapped))
		})
	}
}

// TestResolveKeepsTheBanAndTheLeave: the spec's outcome of the forked room in
// every room version, 12 included (where gomatrixserverlib's v2.1 panics on
// the conflicted ban): the ban of branch A and carol's leave of branch B
// both survive.
func TestResolveKeepsTheBanAndTheLeave(t *testing.T) {
	for _, version := range []string{"1", "3", "10", "11", "12"} {
		t.Run("room v"+version, func(t *testing.T) {
			events, states, b := forkedRoom(t, version)
			resolved, err := Resolve(gomatrixserverlib.RoomVersion(version), states)
			require.NoError(t, err)
			require.Equal(t, spec.Ban, resolved[StateKey{Type: spec.MRoomMember, StateKey: bob}].Membership)
			require.Equal(t, spec.Leave, resolved[StateKey{Type: spec.MRoomMember, StateKey: carol}].Membership)
			for _, key := range []StateKey{{Type: spec.MRoomMember, StateKey: bob}, {Type: spec.MRoomMember, StateKey: carol}, {Type: spec.MRoomPowerLevels}} {
				want, ok := b.StateEvent(key.Type, key.StateKey)
				require.True(t, ok)
				require.Equal(t, events[want], resolved[key], "%v: the builder's merge agrees", key)
			}
		})
	}
}

func TestResolveErrors(t *testing.T) {
	_, err := Resolve("13", []State{{}, {}})
	require.Error(t, err)
}

func TestConflictedSubgraph(t *testing.T) {
	// Auth edges point from an event to its auth events:
	//
	//	c1 → x → c2 → y        c3 → z       (c1, c2, c3 conflicted)
	//
	// x lies on a path between two conflicted events; y and z do not.
	node := func(id string, auth ...*Event) *Event { return &Event{ID: id, Auth: auth} }
	y := node("y")
	c2 := node("c2", y)
	x := node("x", c2)
	c1 := node("c1", x)
	z := node("z")
	c3 := node("c3", z)

	var got []string
	for _, ev := range conflictedSubgraph([]*Event{c1, c2, c3}) {
		got = append(got, ev.ID)
	}
	slices.Sort(got)
	require.Equal(t, []string{"c1", "c2", "c3", "x"}, got)

	// A cycle of auth events (forged) terminates.
	a := node("a")
	cyc := node("cyc", a)
	a.Auth = []*Event{cyc}
	require.NotPanics(t, func() { conflictedSubgraph([]*Event{cyc}) })
}

func TestStateKeyCompare(t *testing.T) {
	member := func(user string) StateKey { return StateKey{Type: spec.MRoomMember, StateKey: user} }
	// In ascending order.
	ordered := []StateKey{
		{Type: spec.MRoomCreate},
		member("@nocolon"),
		member("@zed:a.example"),
		member("@amy:b.example"),
		member("@bob:b.example"),
		member("@amy:b.example:8448"),
		{Type: spec.MRoomPowerLevels},
		{Type: spec.MRoomPowerLevels, StateKey: "x"},
	}
	for i := range ordered {
		for j := range ordered {
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			require.Equal(t, want, ordered[i].Compare(ordered[j]), "%v vs %v", ordered[i], ordered[j])
		}
	}
}
