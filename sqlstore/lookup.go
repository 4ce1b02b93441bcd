package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/fedhistory/fedhistory"
)

// lookupColumns are the columns of events that make a fedhistory.Event, in
// the order scanLookedUp reads them.
const lookupColumns = `e.event_id, e.room_id, e.depth, e.origin_server_ts, e.prev_events, e.event_type, e.state_key,
	e.sender, e.redacts, e.rejected, e.outlier, e.redacted, e.json`

// scanLookedUp reads one row of lookupColumns into a fresh Event, or
// returns nil when the row's columns are NULL (the LEFT JOIN of
// EventAtTimestamp found no event).
func scanLookedUp(row interface{ Scan(...any) error }) (*fedhistory.Event, error) {
	var (
		id, roomID, prevs, eventType, stateKey, sender, redacts sql.NullString
		depth, ts                                               sql.NullInt64
		rejected, outlier, redacted                             sql.NullBool
		data                                                    []byte
	)
	if err := row.Scan(&id, &roomID, &depth, &ts, &prevs, &eventType, &stateKey,
		&sender, &redacts, &rejected, &outlier, &redacted, &data); err != nil {
		return nil, err
	}
	if !id.Valid {
		return nil, nil
	}
	ev := &fedhistory.Event{
		ID: id.String, RoomID: roomID.String, Depth: depth.Int64, OriginServerTS: ts.Int64,
		Type: eventType.String, Sender: sender.String, Redacts: redacts.String,
		Rejected: rejected.Bool, Outlier: outlier.Bool, Redacted: redacted.Bool,
		JSON: data,
	}
	var err error
	if ev.PrevEvents, err = decodeIDList([]byte(prevs.String)); err != nil {
		return nil, fmt.Errorf("event %s: prev_events: %w", ev.ID, err)
	}
	if stateKey.Valid {
		ev.StateKey = &stateKey.String
	}
	return ev, nil
}

// eventByIDQuery reads the event $1 (event_id is unique).
const eventByIDQuery = `SELECT ` + lookupColumns + ` FROM events e WHERE e.event_id = $1`

// EventByID returns the event eventID, whatever its room, outliers and
// rejected events included (their flags say so), or an error wrapping
// fedhistory.ErrEventNotFound. One statement: event_id is unique.
func (s *Store) EventByID(ctx context.Context, eventID string) (*fedhistory.Event, error) {
	if !s.storable(eventID) {
		return nil, fmt.Errorf("sqlstore: event %q: %w", eventID, fedhistory.ErrEventNotFound)
	}
	ev, err := scanLookedUp(s.queryRow(ctx, s.db, eventByIDQuery, eventID))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return nil, fmt.Errorf("sqlstore: event %q: %w", eventID, fedhistory.ErrEventNotFound)
	case err != nil:
		return nil, fmt.Errorf("sqlstore: reading event %s: %w", eventID, err)
	}
	return ev, nil
}

// The statements of EventAtTimestamp, one per direction. The room's row
// comes first, so that an unknown room (no row) and a room without such an
// event (a row of NULLs from the LEFT JOIN) are told apart in the same
// statement. The subquery is one descent of the index events_room_timestamp
// (room_id, origin_server_ts, depth, event_id): the first row in its order
// from ts on, skipping rejected events and outliers. Event IDs are compared
// as byte strings, as the contract says: SQLite's default collation (BINARY)
// does that; on PostgreSQL the column's collation is the database's, which
// may be a language's, hence COLLATE "C" (the index still orders the
// columns before it, and ties on (ts, depth) are rare and few).
const (
	atOrBeforeQuery = `
SELECT ` + lookupColumns + `
FROM rooms r LEFT JOIN events e ON e.event_id = (
	SELECT x.event_id FROM events x
	WHERE x.room_id = $1 AND x.origin_server_ts <= $2 AND NOT x.rejected AND NOT x.outlier
	ORDER BY x.origin_server_ts DESC, x.depth DESC, x.event_id BYTEWISE DESC
	LIMIT 1)
WHERE r.room_id = $1`
	atOrAfterQuery = `
SELECT ` + lookupColumns + `
FROM rooms r LEFT JOIN events e ON e.event_id = (
	SELECT x.event_id FROM events x
	WHERE x.room_id = $1 AND x.origin_server_ts >= $2 AND NOT x.rejected AND NOT x.outlier
	ORDER BY x.origin_server_ts, x.depth, x.event_id BYTEWISE
	LIMIT 1)
WHERE r.room_id = $1`
)

// timestampQueries are EventAtTimestamp's statements for each dialect,
// BYTEWISE expanded once.
var timestampQueries = [2]struct{ atOrBefore, atOrAfter string }{
	sqlite:   {sqlite.bytewise(atOrBeforeQuery), sqlite.bytewise(atOrAfterQuery)},
	postgres: {postgres.bytewise(atOrBeforeQuery), postgres.bytewise(atOrAfterQuery)},
}

// EventAtTimestamp returns, among the events of roomID that are neither
// rejected nor outliers, the greatest by (OriginServerTS, Depth, ID) with
// OriginServerTS <= ts (Backward), or the least with OriginServerTS >= ts
// (Forward), IDs compared as byte strings, in one statement that descends
// the index on (room_id, origin_server_ts, depth, event_id) once. It fails
// with an error wrapping fedhistory.ErrEventNotFound when there is none,
// and fedhistory.ErrRoomNotFound for a room the store does not hold.
func (s *Store) EventAtTimestamp(ctx context.Context, roomID string, ts int64, dir fedhistory.Direction) (*fedhistory.Event, error) {
	var query string
	switch dir {
	case fedhistory.Backward:
		query = timestampQueries[s.dialect].atOrBefore
	case fedhistory.Forward:
		query = timestampQueries[s.dialect].atOrAfter
	default:
		return nil, fmt.Errorf("sqlstore: direction %q is neither %q nor %q", dir, fedhistory.Forward, fedhistory.Backward)
	}
	if !s.storable(roomID) {
		return nil, fmt.Errorf("sqlstore: room %q: %w", roomID, fedhistory.ErrRoomNotFound)
	}
	rows, err := s.query(ctx, s.db, query, roomID, ts)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: finding the event of %s at %d: %w", roomID, ts, err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("sqlstore: finding the event of %s at %d: %w", roomID, ts, err)
		}
		return nil, fmt.Errorf("sqlstore: room %q: %w", roomID, fedhistory.ErrRoomNotFound)
	}
	ev, err := scanLookedUp(rows)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: finding the event of %s at %d: %w", roomID, ts, err)
	}
	if ev == nil {
		return nil, fmt.Errorf("sqlstore: no event of %s at %d in direction %c: %w", roomID, ts, dir, fedhistory.ErrEventNotFound)
	}
	return ev, rows.Close()
}

// bytewise expands the BYTEWISE macro of a query, the collation that
// compares text as byte strings: PostgreSQL's "C"; nothing on SQLite, whose
// default collation, BINARY, already does.
func (d dialect) bytewise(query string) string {
	if d == postgres {
		return strings.ReplaceAll(query, "BYTEWISE", `COLLATE "C"`)
	}
	return strings.ReplaceAll(query, " BYTEWISE", "")
}
