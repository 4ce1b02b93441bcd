package fedhistory

import (
	"context"

	"github.com/fedhistory/fedhistory/dag"
)

// WalkBackfillForBenchmark runs the handler's backfill walk, the store's
// own when it is a BackfillWalker, else dag.Backfill over the handler's
// fetch adapter, so that the benchmarks in package fedhistory_test (which
// may import memstore; this package may not) measure the real path.
func WalkBackfillForBenchmark(ctx context.Context, store EventStore, roomID string, from []string, limit int) ([]*Event, error) {
	result, err := WalkBackfill(ctx, store, dag.BackfillRequest{RoomID: roomID, From: from, Limit: limit})
	return result.Events, err
}

// StateBatchForTest is how many events /state reads at a time.
const StateBatchForTest = stateBatch
