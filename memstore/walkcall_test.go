package memstore

import (
	"context"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/dag"
)

// walkBackfill and walkMissingEvents call the store's walkers with the
// arguments the tests were written with.
func walkBackfill(ctx context.Context, s *Store, roomID string, from []string, limit int) ([]*fedhistory.Event, error) {
	result, err := s.WalkBackfill(ctx, dag.BackfillRequest{RoomID: roomID, From: from, Limit: limit})
	return result.Events, err
}

func walkMissingEvents(ctx context.Context, s *Store, roomID string, earliest, latest []string, limit int, minDepth int64) ([]*fedhistory.Event, error) {
	result, err := s.WalkMissingEvents(ctx, dag.MissingEventsRequest{RoomID: roomID, Earliest: earliest, Latest: latest, Limit: limit, MinDepth: minDepth})
	return result.Events, err
}
