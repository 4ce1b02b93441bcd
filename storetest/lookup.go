package storetest

import (
	"cmp"
	"context"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
)

// ---- EventByID ----

func (s *suite) testEventByID(t *testing.T) {
	lookup, ok := s.store.(fedhistory.EventLookupStore)
	if !ok {
		t.Skip("the store is not a fedhistory.EventLookupStore")
	}
	ctx := context.Background()
	for _, rf := range s.f.rooms {
		t.Run(rf.name, func(t *testing.T) {
			// Every event, whatever its room: outliers and rejected events
			// included, their flags saying so.
			for _, efx := range rf.events {
				t.Run(efx.label, func(t *testing.T) { checkEventByID(t, ctx, lookup, efx, mustAnswer) })
			}
		})
	}
	t.Run("ErrEventNotFound for unknown IDs and events never received", func(t *testing.T) {
		batch := slices.Clone(unknownIDs)
		for _, rf := range s.f.rooms {
			batch = append(batch, ids(rf.withheld)...)
		}
		for _, id := range batch {
			_, err := lookup.EventByID(ctx, id)
			require.ErrorIs(t, err, fedhistory.ErrEventNotFound, "EventByID(%q)", id)
		}
	})
}

func checkEventByID(t require.TestingT, ctx context.Context, store fedhistory.EventLookupStore, efx *eventFixture, m mode) {
	helper(t)
	got, err := store.EventByID(ctx, efx.want.ID)
	if answered(t, err, m, "EventByID") {
		checkEvent(t, efx, got)
	}
}

// ---- EventAtTimestamp ----

// timestampCases state by hand which event is nearest a time; the
// room-by-room checks after them ask around every event's time.
var timestampCases = []struct {
	name, room string
	// at is the origin_server_ts of the event labelled at, plus delta
	// milliseconds.
	at    string
	delta int64
	dir   fedhistory.Direction
	// want is the label of the answer, "" for none (ErrEventNotFound); or
	// the answer is the event with the smallest ID among smallestID.
	want       string
	smallestID []string
	// notGreatestID: another event of the same time has a greater ID than
	// the answer, so that depth, not ID, decides.
	notGreatestID bool
}{
	{
		name: "v10: the bound is inclusive, backward", room: "v10 main",
		at: labelHVJoined, dir: fedhistory.Backward, want: labelHVJoined,
	},
	{
		name: "v10: the bound is inclusive, forward", room: "v10 main",
		at: labelHVJoined, dir: fedhistory.Forward, want: labelHVJoined,
	},
	{
		name: "v10: the nearest earlier event, backward", room: "v10 main",
		at: labelHVJoined, delta: 500, dir: fedhistory.Backward, want: labelHVJoined,
	},
	{
		name: "v10: the nearest later event, forward", room: "v10 main",
		at: labelHVJoined, delta: 500, dir: fedhistory.Forward, want: labelBobsMessage,
	},
	{
		name: "v10: rejected events are skipped, backward", room: "v10 main",
		at: labelRejectedBan, dir: fedhistory.Backward, want: "erin's first message",
	},
	{
		name: "v10: rejected events are skipped, forward", room: "v10 main",
		at: labelRejectedBan, dir: fedhistory.Forward, want: labelAfterRejected,
	},
	{
		name: "v10: outliers are skipped, backward", room: "v10 main",
		at: labelOutlier, dir: fedhistory.Backward, want: labelAfterCarolLeaves,
	},
	{
		name: "v10: outliers are skipped, forward", room: "v10 main",
		at: labelOutlier, dir: fedhistory.Forward, want: labelNamesOutlier,
	},
	{
		name: "v10: an event the store never received is not there", room: "v10 main",
		at: labelGapV10, dir: fedhistory.Backward, want: labelRedactionUnknownState,
	},
	{
		name: "v12: equal origin_server_ts, backward: the deepest, though not the greatest ID", room: "v12",
		at: labelMergeV12, dir: fedhistory.Backward, want: labelRedactionV12, notGreatestID: true,
	},
	{
		name: "v12: equal origin_server_ts and depth, forward: the smaller event ID", room: "v12",
		at: labelNoonBr1V12, dir: fedhistory.Forward, smallestID: []string{labelNoonBr1V12, labelErinsMessageBr2},
	},
	{
		name: "v12: origin_server_ts, not the DAG, decides: an event sent after the create event but stamped before it", room: "v12",
		at: labelCreate, delta: -1, dir: fedhistory.Backward, want: labelSkewedClockV12,
	},
	{
		name: "v12: nothing at or before a time before every event", room: "v12",
		at: labelSkewedClockV12, delta: -1, dir: fedhistory.Backward,
	},
	{
		name: "v12: nothing at or after a time after every event", room: "v12",
		at: labelMergeV12, delta: 1, dir: fedhistory.Forward,
	},
	{
		name: "v12: forward from just after the slow-clock message: the create event, sent before it but stamped after", room: "v12",
		at: labelSkewedClockV12, delta: 1, dir: fedhistory.Forward, want: labelCreate,
	},
	{
		name: "v11 joined over federation: the outliers of the state given at the join are skipped", room: "v11 joined over federation",
		at: labelCreate, dir: fedhistory.Forward, want: labelJoinFed,
	},
}

