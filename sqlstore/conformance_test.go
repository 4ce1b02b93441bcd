package sqlstore

import (
	"context"
	"testing"

	"github.com/fedhistory/fedhistory"
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
