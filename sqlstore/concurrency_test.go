package sqlstore

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/stretchr/testify/require"
)

// TestConcurrentWritersAndReaders adds rooms from several goroutines, through
// two Stores on one database (two processes, as far as the database can
// tell), while other goroutines read; then every room must read as in
// memstore. Run it with -race.
func TestConcurrentWritersAndReaders(t *testing.T) {
	var rooms []*roomgen.Room
	for i, version := range []string{"3", "10", "11", "12"} {
		room, err := roomgen.Generate(roomgen.Options{
			Version: version, Events: 80, ForkEvery: 7, Seed: int64(300 + i),
			ServerName: fmt.Sprintf("writer%d.example", i), HistoryVisibilityChanges: true, RejectedEvery: 9, MessageBytes: 200,
		})
		require.NoError(t, err)
		rooms = append(rooms, room)
	}
	for _, d := range dialects {
		t.Run(d, func(t *testing.T) {
			dsn := testDSN(t, d)
			ctx := context.Background()
			var stores []*Store
			for range 2 {
				s, err := Open(ctx, dsn, Options{Migrate: true})
				require.NoError(t, err)
				t.Cleanup(func() { s.Close() })
				stores = append(stores, s)
			}

			var wg sync.WaitGroup
			errs := make(chan error, len(rooms)*2)
			for i, room := range rooms {
				s := stores[i%len(stores)]
				wg.Go(func() {
					for _, ev := range room.Events {
						if _, err := s.Add(ctx, room.Version, ev.JSON, fedhistory.AddOptions{Rejected: ev.Rejected, Outlier: ev.Outlier}); err != nil {
							errs <- err
							return
						}
					}
				})
				wg.Go(func() {
					// Reads race the writes: any answer is fine, an error is not.
					for range 20 {
						latest := room.Events[len(room.Events)-1].ID
						if _, err := walkBackfill(ctx, s, room.ID, []string{latest}, 10); err != nil {
							errs <- err
							return
						}
						if _, err := s.Visibility(ctx, room.ID, "hs2.example", []string{latest}); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				require.NoError(t, err)
			}
			mem := memstore.New()
			for _, room := range rooms {
				for _, ev := range room.Events {
					_, err := mem.Add(room.Version, ev.JSON, fedhistory.AddOptions{Rejected: ev.Rejected, Outlier: ev.Outlier})
					require.NoError(t, err)
				}
			}
			for _, room := range rooms {
				requireSameAsMemstore(t, stores[0], mem, room)
			}
		})
	}
}