func (s *suite) testEventAtTimestamp(t *testing.T) {
	timestamps, ok := s.store.(fedhistory.TimestampStore)
	if !ok {
		t.Skip("the store is not a fedhistory.TimestampStore")
	}
	ctx := context.Background()
	for _, tc := range timestampCases {
		t.Run(tc.name, func(t *testing.T) {
			rf := s.room(tc.room)
			ts := rf.byLabel[tc.at].want.OriginServerTS + tc.delta
			var want *eventFixture
			if tc.want != "" {
				want = rf.byLabel[tc.want]
			}
			for _, label := range tc.smallestID {
				if efx := rf.byLabel[label]; want == nil || efx.want.ID < want.want.ID {
					want = efx
				}
			}
			require.Equal(t, want, rf.atTimestamp(ts, tc.dir), "the fixture disagrees with the case: a bug in storetest")
			if tc.notGreatestID {
				require.True(t, slices.ContainsFunc(rf.events, func(efx *eventFixture) bool {
					return efx.want.OriginServerTS == ts && efx.want.ID > want.want.ID
				}), "the case does not tell depth from ID: a bug in storetest")
			}
			checkEventAtTimestamp(t, ctx, timestamps, rf, ts, tc.dir, mustAnswer)
		})
	}
	for _, rf := range s.f.rooms {
		t.Run(rf.name+": around every event's time, both ways", func(t *testing.T) {
			for _, q := range timestampQueries(rf) {
				checkEventAtTimestamp(t, ctx, timestamps, rf, q.ts, q.dir, mustAnswer)
			}
		})
	}
	t.Run("unknown room is ErrRoomNotFound", func(t *testing.T) {
		for _, dir := range []fedhistory.Direction{fedhistory.Forward, fedhistory.Backward} {
			_, err := timestamps.EventAtTimestamp(ctx, unknownRoom, 0, dir)
			require.ErrorIs(t, err, fedhistory.ErrRoomNotFound)
		}
	})
}

type timestampQuery struct {
	ts  int64
	dir fedhistory.Direction
}

// timestampQueries are, for every event of rf (withheld ones too), its
// origin_server_ts and the milliseconds either side, each way, and the
// extremes of int64.
func timestampQueries(rf *roomFixture) []timestampQuery {
	times := []int64{math.MinInt64, math.MaxInt64}
	for _, efx := range slices.Concat(rf.events, rf.withheld) {
		ts := efx.want.OriginServerTS
		times = append(times, ts-1, ts, ts+1)
	}
	slices.Sort(times)
	var queries []timestampQuery
	for _, ts := range slices.Compact(times) {
		queries = append(queries, timestampQuery{ts, fedhistory.Backward}, timestampQuery{ts, fedhistory.Forward})
	}
	return queries
}

// atTimestamp is the answer EventAtTimestamp must give, by its definition:
// among the room's events that are neither rejected nor outliers, the
// greatest (OriginServerTS, Depth, ID) with OriginServerTS <= ts (Backward)
// or the least with OriginServerTS >= ts (Forward); nil for none.
func (rf *roomFixture) atTimestamp(ts int64, dir fedhistory.Direction) *eventFixture {
	var best *eventFixture
	for _, efx := range rf.events {
		if efx.want.Rejected || efx.want.Outlier {
			continue
		}
		switch {
		case dir == fedhistory.Backward && efx.want.OriginServerTS <= ts && (best == nil || compareTime(efx, best) > 0):
			best = efx
		case dir == fedhistory.Forward && efx.want.OriginServerTS >= ts && (best == nil || compareTime(efx, best) < 0):
			best = efx
		}
	}
	return best
}

// compareTime orders events by (OriginServerTS, Depth, ID), IDs as byte
// strings.
func compareTime(a, b *eventFixture) int {
	return cmp.Or(
		cmp.Compare(a.want.OriginServerTS, b.want.OriginServerTS),
		cmp.Compare(a.want.Depth, b.want.Depth),
		strings.Compare(a.want.ID, b.want.ID),
	)
}

func checkEventAtTimestamp(t require.TestingT, ctx context.Context, store fedhistory.TimestampStore, rf *roomFixture, ts int64, dir fedhistory.Direction, m mode) {
	helper(t)
	got, err := store.EventAtTimestamp(ctx, rf.room.ID, ts, dir)
	want := rf.atTimestamp(ts, dir)
	if want == nil {
		failed(t, err, fedhistory.ErrEventNotFound, m, "EventAtTimestamp(%d, %c) of room %s: no event", ts, dir, rf.name)
		return
	}
	if answered(t, err, m, "EventAtTimestamp") {
		require.NotNil(t, got, "EventAtTimestamp(%d, %c) of room %s", ts, dir, rf.name)
		require.Equal(t, want.want.ID, got.ID, "EventAtTimestamp(%d, %c) of room %s must answer %s", ts, dir, rf.name, want.label)
		checkEvent(t, want, got)
	}
}
