package storetest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/fedhistory/fedhistory/storetest"
)

// loadMemstore returns a memstore holding the reference rooms.
func loadMemstore(t testing.TB) *memstore.Store {
	t.Helper()
	store := memstore.New()
	err := storetest.Load(func(version string, pdu []byte, opts fedhistory.AddOptions) error {
		_, err := store.Add(version, pdu, opts)
		return err
	}, func(userID string) error {
		store.EraseUser(userID)
		return nil
	})
	require.NoError(t, err)
	return store
}

func TestMemstore(t *testing.T) {
	storetest.Run(t, func(t *testing.T) fedhistory.EventStore { return loadMemstore(t) })
}

func TestRoomsAreDeterministicAndTheCallersToKeep(t *testing.T) {
	first := storetest.Rooms()
	require.NotEmpty(t, first)
	var versions []string
	for _, room := range first {
		versions = append(versions, room.Version)
	}
	require.Subset(t, versions, []string{"1", "10", "11", "12"})

	// Scribbling on one answer does not change the next.
	want := string(first[0].Events[0].JSON)
	first[0].Events[0].JSON[0] = 'X'
	first[0].Events[1] = first[0].Events[2]
	second := storetest.Rooms()
	require.Equal(t, want, string(second[0].Events[0].JSON))
	require.NotEqual(t, second[0].Events[1].ID, second[0].Events[2].ID)
}

func TestRoomsHaveEveryFeature(t *testing.T) {
	var rejected, outliers, stateBefore, emptyStateBefore, redactions, erased int
	ids := map[string]bool{}
	for _, room := range storetest.Rooms() {
		erased += len(room.ErasedUsers)
		for _, ev := range room.Events {
			ids[ev.ID] = true
			if ev.Rejected {
				rejected++
			}
			if ev.Outlier {
				outliers++
			}
			if ev.StateBefore != nil {
				stateBefore++
				// Every ID names an event added before, in the same room.
				for _, id := range ev.StateBefore {
					require.True(t, ids[id], "StateBefore of %s names %s, not added before", ev.ID, id)
				}
			}
			if ev.StateBefore != nil && len(ev.StateBefore) == 0 {
				emptyStateBefore++
			}
			var fields struct{ Type string }
			require.NoError(t, json.Unmarshal(ev.JSON, &fields))
			if fields.Type == "m.room.redaction" {
				redactions++
			}
		}
	}
	require.Positive(t, rejected, "rejected events")
	require.Positive(t, outliers, "outliers")
	require.Positive(t, stateBefore, "events with StateBefore")
	require.Zero(t, emptyStateBefore, "no event is given the empty state: it would be wrong for every one of them")
	require.Positive(t, redactions, "redactions")
	require.Positive(t, erased, "erased users")
}

// TestEventOptions: an event's options are what Load passes to add; the
// StateBefore handed out is the caller's to keep.
func TestEventOptions(t *testing.T) {
	ev := storetest.Event{ID: "$e", Rejected: true, StateBefore: []string{"$a", "$b"}}
	opts := ev.Options()
	require.Equal(t, fedhistory.AddOptions{Rejected: true, StateBefore: []string{"$a", "$b"}}, opts)
	opts.StateBefore[0] = "$x"
	require.Equal(t, "$a", ev.StateBefore[0])
	require.Nil(t, storetest.Event{ID: "$e"}.Options().StateBefore, "no StateBefore is nil, not the empty state")
}

func TestLoadStopsAtTheFirstError(t *testing.T) {
	adds := 0
	err := storetest.Load(func(string, []byte, fedhistory.AddOptions) error {
		adds++
		if adds == 3 {
			return fedhistory.ErrInvalidEvent
		}
		return nil
	}, nil)
	require.ErrorIs(t, err, fedhistory.ErrInvalidEvent)
	require.Equal(t, 3, adds)

	// erase may be nil; every room is then added without erasures.
	adds = 0
	require.NoError(t, storetest.Load(func(string, []byte, fedhistory.AddOptions) error { adds++; return nil }, nil))
	total := 0
	for _, room := range storetest.Rooms() {
		total += len(room.Events)
	}
	require.Equal(t, total, adds)
}

// Example loads the reference rooms into a memstore. A conformance test
// then hands the store to storetest.Run:
//
//	func TestMyStore(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) fedhistory.EventStore { return store })
//	}
func Example() {
	store := memstore.New()
	err := storetest.Load(func(version string, pdu []byte, opts fedhistory.AddOptions) error {
		_, err := store.Add(version, pdu, opts)
		return err
	}, func(userID string) error {
		store.EraseUser(userID)
		return nil
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, room := range storetest.Rooms() {
		version, err := store.RoomVersion(context.Background(), room.ID)
		fmt.Println(version, len(room.Events), "events", room.ErasedUsers, err)
	}
	// Output:
	// 10 29 events [@erin:hs3.example] <nil>
	// 11 28 events [@dave:hs3.example:8448] <nil>
	// 12 23 events [] <nil>
	// 1 20 events [] <nil>
	// 11 10 events [] <nil>
}
