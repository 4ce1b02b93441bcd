package memstore

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
)

// all returns the records of x in order.
func (x *timeIndex) all() []*record {
	var out []*record
	var walk func(n *timeNode)
	walk = func(n *timeNode) {
		for i, rec := range n.items {
			if n.children != nil {
				walk(n.children[i])
			}
			out = append(out, rec)
		}
		if n.children != nil {
			walk(n.children[len(n.items)])
		}
	}
	if x.root != nil {
		walk(x.root)
	}
	return out
}

// TestTimeIndex compares the index's answers with a scan of every record,
// for records inserted in time order (the usual case, which fills leaves
// completely), in reverse, and at random with many equal timestamps.
func TestTimeIndex(t *testing.T) {
	orders := []struct {
		name string
		ts   func(rng *rand.Rand, i int) int64
	}{
		{"in time order", func(_ *rand.Rand, i int) int64 { return int64(i) * 10 }},
		{"in reverse", func(_ *rand.Rand, i int) int64 { return -int64(i) * 10 }},
		{"at random, many equal", func(rng *rand.Rand, _ int) int64 { return rng.Int64N(300) * 10 }},
	}
	for _, order := range orders {
		t.Run(order.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			var x timeIndex
			var recs []*record
			for i := range 5000 {
				rec := &record{Event: fedhistory.Event{
					ID: fmt.Sprintf("$%x", rng.Uint32()), OriginServerTS: order.ts(rng, i), Depth: rng.Int64N(5),
				}}
				recs = append(recs, rec)
				x.insert(rec)
			}
			slices.SortFunc(recs, compareTime)
			require.Equal(t, recs, x.all(), "in (origin_server_ts, depth, ID) order")

			scan := func(ts int64, dir fedhistory.Direction) *record {
				var best *record
				for _, rec := range recs {
					if dir == fedhistory.Backward && rec.OriginServerTS <= ts {
						best = rec
					}
					if dir == fedhistory.Forward && rec.OriginServerTS >= ts && best == nil {
						best = rec
					}
				}
				return best
			}
			probes := []int64{math.MinInt64, math.MaxInt64}
			for _, rec := range recs[:500] {
				probes = append(probes, rec.OriginServerTS-1, rec.OriginServerTS, rec.OriginServerTS+1)
			}
			for _, ts := range probes {
				require.Same(t, scan(ts, fedhistory.Backward), x.atOrBefore(ts), "at or before %d", ts)
				require.Same(t, scan(ts, fedhistory.Forward), x.atOrAfter(ts), "at or after %d", ts)
			}
		})
	}
	t.Run("empty", func(t *testing.T) {
		var x timeIndex
		require.Nil(t, x.atOrBefore(0))
		require.Nil(t, x.atOrAfter(0))
	})
}

// TestTimeIndexFillsLeavesInTimeOrder: a room whose events come in time
// order costs about one pointer per event.
func TestTimeIndexFillsLeavesInTimeOrder(t *testing.T) {
	var x timeIndex
	const n = 100_000
	for i := range n {
		x.insert(&record{Event: fedhistory.Event{ID: "$e", OriginServerTS: int64(i)}})
	}
	slots := 0
	var walk func(n *timeNode)
	walk = func(n *timeNode) {
		slots += cap(n.items)
		for _, child := range n.children {
			walk(child)
		}
	}
	walk(x.root)
	require.Less(t, float64(slots)/n, 1.05, "index slots per event")
}

func TestEventAtTimestamp(t *testing.T) {
	s := New()
	r := newTestRoom(t, "10")
	r.addSetup(s)
	auth := names("create", "pl", "alice")
	r.add(s, "rejected", r.message(mallory, "no", names("msg1"), auth), fedhistory.AddOptions{Rejected: true})
	r.add(s, "outlier", r.message(alice, "out", names("msg1"), auth), fedhistory.AddOptions{Outlier: true})
	r.add(s, "last", r.message(alice, "last", names("rejected"), auth), fedhistory.AddOptions{})
	ctx := context.Background()
	ts := func(name string) int64 { return int64(r.events[name].OriginServerTS()) }

	tests := []struct {
		name string
		ts   int64
		dir  fedhistory.Direction
		want string // "" for none
	}{
		{"at an event, backward", ts("hv"), fedhistory.Backward, "hv"},
		{"at an event, forward", ts("hv"), fedhistory.Forward, "hv"},
		{"just after an event, backward", ts("hv") + 1, fedhistory.Backward, "hv"},
		{"just after an event, forward", ts("hv") + 1, fedhistory.Forward, "msg1"},
		{"a rejected event is skipped", ts("rejected"), fedhistory.Backward, "msg1"},
		{"an outlier is skipped", ts("outlier"), fedhistory.Forward, "last"},
		{"before the room", ts("create") - 1, fedhistory.Backward, ""},
		{"after the room", ts("last") + 1, fedhistory.Forward, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.EventAtTimestamp(ctx, r.roomID, tc.ts, tc.dir)
			if tc.want == "" {
				require.ErrorIs(t, err, fedhistory.ErrEventNotFound)
				return
			}
			require.NoError(t, err)
			require.Equal(t, r.id(tc.want), got.ID)
		})
	}
	_, err := s.EventAtTimestamp(ctx, "!nope:hs1.example", 0, fedhistory.Forward)
	require.ErrorIs(t, err, fedhistory.ErrRoomNotFound)
	_, err = s.EventAtTimestamp(ctx, r.roomID, 0, 'x')
	require.Error(t, err)
}

func TestEventByID(t *testing.T) {
	s := New()
	r := newTestRoom(t, "12")
	r.addSetup(s)
	other := newTestRoom(t, "1")
	other.addSetup(s)
	ctx := context.Background()
	for _, room := range []*testRoom{r, other} {
		got, err := s.EventByID(ctx, room.id("msg1"))
		require.NoError(t, err)
		require.Equal(t, room.roomID, got.RoomID, "any room")
		require.Equal(t, string(room.json("msg1")), string(got.JSON))
	}
	_, err := s.EventByID(ctx, "$unknown")
	require.ErrorIs(t, err, fedhistory.ErrEventNotFound)
}
