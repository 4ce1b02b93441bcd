package storetest

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
)

// ---- StateBefore ----

// stateBeforeCases state by hand what the state before an event holds and
// does not hold; the room-by-room checks after them compare every event's
// whole state with the fixture's.
var stateBeforeCases = []struct {
	name, room, event string
	// holds and lacks are event labels.
	holds, lacks []string
}{
	{
		name: "v10: the state before a state event is without its own change", room: "v10 main", event: labelHVJoined,
		holds: []string{"history_visibility shared"}, lacks: []string{labelHVJoined},
	},
	{
		name: "v10: the state before carol leaves has her join", room: "v10 main", event: labelCarolLeaves,
		holds: []string{"carol joins"}, lacks: []string{labelCarolLeaves},
	},
	{
		name: "v10: rejected events are in no state", room: "v10 main", event: labelAfterRejected,
		holds: []string{"carol joins", "history_visibility becomes joined"}, lacks: []string{labelRejectedBan, labelRejectedHV},
	},
	{
		name: "v10: after the gap, the state given with StateBefore; outliers not named are in no state", room: "v10 main", event: labelAfterGapV10,
		holds: []string{labelCarolLeaves, "bob joins"}, lacks: []string{labelOutlier},
	},
	{
		name: "v11: after state resolution, bob's demotion, carol's leave, invited and dave's join; bob's topic is reset", room: "v11 fork and merge", event: labelMergeV11,
		holds: []string{labelBobDemotedBr2, labelCarolLeavesBr1, labelHVInvitedBr2, labelDaveJoinsBr2},
		lacks: []string{labelBobsTopicBr1, labelBobPromoted, labelCarolDisplayname, labelHVJoinedBr1},
	},
	{
		name: "v12: the merge of branches that changed different state keeps both changes", room: "v12", event: labelMergeV12,
		holds: []string{labelHVJoinedV12Branch, "erin joins (branch 2)"}, lacks: []string{"history_visibility shared"},
	},
	{
		name: "v11 joined over federation: the join's state is the outliers it was given", room: "v11 joined over federation", event: labelJoinFed,
		holds: []string{labelCreate, "bob joins", "power levels", "join rules public", "carol joins (federation)", labelHVJoinedFed, labelACLFed},
		lacks: []string{"history_visibility shared", labelJoinFed},
	},
	{
		name: "v11 joined over federation: the event after the join has it", room: "v11 joined over federation", event: labelAfterJoinFed,
		holds: []string{labelJoinFed, labelACLFed},
	},
	{
		name: "v1: an outlier prev_event with StateBefore: the given state", room: "v1", event: labelNamesOutlierV1,
		holds: []string{labelCarolLeavesV1}, lacks: []string{labelOutlierV1},
	},
}

func (s *suite) testStateBefore(t *testing.T) {
	state, ok := s.store.(fedhistory.StateStore)
	if !ok {
		t.Skip("the store is not a fedhistory.StateStore")
	}
	ctx := context.Background()
	for _, tc := range stateBeforeCases {
		t.Run(tc.name, func(t *testing.T) {
			rf := s.room(tc.room)
			efx := rf.byLabel[tc.event]
			got, err := state.StateBefore(ctx, rf.room.ID, efx.want.ID)
			require.NoError(t, err)
			for _, label := range tc.holds {
				require.Contains(t, efx.before.ids(), rf.byLabel[label].want.ID, "the fixture disagrees with the case: a bug in storetest")
				require.Contains(t, got, rf.byLabel[label].want.ID, "the state before %s holds %s", efx.label, label)
			}
			for _, label := range tc.lacks {
				require.NotContains(t, got, rf.byLabel[label].want.ID, "the state before %s does not hold %s", efx.label, label)
			}
		})
	}
	for _, tc := range unknownStateCases {
		t.Run("ErrStateUnknown: "+tc.name, func(t *testing.T) {
			rf := s.room(tc.room)
			_, err := state.StateBefore(ctx, rf.room.ID, rf.byLabel[tc.event].want.ID)
			require.ErrorIs(t, err, fedhistory.ErrStateUnknown, "a store never invents state (\"State\" on fedhistory.EventStore)")
		})
	}
	for _, rf := range s.f.rooms {
		t.Run(rf.name, func(t *testing.T) {
			for _, efx := range rf.events {
				t.Run(efx.label, func(t *testing.T) { checkStateBefore(t, ctx, state, rf, efx, mustAnswer) })
			}
		})
	}
	t.Run("ErrEventNotFound for unknown IDs, events never received and another room's events", func(t *testing.T) {
		rf := s.room("v10 main")
		batch := slices.Concat(unknownIDs, ids(rf.withheld), ids(s.otherRoom(rf).events))
		for _, id := range batch {
			_, err := state.StateBefore(ctx, rf.room.ID, id)
			require.ErrorIs(t, err, fedhistory.ErrEventNotFound, "StateBefore(%q)", id)
		}
	})
	t.Run("unknown room is ErrEventNotFound or ErrRoomNotFound", func(t *testing.T) {
		// The contract names ErrEventNotFound ("no event eventID in
		// roomID"); a store that looks the room up first may say so.
		_, err := state.StateBefore(ctx, unknownRoom, s.f.rooms[0].events[1].want.ID)
		require.True(t, errors.Is(err, fedhistory.ErrEventNotFound) || errors.Is(err, fedhistory.ErrRoomNotFound), "StateBefore: %v", err)
	})
}

