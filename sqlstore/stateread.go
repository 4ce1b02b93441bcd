package sqlstore

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/fedhistory/fedhistory"
)

// stateBeforeQuery reads an event's row (kind 0) and the entries of the
// groups along its before-state's delta chain (kind 1), the latter only when
// that state is known and servable. CROSS JOIN makes SQLite read the chain
// first and search the entries by group (their primary key's prefix):
// without statistics its planner would rather scan every entry of every
// group and probe the chain (PostgreSQL plans it either way by its
// statistics; to it CROSS JOIN with a WHERE is a plain join).
const stateBeforeQuery = `
WITH RECURSIVE target AS (
	SELECT rejected, outlier, state_known, before_group FROM events WHERE room_id = $1 AND event_id = $2
), chain (group_id, dist) AS (
	SELECT before_group, 0 FROM target
	WHERE before_group IS NOT NULL AND state_known AND NOT rejected AND NOT outlier
	UNION ALL
	SELECT g.parent_id, c.dist + 1
	FROM chain c JOIN state_groups g ON g.group_id = c.group_id
	WHERE g.parent_id IS NOT NULL
)
SELECT 0, rejected, outlier, state_known, 0, NULL, NULL, NULL FROM target
UNION ALL
SELECT 1, FALSE, FALSE, FALSE, c.dist, e.event_type, e.state_key, e.event_id
FROM chain c CROSS JOIN state_group_entries e
WHERE e.group_id = c.group_id`

// StateBefore returns the IDs of the events of roomID's state just before
// eventID, one per (type, state_key): the state group the store recorded as
// the event's before-state when it was added, read in one statement (the
// event's row, and the entries along its group's delta chain). It fails
// with an error wrapping fedhistory.ErrEventNotFound when the store holds
// no event eventID in roomID, or holds it rejected or as an outlier, and
// with fedhistory.ErrStateUnknown when the state before it is unknown.
func (s *Store) StateBefore(ctx context.Context, roomID, eventID string) ([]string, error) {
	if !s.storable(roomID) || !s.storable(eventID) {
		return nil, fmt.Errorf("sqlstore: no event %q in room %q: %w", eventID, roomID, fedhistory.ErrEventNotFound)
	}
	rows, err := s.query(ctx, s.db, stateBeforeQuery, roomID, eventID)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: reading the state before %s: %w", eventID, err)
	}
	var (
		found, rejected, outlier, known bool
		entries                         []groupEntry
	)
	err = func() error {
		defer rows.Close()
		for rows.Next() {
			var (
				kind                                int
				rowRejected, rowOutlier, rowKnown   bool
				dist                                int
				eventType, stateKeyText, entryEvent sql.NullString
			)
			if err := rows.Scan(&kind, &rowRejected, &rowOutlier, &rowKnown, &dist, &eventType, &stateKeyText, &entryEvent); err != nil {
				return err
			}
			if kind == 0 {
				found, rejected, outlier, known = true, rowRejected, rowOutlier, rowKnown
				continue
			}
			entries = append(entries, groupEntry{
				dist:    dist,
				key:     stateKey{eventType: eventType.String, stateKey: stateKeyText.String},
				eventID: entryEvent.String, removed: !entryEvent.Valid,
			})
		}
		return rows.Err()
	}()
	if err != nil {
		return nil, fmt.Errorf("sqlstore: reading the state before %s: %w", eventID, err)
	}
	switch {
	case !found:
		return nil, fmt.Errorf("sqlstore: no event %q in room %q: %w", eventID, roomID, fedhistory.ErrEventNotFound)
	case rejected:
		return nil, fmt.Errorf("sqlstore: event %s is rejected: %w", eventID, fedhistory.ErrEventNotFound)
	case outlier:
		return nil, fmt.Errorf("sqlstore: event %s is an outlier: %w", eventID, fedhistory.ErrEventNotFound)
	case !known:
		return nil, fmt.Errorf("sqlstore: state before %s: %w", eventID, fedhistory.ErrStateUnknown)
	}
	nearest := nearestEntries(entries)
	ids := make([]string, 0, len(nearest))
	for _, e := range nearest {
		if !e.removed {
			ids = append(ids, e.eventID)
		}
	}
	return ids, nil
}

// authChainQuery walks auth_edges from the seeds $2 of room $1 (see
// AuthChain).
const authChainQuery = `
WITH RECURSIVE chain (event_id) AS (
	SELECT a.auth_event_id
	FROM events seed
	JOIN auth_edges a ON a.event_id = seed.event_id
	JOIN events auth ON auth.event_id = a.auth_event_id
	WHERE seed.room_id = $1 AND seed.event_id IN (IDS($2)) AND NOT seed.rejected AND NOT auth.rejected
	UNION
	SELECT a.auth_event_id
	FROM chain c
	JOIN auth_edges a ON a.event_id = c.event_id
	JOIN events auth ON auth.event_id = a.auth_event_id
	WHERE NOT auth.rejected
)
SELECT event_id FROM chain`

// AuthChain returns the IDs of the events reachable from eventIDs through
// one or more auth links, without duplicates, in one recursive statement
// over auth_edges. Add records there exactly the links the contract counts
// (an event's auth events held in its room when it was added, in room
// version 12 the create event among them), so the walk needs no room
// filter past the seeds. Rejected events are neither returned nor walked
// through, a rejected seed included; outliers are both. IDs the store does
// not hold in roomID contribute nothing, and a seed is in the answer only
// when the walk reaches it from another.
//
// UNION, not UNION ALL, makes the recursion terminate and visit each event
// once: both databases discard a row the recursion has already produced.
// Each step is an index lookup in auth_edges (its primary key starts with
// event_id) and one in events (event_id is unique), so the cost is bounded
// by the answer's size, not the room's history.
func (s *Store) AuthChain(ctx context.Context, roomID string, eventIDs []string) ([]string, error) {
	if len(eventIDs) == 0 || !s.storable(roomID) {
		return nil, nil
	}
	rows, err := s.query(ctx, s.db, authChainQuery, roomID, s.idList(eventIDs))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: reading the auth chain of %d events: %w", len(eventIDs), err)
	}
	defer rows.Close()
	var chain []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("sqlstore: reading an auth chain: %w", err)
		}
		chain = append(chain, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: reading an auth chain: %w", err)
	}
	return chain, nil
}
