package storetest

import (
	"context"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/dag"
)

// redactionCases are the reference rooms' redactions, each with whether
// the spec applies it ("Redactions" on fedhistory.EventStore and in the
// room versions). The targets are all different, so that each case is
// decided by its own redaction.
var redactionCases = []struct {
	name, room, redaction, target string
	// targetRoom is the target's room when it is not room.
	targetRoom string
	applies    bool
}{
	{name: "v10: by power: alice has 100, redact needs 50", room: "v10 main",
		redaction: labelRedactionV10, target: labelBobsMessage, applies: true},
	{name: "v10: neither power nor the same server: bob has 0 and is of hs2.example, alice of hs1.example", room: "v10 main",
		redaction: labelBobRedactsAliceV10, target: labelMessageBeforeHV},
	{name: "v10: hs3.example is not hs3.example:8448: erin, with 0, redacts carol's", room: "v10 main",
		redaction: labelErinRedactsCarolV10, target: labelCarolsMessageV10},
	{name: "v10: a rejected redaction redacts nothing", room: "v10 main",
		redaction: labelRejectedRedactionV10, target: "erin's first message"},
	{name: "v10: power is judged in the state before the redaction, never in one the store does not know", room: "v10 main",
		redaction: labelRedactionUnknownState, target: labelAfterCarolLeaves},
	{name: "v11: bob has 50 in the state before his redaction on branch 1", room: "v11 fork and merge",
		redaction: labelBobRedactsBr1, target: labelBeforeFork, applies: true},
	{name: "v11: bob has 0 in the state before his redaction on branch 2, after his demotion", room: "v11 fork and merge",
		redaction: labelBobRedactsBr2, target: labelErinsMessageV11Br2},
	{name: "v11: the same server: carol, with 0, redacts dave's; both are of hs3.example:8448", room: "v11 fork and merge",
		redaction: labelCarolRedactsDave, target: labelDavesMessageBr2, applies: true},
	{name: "v11: a redaction that arrives before its target applies when the target arrives", room: "v11 fork and merge",
		redaction: labelRedactsLateMessage, target: labelErinsLateMessageBr1, applies: true},
	{name: "v11: content.redacts names the target", room: "v11 fork and merge",
		redaction: labelRedactionV11, target: labelBobsMessageBr1, applies: true},
	{name: "v12: the creator is above every power level", room: "v12",
		redaction: labelRedactionV12, target: labelErinsMessageBr2, applies: true},
	{name: "v12: the same server: carol, with 0, redacts dave's", room: "v12",
		redaction: labelCarolRedactsDaveV12, target: labelDavesMessageV12, applies: true},
	{name: "v12: neither power nor the same server", room: "v12",
		redaction: labelBobRedactsCarolV12, target: labelCarolsMessageV12},
	{name: "v12: never the create event, even by the creator", room: "v12",
		redaction: labelRedactsCreateV12, target: labelCreate},
	{name: "v1: the auth rules checked the redaction: it applies", room: "v1",
		redaction: labelRedactionV1, target: labelBobsMessageV1, applies: true},
	{name: "v1: it applies even in a state the store does not know", room: "v1",
		redaction: labelRedactionAfterGapV1, target: labelBobsSecondMessageV1, applies: true},
	{name: "v1: never the create event", room: "v1",
		redaction: labelRedactsCreateV1, target: labelCreate},
	{name: "v1: a rejected redaction redacts nothing, even in room version 1", room: "v1",
		redaction: labelRejectedRedactionV1, target: labelCarolsMessageV1},
	{name: "v1: never an event of another room", room: "v1",
		redaction: labelRedactsOtherRoomV1, target: labelLastMessageV10, targetRoom: "v10 main"},
}

