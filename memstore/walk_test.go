package memstore

import (
	"context"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/dag"
	"github.com/fedhistory/fedhistory/internal/roomgen"
)

// chain builds records e0 … e(n-1), each the single prev of the next,
// with depth i+1, in room "!r"; shape may then alter them.
func chain(n int) []*record {
	recs := make([]*record, n)
	for i := range recs {
		recs[i] = &record{Event: fedhistory.Event{ID: "$e" + strconv.Itoa(i), RoomID: "!r", Depth: int64(i + 1)}}
		if i > 0 {
			recs[i].PrevEvents = []string{recs[i-1].ID}
			recs[i].onlyPrev = recs[i-1]
		}
	}
	return recs
}

func TestBackfillChainTakesOnlyPlainChains(t *testing.T) {
	tests := []struct {
		name  string
		alter func(recs []*record)
		limit int
		want  int // events returned; -1: the shortcut declines
	}{
		{"a plain chain, cut by the limit", func([]*record) {}, 3, 3},
		{"a plain chain down to an event without prev_events", func([]*record) {}, 100, 6},
		{"the seed is rejected", func(r []*record) { r[5].Rejected = true }, 3, -1},
		{"a rejected event on the way", func(r []*record) { r[3].Rejected = true }, 5, -1},
		{"a rejected event beyond the limit is never looked at", func(r []*record) { r[1].Rejected = true }, 3, 3},
		{"an outlier on the way", func(r []*record) { r[4].Outlier = true }, 5, -1},
		{"the seed is in another room", func(r []*record) { r[5].RoomID = "!other" }, 3, -1},
		{"a prev in another room", func(r []*record) { r[4].RoomID = "!other" }, 5, -1},
		{"a prev the store did not hold when its child was added", func(r []*record) { r[3].onlyPrev = nil }, 5, -1},
		{"two prev_events", func(r []*record) { r[3].PrevEvents = append(r[3].PrevEvents, "$x") }, 5, -1},
		{"a prev as deep as its child", func(r []*record) { r[3].Depth = r[4].Depth }, 5, -1},
		{"a prev deeper than its child", func(r []*record) { r[3].Depth = 100 }, 5, -1},
		{"a depth canonical JSON cannot carry", func(r []*record) { r[5].Depth = 1 << 60 }, 3, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			recs := chain(6)
			tc.alter(recs)
			events, ok := backfillChain(recs[5], "!r", tc.limit)
			if tc.want < 0 {
				require.False(t, ok)
				return
			}
			require.True(t, ok)
			require.Len(t, events, tc.want)
			for i, ev := range events {
				require.Same(t, &recs[5-i].Event, ev, "newest first")
			}
		})
	}
}

// TestWalkBackfillIsDagBackfill compares the store's own walk (shortcut
// included) with dag.Backfill over Events, from every event of random
// rooms with forks, rejected events and outliers, at several limits.
func TestWalkBackfillIsDagBackfill(t *testing.T) {
	ctx := context.Background()
	shortcut := map[bool]int{} // walks the shortcut answered, and declined
	for seed := range int64(6) {
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: "10", Seed: seed})
		require.NoError(t, err)
		require.NoError(t, b.StandardSetup())
		alice := b.Creator()
		for i := range 60 {
			switch rng.IntN(10) {
			case 0: // a fork of one to three events a side, merged
				other := b.Fork()
				for j := rng.IntN(3); j >= 0; j-- {
					_, err = b.Message(alice, "left")
					require.NoError(t, err)
				}
				require.NoError(t, b.Branch(other))
				for j := rng.IntN(3); j >= 0; j-- {
					_, err = b.Message(alice, "right")
					require.NoError(t, err)
				}
				require.NoError(t, b.Merge())
			case 1:
				_, err = b.Event(roomgen.EventSpec{Sender: alice, Type: "m.room.message",
					Content: map[string]string{"body": "rejected " + strconv.Itoa(i)}, Rejected: true})
			case 2:
				_, err = b.Event(roomgen.EventSpec{Sender: alice, Type: "m.room.message",
					Content: map[string]string{"body": "outlier " + strconv.Itoa(i)}, Outlier: true})
			default:
				_, err = b.Message(alice, strconv.Itoa(i))
			}
			require.NoError(t, err)
		}
		store := New()
		for _, ev := range b.Events() {
			_, err := store.Add(b.Room().Version, ev.JSON, fedhistory.AddOptions{Rejected: ev.Rejected, Outlier: ev.Outlier})
			require.NoError(t, err)
		}
		fetch := func(ctx context.Context, ids []string) ([]dag.Node, error) {
			events, err := store.Events(ctx, b.RoomID(), ids)
			nodes := make([]dag.Node, 0, len(events))
			for _, ev := range events {
				nodes = append(nodes, dag.Node{ID: ev.ID, RoomID: ev.RoomID, Depth: ev.Depth,
					PrevEvents: ev.PrevEvents, Rejected: ev.Rejected, Outlier: ev.Outlier})
			}
			return nodes, err
		}
		for _, ev := range b.Events() {
			for _, limit := range []int{1, 2, 5, 20, 100} {
				res, err := dag.Backfill(ctx, dag.BackfillRequest{RoomID: b.RoomID(), From: []string{ev.ID}, Limit: limit}, fetch)
				require.NoError(t, err)
				want := res.IDs
				got, err := store.WalkBackfill(ctx, dag.BackfillRequest{RoomID: b.RoomID(), From: []string{ev.ID}, Limit: limit})
				require.NoError(t, err)
				gotIDs := make([]string, 0, len(got.Events))
				for _, g := range got.Events {
					gotIDs = append(gotIDs, g.ID)
				}
				require.Equal(t, want, gotIDs, "seed %d, from %s, limit %d", seed, ev.ID, limit)
				// The walk's cost is a metric (fedhistory_walk_visits): the
				// shortcut must report what dag would have spent.
				require.Equal(t, res.Visits, got.Visits, "visits: seed %d, from %s, limit %d", seed, ev.ID, limit)
				require.Equal(t, res.Exhausted, got.Exhausted, "exhausted: seed %d, from %s, limit %d", seed, ev.ID, limit)
				if rec, ok := store.events.get(ev.ID); ok {
					_, took := backfillChain(rec, b.RoomID(), limit)
					shortcut[took]++
				}
			}
		}
	}
	t.Logf("shortcut answered %d walks, declined %d", shortcut[true], shortcut[false])
	require.Positive(t, shortcut[true], "the rooms never exercise the shortcut")
	require.Positive(t, shortcut[false], "the rooms never exercise the full walk")
}
