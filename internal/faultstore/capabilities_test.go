package faultstore_test

import (
	"context"
	"math"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/faultstore"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/fedhistory/fedhistory/storetest"
)

// The capabilities of a memstore, one at a time, to put together stores
// that have some of them.
type (
	stateOf     struct{ m *memstore.Store }
	lookupOf    struct{ m *memstore.Store }
	timestampOf struct{ m *memstore.Store }
)

func (c stateOf) StateBefore(ctx context.Context, roomID, eventID string) ([]string, error) {
	return c.m.StateBefore(ctx, roomID, eventID)
}

func (c stateOf) AuthChain(ctx context.Context, roomID string, eventIDs []string) ([]string, error) {
	return c.m.AuthChain(ctx, roomID, eventIDs)
}

func (c lookupOf) EventByID(ctx context.Context, eventID string) (*fedhistory.Event, error) {
	return c.m.EventByID(ctx, eventID)
}

func (c timestampOf) EventAtTimestamp(ctx context.Context, roomID string, ts int64, dir fedhistory.Direction) (*fedhistory.Event, error) {
	return c.m.EventAtTimestamp(ctx, roomID, ts, dir)
}

// capabilities reports which of the three optional read capabilities store
// implements.
func capabilities(store any) (state, lookup, timestamps bool) {
	_, state = store.(fedhistory.StateStore)
	_, lookup = store.(fedhistory.EventLookupStore)
	_, timestamps = store.(fedhistory.TimestampStore)
	return state, lookup, timestamps
}

// TestCapabilitiesFollowTheWrappedStore: the wrapper offers a capability
// exactly when the wrapped store does, since the handler serves a route
// only for a store that has its capability.
func TestCapabilitiesFollowTheWrappedStore(t *testing.T) {
	m := loadMemstore(t)
	bare := bareStore{m}
	tests := []struct {
		name  string
		inner fedhistory.EventStore
	}{
		{"none", bare},
		{"StateStore", struct {
			bareStore
			stateOf
		}{bare, stateOf{m}}},
		{"EventLookupStore", struct {
			bareStore
			lookupOf
		}{bare, lookupOf{m}}},
		{"TimestampStore", struct {
			bareStore
			timestampOf
		}{bare, timestampOf{m}}},
		{"StateStore and TimestampStore", struct {
			bareStore
			stateOf
			timestampOf
		}{bare, stateOf{m}, timestampOf{m}}},
		{"EventLookupStore and TimestampStore", struct {
			bareStore
			lookupOf
			timestampOf
		}{bare, lookupOf{m}, timestampOf{m}}},
		{"StateStore and EventLookupStore", struct {
			bareStore
			stateOf
			lookupOf
		}{bare, stateOf{m}, lookupOf{m}}},
		{"all three (memstore)", m},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			state, lookup, timestamps := capabilities(tc.inner)
			wrapped := faultstore.Wrap(tc.inner, faultstore.Faults{})
			gotState, gotLookup, gotTimestamps := capabilities(wrapped)
			require.Equal(t, []bool{state, lookup, timestamps}, []bool{gotState, gotLookup, gotTimestamps})
			room, ids := reference(t)
			for method, err := range everyMethod(context.Background(), wrapped, room.ID, ids) {
				require.NoError(t, err, method)
			}
		})
	}
}

// requireMoreFlags checks that got, a garbled copy of want, is flagged
// rejected, an outlier or redacted where want is not, and lost no flag.
func requireMoreFlags(t *testing.T, want, got *fedhistory.Event) {
	t.Helper()
	require.NotNil(t, want, "%s is an event of the room", got.ID)
	require.True(t, (got.Rejected && !want.Rejected) || (got.Outlier && !want.Outlier) || (got.Redacted && !want.Redacted),
		"%s gained a flag", got.ID)
	require.True(t, got.Rejected || !want.Rejected, "%s keeps Rejected", got.ID)
	require.True(t, got.Outlier || !want.Outlier, "%s keeps Outlier", got.ID)
	require.True(t, got.Redacted || !want.Redacted, "%s keeps Redacted", got.ID)
}