// checkStateBefore checks StateBefore of efx, an event of rf: not found for
// a rejected event and an outlier, unknown after a gap, else exactly the
// fixture's state.
func checkStateBefore(t require.TestingT, ctx context.Context, store fedhistory.StateStore, rf *roomFixture, efx *eventFixture, m mode) {
	helper(t)
	got, err := store.StateBefore(ctx, rf.room.ID, efx.want.ID)
	if why, want := stateFailure(efx); want != nil {
		failed(t, err, want, m, "StateBefore of %s, %s", efx.label, why)
	} else if answered(t, err, m, "StateBefore") {
		requireIDs(t, efx.before.ids(), got, "StateBefore of %s, one event per (type, state_key)", efx.label)
	}
	checkStateIDs(t, ctx, store, rf, efx, m)
}

// stateFailure is why asking for the state of efx fails, and the error it
// fails with: not found for a rejected event and an outlier, unknown after
// a gap; nil when the fixture knows the state.
func stateFailure(efx *eventFixture) (why string, want error) {
	switch {
	case efx.want.Rejected:
		return "a rejected event", fedhistory.ErrEventNotFound
	case efx.want.Outlier:
		return "an outlier", fedhistory.ErrEventNotFound
	case efx.before == nil:
		return "whose state the store cannot know", fedhistory.ErrStateUnknown
	}
	return "", nil
}

// checkStateIDs checks a fedhistory.StateIDsStore's StateIDs of efx against
// StateBefore's answer and the auth chain of the fixture's state.
func checkStateIDs(t require.TestingT, ctx context.Context, store fedhistory.StateStore, rf *roomFixture, efx *eventFixture, m mode) {
	helper(t)
	both, ok := store.(fedhistory.StateIDsStore)
	if !ok {
		return
	}
	pduIDs, authChainIDs, err := both.StateIDs(ctx, rf.room.ID, efx.want.ID)
	if why, want := stateFailure(efx); want != nil {
		failed(t, err, want, m, "StateIDs of %s, %s", efx.label, why)
	} else if answered(t, err, m, "StateIDs") {
		requireIDs(t, efx.before.ids(), pduIDs, "StateIDs of %s: the state, one event per (type, state_key)", efx.label)
		requireIDs(t, rf.authChain(efx.before.ids()), authChainIDs, "StateIDs of %s: the auth chain of the state", efx.label)
	}
}

// requireIDs compares two sets of IDs: no duplicates in got, nil equal to
// empty.
func requireIDs(t require.TestingT, want, got []string, msgAndArgs ...any) {
	helper(t)
	seen := map[string]bool{}
	for _, id := range got {
		require.False(t, seen[id], "%s answered twice", id)
		seen[id] = true
	}
	if len(want) == 0 {
		require.Empty(t, got, msgAndArgs...)
		return
	}
	require.ElementsMatch(t, want, got, msgAndArgs...)
}

// ---- AuthChain ----

// authChainCases state auth chains by hand; the room-by-room checks after
// them compare every event's chain, and whole batches, with the fixture's.
var authChainCases = []struct {
	name, room string
	// events and want are event labels; foreign adds unknown IDs and
	// another room's events to the batch.
	events, want []string
	foreign      bool
}{
	{
		name: "v10: the creator's join has the create event as its only auth event", room: "v10 main",
		events: []string{"alice joins"}, want: []string{labelCreate},
	},
	{
		name: "v12: the create event is an auth event of every other event, which v12 never lists", room: "v12",
		events: []string{"alice joins"}, want: []string{labelCreate},
	},
	{
		name: "v12: a message's chain: the create event, power levels, the sender's join and theirs", room: "v12",
		events: []string{labelDavesMessageV12}, want: []string{labelCreate, "power levels", "alice joins", "join rules public", "dave joins"},
	},
	{
		name: "v10: a rejected auth event is neither returned nor walked through", room: "v10 main",
		events: []string{labelCitesRejected}, want: []string{labelCreate, "power levels", "alice joins", "join rules public", "erin joins"},
	},
	{
		name: "v10: a rejected event contributes nothing", room: "v10 main",
		events: []string{labelRejectedBan}, want: nil,
	},
	{
		name: "v10: an eventID is in the answer only if another one reaches it", room: "v10 main",
		events: []string{labelCreate}, want: nil,
	},
	{
		name: "v10: ... and is when another does", room: "v10 main",
		events: []string{labelCreate, "alice joins"}, want: []string{labelCreate},
	},
	{
		name: "v11 joined over federation: outliers are in the chain and walked through", room: "v11 joined over federation",
		events: []string{labelJoinFed}, want: []string{labelCreate, "bob joins", "power levels", "join rules public"},
	},
	{
		name: "v10: unknown IDs and another room's events contribute nothing", room: "v10 main",
		events: []string{"alice joins"}, want: []string{labelCreate}, foreign: true,
	},
}

