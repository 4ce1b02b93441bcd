package sqlstore

import (
	"context"
	"fmt"
	"testing"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/pdu"
	"github.com/fedhistory/fedhistory/storetest"
	"github.com/stretchr/testify/require"
)

// TestConformance runs the storetest suite on both dialects, the reference
// rooms loaded through Add and EraseUser.
func TestConformance(t *testing.T) {
	for _, d := range dialects {
		t.Run(d, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) fedhistory.EventStore {
				s := openTestStore(t, d)
				ctx := context.Background()
				err := storetest.Load(func(version string, pdu []byte, opts fedhistory.AddOptions) error {
					_, err := s.Add(ctx, version, pdu, opts)
					return err
				}, func(userID string) error { return s.EraseUser(ctx, userID) })
				require.NoError(t, err)
				return s
			})
		})
	}
}

// TestConformanceAddBatch runs the storetest suite on both dialects with all
// the reference rooms loaded in one AddBatch, worked out in chunks of a few
// events (so that chunk boundaries fall between every kind of pair: a
// redaction and its target, a fork and its merge, an event and its state
// given by StateBefore) and in one chunk; the former with every event's ID
// given (Pending.EventID), as fedhistory import gives them, and through
// AddSeq, keeping nothing of the state from one chunk to the next (as a long
// sequence does past its bounds).
func TestConformanceAddBatch(t *testing.T) {
	for _, d := range dialects {
		for _, chunk := range []int{7, addChunkEvents} {
			t.Run(fmt.Sprintf("%s/chunk=%d", d, chunk), func(t *testing.T) {
				storetest.Run(t, func(t *testing.T) fedhistory.EventStore {
					s := openTestStore(t, d)
					s.addChunk = chunk
					if chunk != addChunkEvents {
						s.maxHeldEntries, s.maxHeldAuthLinks = 0, 0
					}
					ctx := context.Background()
					var batch []Pending
					var erased []string
					err := storetest.Load(func(version string, data []byte, opts fedhistory.AddOptions) error {
						p := Pending{RoomVersion: version, PDU: data, Options: opts}
						if chunk != addChunkEvents {
							parsed, err := pdu.Parse(version, data)
							require.NoError(t, err)
							p.EventID = parsed.Event.ID
						}
						batch = append(batch, p)
						return nil
					}, func(userID string) error {
						erased = append(erased, userID)
						return nil
					})
					require.NoError(t, err)
					if chunk != addChunkEvents {
						require.NoError(t, s.AddSeq(ctx, pendingSeq(batch)))
					} else {
						require.NoError(t, s.AddBatch(ctx, batch))
					}
					for _, user := range erased {
						require.NoError(t, s.EraseUser(ctx, user))
					}
					return s
				})
			})
		}
	}
}