// testRedacted checks Redacted on every method that returns events: a
// redacted event is served redacted everywhere, or it leaks somewhere.
func (s *suite) testRedacted(t *testing.T) {
	ctx := context.Background()
	for _, tc := range redactionCases {
		t.Run(tc.name, func(t *testing.T) {
			rf, targetRoom := s.room(tc.room), s.room(tc.room)
			if tc.targetRoom != "" {
				targetRoom = s.room(tc.targetRoom)
			}
			redaction, target := rf.byLabel[tc.redaction], targetRoom.byLabel[tc.target]
			require.Equal(t, target.want.ID, redaction.want.Redacts, "the case names the redaction's target: a bug in storetest")
			require.Equal(t, tc.applies, target.want.Redacted, "the fixture disagrees with the case: a bug in storetest")
			got, err := s.store.Events(ctx, targetRoom.room.ID, []string{target.want.ID})
			require.NoError(t, err)
			require.Len(t, got, 1, "Events")
			require.Equal(t, tc.applies, got[0].Redacted, "Redacted of the target, %s", tc.target)
			got, err = s.store.Events(ctx, rf.room.ID, []string{redaction.want.ID})
			require.NoError(t, err)
			require.Len(t, got, 1, "Events")
			require.False(t, got[0].Redacted, "the redaction event itself is not redacted")
		})
	}
	t.Run("Events", func(t *testing.T) {
		for _, rf := range s.f.rooms {
			got, err := s.store.Events(ctx, rf.room.ID, ids(rf.events))
			require.NoError(t, err)
			require.Len(t, got, len(rf.events))
			for _, ev := range got {
				requireRedacted(t, rf.byID[ev.ID], ev)
			}
		}
	})
	t.Run("EventByID", func(t *testing.T) {
		lookup, ok := s.store.(fedhistory.EventLookupStore)
		if !ok {
			t.Skip("the store is not a fedhistory.EventLookupStore")
		}
		for _, rf := range s.f.rooms {
			for _, efx := range rf.events {
				got, err := lookup.EventByID(ctx, efx.want.ID)
				require.NoError(t, err)
				requireRedacted(t, efx, got)
			}
		}
	})
	t.Run("WalkBackfill", func(t *testing.T) {
		walker, ok := s.store.(fedhistory.BackfillWalker)
		if !ok {
			t.Skip("the store is not a fedhistory.BackfillWalker")
		}
		for _, rf := range s.f.rooms {
			for _, efx := range walkable(rf) {
				// A backfill returns the events it starts from.
				got, err := walker.WalkBackfill(ctx, dag.BackfillRequest{RoomID: rf.room.ID, From: []string{efx.want.ID}, Limit: 1})
				require.NoError(t, err)
				require.Len(t, got.Events, 1, "a backfill of one event from %s", efx.label)
				require.Equal(t, efx.want.ID, got.Events[0].ID)
				requireRedacted(t, efx, got.Events[0])
			}
		}
	})
	t.Run("WalkMissingEvents", func(t *testing.T) {
		walker, ok := s.store.(fedhistory.MissingEventsWalker)
		if !ok {
			t.Skip("the store is not a fedhistory.MissingEventsWalker")
		}
		for _, rf := range s.f.rooms {
			for _, efx := range walkable(rf) {
				// get_missing_events from the event's children returns it.
				var children []string
				for _, child := range walkable(rf) {
					if slices.Contains(child.want.PrevEvents, efx.want.ID) {
						children = append(children, child.want.ID)
					}
				}
				if len(children) == 0 {
					continue
				}
				got, err := walker.WalkMissingEvents(ctx, dag.MissingEventsRequest{RoomID: rf.room.ID, Latest: children, Limit: 100})
				require.NoError(t, err)
				i := slices.IndexFunc(got.Events, func(ev *fedhistory.Event) bool { return ev.ID == efx.want.ID })
				require.GreaterOrEqual(t, i, 0, "get_missing_events from the children of %s returns it", efx.label)
				for _, ev := range got.Events {
					requireRedacted(t, rf.byID[ev.ID], ev)
				}
			}
		}
	})
	t.Run("EventAtTimestamp", func(t *testing.T) {
		timestamps, ok := s.store.(fedhistory.TimestampStore)
		if !ok {
			t.Skip("the store is not a fedhistory.TimestampStore")
		}
		for _, rf := range s.f.rooms {
			for _, efx := range walkable(rf) {
				// An event is the answer at its own time one way or the
				// other, unless it is in the middle of three events that
				// share the time.
				for _, dir := range []fedhistory.Direction{fedhistory.Backward, fedhistory.Forward} {
					if rf.atTimestamp(efx.want.OriginServerTS, dir) != efx {
						continue
					}
					got, err := timestamps.EventAtTimestamp(ctx, rf.room.ID, efx.want.OriginServerTS, dir)
					require.NoError(t, err)
					require.Equal(t, efx.want.ID, got.ID)
					requireRedacted(t, efx, got)
				}
			}
		}
	})
}

// walkable are the events of rf that walks and timestamp lookups can
// return: neither rejected nor outliers.
func walkable(rf *roomFixture) []*eventFixture {
	var events []*eventFixture
	for _, efx := range rf.events {
		if !efx.want.Rejected && !efx.want.Outlier {
			events = append(events, efx)
		}
	}
	return events
}
