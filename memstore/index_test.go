package memstore

import (
	"hash/maphash"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/storetest"
)

// len returns the number of records held.
func (x *eventIndex) len() int { return len(x.byHash) + len(x.collided) }

// at returns the record of id, or nil: for tests that know it is there.
func (x *eventIndex) at(id string) *record {
	rec, _ := x.get(id)
	return rec
}

func TestEventIndex(t *testing.T) {
	hashes := []struct {
		name string
		hash func(maphash.Seed, string) uint64
	}{
		{"maphash", maphash.String},
		// Every ID collides: the overflow map must hold all but the first.
		{"every ID collides", func(maphash.Seed, string) uint64 { return 42 }},
		// Two buckets: some IDs collide, some do not.
		{"half collide", func(_ maphash.Seed, id string) uint64 { return uint64(len(id) % 2) }},
	}
	for _, tc := range hashes {
		t.Run(tc.name, func(t *testing.T) {
			x := newEventIndex()
			x.hash = tc.hash
			var ids []string
			for i := range 50 {
				id := "$event" + strconv.Itoa(i)
				ids = append(ids, id)
				x.put(&record{Event: fedhistory.Event{ID: id}})
			}
			require.Equal(t, len(ids), x.len())
			for _, id := range ids {
				rec, ok := x.get(id)
				require.True(t, ok, "%s not found", id)
				require.Equal(t, id, rec.ID)
			}
			for _, id := range []string{"$unknown", "", "$event50"} {
				_, ok := x.get(id)
				require.False(t, ok, "%q found", id)
			}
		})
	}
}

// TestConformanceWhenIDsCollide runs the conformance suite on a store whose
// index hashes every ID into one of two slots (by the parity of its length), so that almost every lookup
// goes through the collision path.
func TestConformanceWhenIDsCollide(t *testing.T) {
	storetest.Run(t, func(t *testing.T) fedhistory.EventStore {
		store := New()
		store.events.hash = func(_ maphash.Seed, id string) uint64 { return uint64(len(id) % 2) }
		err := storetest.Load(func(version string, pdu []byte, opts fedhistory.AddOptions) error {
			_, err := store.Add(version, pdu, opts)
			return err
		}, func(userID string) error {
			store.EraseUser(userID)
			return nil
		})
		require.NoError(t, err)
		return store
	})
}
