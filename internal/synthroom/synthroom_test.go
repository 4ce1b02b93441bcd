package synthroom_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/synthroom"
	"github.com/fedhistory/fedhistory/memstore"
)

// load adds the setup and n synthetic events to a new store and returns it
// with the synthetic events' IDs.
func load(t *testing.T, g *synthroom.Generator, n int) (*memstore.Store, []string) {
	t.Helper()
	store := memstore.New()
	for _, ev := range g.Setup() {
		_, err := store.Add(synthroom.Version, ev.JSON, fedhistory.AddOptions{})
		require.NoError(t, err)
	}
	var ids []string
	var buf []byte
	for range n {
		id, pdu := g.Next(buf)
		buf = pdu
		stored, err := store.Add(synthroom.Version, pdu, fedhistory.AddOptions{})
		require.NoError(t, err)
		require.Equal(t, id, stored, "the store reads the event ID from the JSON")
		ids = append(ids, id)
	}
	return store, ids
}

func TestShapes(t *testing.T) {
	tests := []struct {
		name  string
		shape synthroom.Shape
		// prevs[i] are the indexes of event i's prev_events among the
		// synthetic events (-1: the last setup event); depth[i] is its depth
		// above the setup's.
		prevs [][]int
		depth []int64
	}{
		{"linear: each event points at the one before", synthroom.Linear,
			[][]int{{-1}, {0}, {1}, {2}, {3}, {4}},
			[]int64{1, 2, 3, 4, 5, 6}},
		{"forked: base, three branches, merge", synthroom.Forked,
			[][]int{{-1}, {0}, {0}, {0}, {1, 2, 3}, {4}},
			[]int64{1, 2, 2, 2, 3, 4}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g, err := synthroom.New(synthroom.Options{Shape: tc.shape})
			require.NoError(t, err)
			setup := g.Setup()
			last := setup[len(setup)-1]
			store, ids := load(t, g, len(tc.prevs))
			require.Equal(t, ids[len(ids)-1], g.Newest())

			events, err := store.Events(context.Background(), g.RoomID(), ids)
			require.NoError(t, err)
			require.Len(t, events, len(ids))
			for i, ev := range events {
				var want []string
				for _, p := range tc.prevs[i] {
					if p < 0 {
						want = append(want, last.ID)
					} else {
						want = append(want, ids[p])
					}
				}
				require.Equal(t, want, ev.PrevEvents, "prev_events of event %d", i)
				require.Equal(t, last.Depth+tc.depth[i], ev.Depth, "depth of event %d", i)
				require.Equal(t, "m.room.message", ev.Type)
			}
		})
	}
}

func TestMessagesHaveTheRequestedSize(t *testing.T) {
	for _, size := range []int{1024, 4096} {
		g, err := synthroom.New(synthroom.Options{MessageBytes: size})
		require.NoError(t, err)
		_, pdu := g.Next(nil)
		require.InDelta(t, size, len(pdu), 16, "a message of about %d bytes", size)
		require.True(t, json.Valid(pdu))
	}
}

func TestJoinsAndHistoryVisibility(t *testing.T) {
	g, err := synthroom.New(synthroom.Options{
		HistoryVisibility: "joined",
		Members:           []string{"@bob:hs2.example"},
		JoinEvery:         2,
	})
	require.NoError(t, err)
	store, ids := load(t, g, 4)
	ctx := context.Background()

	events, err := store.Events(ctx, g.RoomID(), ids)
	require.NoError(t, err)
	require.Equal(t, "m.room.message", events[0].Type)
	require.Equal(t, "m.room.member", events[1].Type)
	require.Equal(t, "@joiner1:joiner0.example", *events[1].StateKey)
	require.Equal(t, "@joiner1:joiner0.example", events[1].Sender)
	require.Equal(t, "@joiner3:joiner1.example", *events[3].StateKey)

	current, err := store.CurrentState(ctx, g.RoomID(), "joiner1.example")
	require.NoError(t, err)
	require.Equal(t, map[string]string{"@joiner3:joiner1.example": "join"}, current.Memberships)

	visibility, err := store.Visibility(ctx, g.RoomID(), "hs2.example", ids[:1])
	require.NoError(t, err)
	require.Len(t, visibility, 1)
	require.True(t, visibility[0].Known)
	require.Equal(t, "joined", visibility[0].Before.HistoryVisibility)
	require.Equal(t, map[string]string{"@bob:hs2.example": "join"}, visibility[0].Before.Memberships)
}

func TestJoinsSpreadOverServers(t *testing.T) {
	g, err := synthroom.New(synthroom.Options{JoinEvery: 10, JoinServers: 3})
	require.NoError(t, err)
	store, ids := load(t, g, 60)
	events, err := store.Events(context.Background(), g.RoomID(), ids)
	require.NoError(t, err)
	var servers []string
	for _, ev := range events {
		if ev.Type == "m.room.member" {
			servers = append(servers, (*ev.StateKey)[strings.IndexByte(*ev.StateKey, ':')+1:])
		}
	}
	require.Equal(t, []string{"joiner0.example", "joiner1.example", "joiner2.example",
		"joiner0.example", "joiner1.example", "joiner2.example"}, servers)
}

func TestStateChanges(t *testing.T) {
	g, err := synthroom.New(synthroom.Options{
		HistoryVisibility: "joined",
		Members:           []string{"@bob:hs2.example"},
		StateEvery:        2,
	})
	require.NoError(t, err)
	store, ids := load(t, g, 6)
	ctx := context.Background()
	events, err := store.Events(ctx, g.RoomID(), ids)
	require.NoError(t, err)
	require.Equal(t, []string{"m.room.message", "m.room.history_visibility", "m.room.message",
		"m.room.history_visibility", "m.room.message", "m.room.server_acl"},
		[]string{events[0].Type, events[1].Type, events[2].Type, events[3].Type, events[4].Type, events[5].Type})

	visibility, err := store.Visibility(ctx, g.RoomID(), "hs2.example", ids)
	require.NoError(t, err)
	require.Equal(t, "shared", visibility[1].After.HistoryVisibility)
	require.Equal(t, "joined", visibility[3].After.HistoryVisibility)

	current, err := store.CurrentState(ctx, g.RoomID(), "hs2.example")
	require.NoError(t, err)
	require.JSONEq(t, `{"allow":["*"],"deny":[],"allow_ip_literals":true}`, string(current.ServerACL))
}