// TestCapabilityGarbage checks each kind of garbage in the answers of the
// capabilities, every answer picked.
func TestCapabilityGarbage(t *testing.T) {
	ctx := context.Background()
	inner := loadMemstore(t)
	rooms := storetest.Rooms()
	room, other := rooms[0], rooms[1]
	last := room.Events[len(room.Events)-1].ID
	state, err := inner.StateBefore(ctx, room.ID, last)
	require.NoError(t, err)
	chain, err := inner.AuthChain(ctx, room.ID, []string{last})
	require.NoError(t, err)
	genuine, err := inner.EventByID(ctx, last)
	require.NoError(t, err)
	otherIDs := map[string]bool{}
	for _, ev := range other.Events {
		otherIDs[ev.ID] = true
	}

	// answers asks every capability, after an Events call of another room
	// that gives the wrapper IDs of that room to hand out.
	answers := func(t *testing.T, garbage faultstore.Garbage) (stateIDs, chainIDs []string, byID, atTime *fedhistory.Event) {
		t.Helper()
		store := faultstore.Wrap(inner, faultstore.Faults{Garbage: garbage, Seed: 9})
		_, err := store.Events(ctx, other.ID, []string{other.Events[0].ID})
		require.NoError(t, err)
		stateIDs, err = store.(fedhistory.StateStore).StateBefore(ctx, room.ID, last)
		require.NoError(t, err)
		chainIDs, err = store.(fedhistory.StateStore).AuthChain(ctx, room.ID, []string{last})
		require.NoError(t, err)
		byID, err = store.(fedhistory.EventLookupStore).EventByID(ctx, last)
		require.NoError(t, err)
		atTime, err = store.(fedhistory.TimestampStore).EventAtTimestamp(ctx, room.ID, math.MaxInt64, fedhistory.Backward)
		require.NoError(t, err)
		return stateIDs, chainIDs, byID, atTime
	}

	t.Run("ForeignRoomEvents", func(t *testing.T) {
		stateIDs, chainIDs, byID, atTime := answers(t, faultstore.ForeignRoomEvents)
		for _, got := range []struct {
			ids, genuine []string
		}{{stateIDs, state}, {chainIDs, chain}} {
			require.Len(t, got.ids, 2*len(got.genuine), "every ID, and another room's for each")
			require.Equal(t, got.genuine, got.ids[:len(got.genuine)])
			for _, id := range got.ids[len(got.genuine):] {
				require.True(t, otherIDs[id], "%s is an ID the wrapped store holds in another room", id)
			}
		}
		require.Equal(t, faultstore.ForeignRoomID, byID.RoomID)
		require.Equal(t, last, byID.ID)
		require.Equal(t, faultstore.ForeignRoomID, atTime.RoomID)
	})
	t.Run("DuplicateIDs", func(t *testing.T) {
		stateIDs, chainIDs, _, _ := answers(t, faultstore.DuplicateIDs)
		require.Equal(t, slices.Concat(state, state), stateIDs)
		require.Equal(t, slices.Concat(chain, chain), chainIDs)
	})
	t.Run("MissingFields", func(t *testing.T) {
		stateIDs, chainIDs, byID, atTime := answers(t, faultstore.MissingFields)
		require.Equal(t, make([]string, len(state)), stateIDs, "every ID emptied")
		require.Equal(t, make([]string, len(chain)), chainIDs)
		require.NotEqual(t, *genuine, *byID, "a field of the event is missing")
		require.NotNil(t, atTime)
	})
	t.Run("WrongFlags", func(t *testing.T) {
		_, _, byID, atTime := answers(t, faultstore.WrongFlags)
		requireMoreFlags(t, genuine, byID)
		latest, err := inner.EventByID(ctx, atTime.ID)
		require.NoError(t, err)
		requireMoreFlags(t, latest, atTime)
	})
	t.Run("DepthOutOfRange", func(t *testing.T) {
		_, _, byID, atTime := answers(t, faultstore.DepthOutOfRange)
		for _, ev := range []*fedhistory.Event{byID, atTime} {
			require.Contains(t, []int64{faultstore.OutOfRangeDepth, -faultstore.OutOfRangeDepth}, ev.Depth)
		}
	})
	t.Run("the wrapped store's answers are untouched", func(t *testing.T) {
		answers(t, faultstore.AllGarbage)
		again, err := inner.EventByID(ctx, last)
		require.NoError(t, err)
		require.Equal(t, *genuine, *again)
		stateAgain, err := inner.StateBefore(ctx, room.ID, last)
		require.NoError(t, err)
		require.Equal(t, state, stateAgain)
	})
}

// TestForeignIDsWithoutAnotherRoom: with no other room answered yet, the
// foreign IDs are of ForeignRoomID's server.
func TestForeignIDsWithoutAnotherRoom(t *testing.T) {
	room, ids := reference(t)
	store := faultstore.Wrap(loadMemstore(t), faultstore.Faults{Garbage: faultstore.ForeignRoomEvents})
	chain, err := store.(fedhistory.StateStore).AuthChain(context.Background(), room.ID, ids)
	require.NoError(t, err)
	foreign := 0
	for _, id := range chain {
		if !slices.Contains(ids, id) {
			require.Contains(t, id, ":faultstore.invalid")
			foreign++
		}
	}
	require.Positive(t, foreign)
}