func (s *suite) testAuthChain(t *testing.T) {
	state, ok := s.store.(fedhistory.StateStore)
	if !ok {
		t.Skip("the store is not a fedhistory.StateStore")
	}
	ctx := context.Background()
	for _, tc := range authChainCases {
		t.Run(tc.name, func(t *testing.T) {
			rf := s.room(tc.room)
			var batch, want []string
			for _, label := range tc.events {
				batch = append(batch, rf.byLabel[label].want.ID)
			}
			for _, label := range tc.want {
				want = append(want, rf.byLabel[label].want.ID)
			}
			requireIDs(t, want, rf.authChain(batch), "the fixture disagrees with the case: a bug in storetest")
			if tc.foreign {
				batch = append(batch, unknownIDs...)
				batch = append(batch, ids(rf.withheld)...)
				batch = append(batch, ids(s.otherRoom(rf).events)...)
			}
			got, err := state.AuthChain(ctx, rf.room.ID, batch)
			require.NoError(t, err)
			requireIDs(t, want, got, "AuthChain of %v", tc.events)
		})
	}
	for _, rf := range s.f.rooms {
		t.Run(rf.name, func(t *testing.T) {
			for _, efx := range rf.events {
				t.Run(efx.label, func(t *testing.T) { checkAuthChain(t, ctx, state, rf, []string{efx.want.ID}, mustAnswer) })
			}
			t.Run("the whole state before the last event with a known state, in one batch", func(t *testing.T) {
				var last *eventFixture
				for _, efx := range rf.events {
					if efx.before != nil && !efx.want.Rejected {
						last = efx
					}
				}
				checkAuthChain(t, ctx, state, rf, last.before.ids(), mustAnswer)
			})
			t.Run("every event of the room in one batch", func(t *testing.T) {
				checkAuthChain(t, ctx, state, rf, ids(rf.events), mustAnswer)
			})
		})
	}
	t.Run("unknown room answers nothing or ErrRoomNotFound", func(t *testing.T) {
		got, err := state.AuthChain(ctx, unknownRoom, ids(s.f.rooms[0].events))
		if err != nil {
			require.ErrorIs(t, err, fedhistory.ErrRoomNotFound)
			return
		}
		require.Empty(t, got)
	})
	t.Run("empty batch", func(t *testing.T) {
		got, err := state.AuthChain(ctx, s.f.rooms[0].room.ID, nil)
		require.NoError(t, err)
		require.Empty(t, got)
	})
}

func checkAuthChain(t require.TestingT, ctx context.Context, store fedhistory.StateStore, rf *roomFixture, batch []string, m mode) {
	helper(t)
	got, err := store.AuthChain(ctx, rf.room.ID, batch)
	if answered(t, err, m, "AuthChain") {
		requireIDs(t, rf.authChain(batch), got, "AuthChain of %d events of room %s", len(batch), rf.name)
	}
}

// authChain is the auth chain of the events ids, by its definition on
// fedhistory.StateStore: the events reachable from them through one or
// more auth links (eventFixture.auth: links to events the store held when
// the linking event was added), rejected events neither returned nor
// walked through (a rejected event among ids included), outliers both.
func (rf *roomFixture) authChain(ids []string) []string {
	var stack []*eventFixture
	followed := map[string]bool{}
	for _, id := range ids {
		if efx, ok := rf.byID[id]; ok && !efx.want.Rejected && !followed[id] {
			followed[id] = true
			stack = append(stack, efx)
		}
	}
	reached := map[string]bool{}
	var chain []string
	for len(stack) > 0 {
		efx := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, id := range efx.auth {
			auth := rf.byID[id]
			if auth.want.Rejected {
				continue
			}
			if !reached[id] {
				reached[id] = true
				chain = append(chain, id)
			}
			if !followed[id] {
				followed[id] = true
				stack = append(stack, auth)
			}
		}
	}
	return chain
}
