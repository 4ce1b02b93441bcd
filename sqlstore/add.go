package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"

	"github.com/fedhistory/fedhistory/internal/eventcontent"
	"github.com/matrix-org/gomatrixserverlib"
)

// AddOptions qualify an event given to Store.Add; they mean what
// memstore.AddOptions mean.
type AddOptions struct {
	// Rejected marks an event that failed authorisation: it is kept in the
	// DAG (walks pass through it, its children inherit the state before it)
	// but it is never served and never becomes part of the room state.
	Rejected bool
	// Outlier marks an event whose state is not known (fetched as an auth
	// event, say): walks never enter it, it is never served, and Visibility
	// has no entry for it. An outlier state event is still available to
	// state resolution as an auth event of later events.
	Outlier bool
}

// Pending is one event for AddBatch: the arguments of one Add call.
type Pending struct {
	RoomVersion string
	PDU         []byte
	Options     AddOptions
}

// supportedRoomVersions are the stable versions of the spec. Versions built
// on pseudonymous sender IDs are refused: this store maps senders to servers
// by their user IDs.
var supportedRoomVersions = map[string]bool{
	"1": true, "2": true, "3": true, "4": true, "5": true, "6": true,
	"7": true, "8": true, "9": true, "10": true, "11": true, "12": true,
}

// Add adds one PDU and returns its event ID. It behaves exactly like
// memstore's Store.Add (read its documentation): events must come in
// topological order, unknown or outlier prev_events are gaps, the store
// trusts its input, and the first event of a room fixes its version.
// It fails with ErrDuplicateEvent, ErrRoomVersionMismatch,
// ErrUnsupportedRoomVersion or ErrInvalidEvent (wrapped) when memstore would.
func (s *Store) Add(ctx context.Context, roomVersion string, pdu []byte, opts AddOptions) (string, error) {
	ids, err := s.addBatch(ctx, []Pending{{RoomVersion: roomVersion, PDU: pdu, Options: opts}})
	if err != nil {
		return "", err
	}
	return ids[0], nil
}

// AddBatch adds events, in order, in one transaction: either all of them are
// stored or, on the first error, none. It is much faster than one Add per
// event for an import.
func (s *Store) AddBatch(ctx context.Context, events []Pending) error {
	_, err := s.addBatch(ctx, events)
	return err
}

func (s *Store) addBatch(ctx context.Context, events []Pending) ([]string, error) {
	if len(events) == 0 {
		return nil, nil
	}
	// Parse everything before taking any lock.
	parsed := make([]*newEvent, len(events))
	for i, p := range events {
		ev, err := parseNewEvent(p)
		if err != nil {
			return nil, err
		}
		parsed[i] = ev
	}

	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: beginning transaction: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if s.dialect == postgres {
		// Serialise writers per room, so that two processes adding to one
		// room cannot both compute its forward extremities from a state the
		// other is changing. Rooms are locked in sorted order so that two
		// batches never wait for each other in a cycle.
		var rooms []string
		for _, ev := range parsed {
			rooms = append(rooms, ev.roomID)
		}
		slices.Sort(rooms)
		for _, room := range slices.Compact(rooms) {
			if _, err := s.exec(ctx, tx, `SELECT pg_advisory_xact_lock($1, $2)`, roomLockClass, roomLockKey(room)); err != nil {
				return nil, fmt.Errorf("sqlstore: locking room %s: %w", room, err)
			}
		}
	}
	ids := make([]string, len(parsed))
	for i, ev := range parsed {
		if err := s.addInTx(ctx, tx, ev); err != nil {
			return nil, err
		}
		ids[i] = ev.id
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("sqlstore: committing %d events: %w", len(parsed), err)
	}
	return ids, nil
}

// roomLockClass is the first key of the per-room advisory locks
// ("fh" in ASCII), which keeps them apart from other applications' locks.
const roomLockClass int32 = 0x6668

func roomLockKey(roomID string) int32 {
	h := fnv.New32a()
	h.Write([]byte(roomID))
	return int32(h.Sum32())
}

// newEvent is a parsed PDU on its way into the database.
type newEvent struct {
	version           string
	verImpl           gomatrixserverlib.IRoomVersion
	pdu               gomatrixserverlib.PDU
	json              []byte
	id, roomID        string
	depth             int64
	prevs, auths      []string
	eventType, sender string
	stateKey          *string
	redacts           string
	membership        *string
	historyVisibility *string
	opts              AddOptions
}

func parseNewEvent(p Pending) (*newEvent, error) {
	if !supportedRoomVersions[p.RoomVersion] {
		return nil, fmt.Errorf("%w: %q", ErrUnsupportedRoomVersion, p.RoomVersion)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(p.RoomVersion))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupportedRoomVersion, err)
	}
	data := bytes.Clone(p.PDU)
	pdu, err := parsePDU(verImpl, data)
	if err != nil {
		return nil, err
	}
	ev := &newEvent{
		version:   p.RoomVersion,
		verImpl:   verImpl,
		pdu:       pdu,
		json:      data,
		id:        pdu.EventID(),
		roomID:    pdu.RoomID().String(),
		depth:     pdu.Depth(),
		prevs:     slices.Clone(pdu.PrevEventIDs()),
		auths:     slices.Clone(pdu.AuthEventIDs()),
		eventType: pdu.Type(),
		sender:    string(pdu.SenderID()),
		stateKey:  pdu.StateKey(),
		opts:      p.Options,
	}
	if ev.eventType == "m.room.redaction" {
		// Room version 11 moved the target into content.redacts, and 12
		// builds on 11 (spec: rooms/v11).
		if p.RoomVersion == "11" || p.RoomVersion == "12" {
			ev.redacts = eventcontent.String(pdu.Content(), "redacts")
		} else {
			ev.redacts = pdu.Redacts()
		}
	}
	if ev.stateKey != nil {
		switch {
		case ev.eventType == typeMember:
			m := eventcontent.String(pdu.Content(), "membership")
			ev.membership = &m
		case ev.eventType == typeHistoryVisibility && *ev.stateKey == "":
			hv := eventcontent.String(pdu.Content(), "history_visibility")
			ev.historyVisibility = &hv
		}
	}
	return ev, nil
}

// parsePDU parses data, which it keeps (the PDU refers to it).
func parsePDU(verImpl gomatrixserverlib.IRoomVersion, data []byte) (pdu gomatrixserverlib.PDU, err error) {
	// gomatrixserverlib panics on some malformed input (an unparsable room
	// ID, an event it cannot hash); an event store must answer with an error.
	defer func() {
		if r := recover(); r != nil {
			pdu, err = nil, fmt.Errorf("%w: %v", ErrInvalidEvent, r)
		}
	}()
	pdu, err = verImpl.NewEventFromTrustedJSON(data, false)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidEvent, err)
	}
	if pdu.EventID() == "" {
		return nil, fmt.Errorf("%w: no event_id", ErrInvalidEvent)
	}
	// For room version 12, gomatrixserverlib derives the create event's room
	// ID from its event ID; the event itself has no room_id. RoomID panics
	// on an unparsable room ID, hence its call under the recover.
	_ = pdu.RoomID().String()
	return pdu, nil
}

// checkStorable refuses, with ErrInvalidEvent, an event whose metadata the
// database cannot hold (see Store.storable): on PostgreSQL, strings with NUL
// characters. (memstore, which holds any Go string, accepts such events.)
func (s *Store) checkStorable(ev *newEvent) error {
	fields := []string{ev.id, ev.roomID, ev.eventType, ev.sender, ev.redacts}
	fields = append(append(fields, ev.prevs...), ev.auths...)
	for _, p := range []*string{ev.stateKey, ev.membership, ev.historyVisibility} {
		if p != nil {
			fields = append(fields, *p)
		}
	}
	for _, f := range fields {
		if !s.storable(f) {
			return fmt.Errorf("%w: %s holds a string %s cannot store: %q", ErrInvalidEvent, ev.id, s.dialect, f)
		}
	}
	return nil
}

// knownEvent is what addInTx needs to know of an event already stored.
type knownEvent struct {
	roomID     string
	isState    bool
	outlier    bool
	afterGroup int64 // 0: the empty state
}

func (s *Store) addInTx(ctx context.Context, tx *sql.Tx, ev *newEvent) error {
	if err := s.checkStorable(ev); err != nil {
		return err
	}
	// One query for the event itself (a duplicate?), its prev_events and its
	// auth_events.
	lookup := append(append([]string{ev.id}, ev.prevs...), ev.auths...)
	known, err := s.knownEvents(ctx, tx, lookup)
	if err != nil {
		return err
	}
	if _, dup := known[ev.id]; dup {
		return fmt.Errorf("%w: %s", ErrDuplicateEvent, ev.id)
	}
	var roomVersion string
	err = s.queryRow(ctx, tx, `SELECT room_version FROM rooms WHERE room_id = $1`, ev.roomID).Scan(&roomVersion)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := s.exec(ctx, tx, `INSERT INTO rooms (room_id, room_version) VALUES ($1, $2)`, ev.roomID, ev.version); err != nil {
			return fmt.Errorf("sqlstore: creating room %s: %w", ev.roomID, err)
		}
	case err != nil:
		return fmt.Errorf("sqlstore: reading room %s: %w", ev.roomID, err)
	case roomVersion != ev.version:
		return fmt.Errorf("%w: event %s is version %s, room %s is version %s",
			ErrRoomVersionMismatch, ev.id, ev.version, ev.roomID, roomVersion)
	}

	var beforeGroup, afterGroup sql.NullInt64
	if !ev.opts.Outlier {
		// The state before the event: the distinct after-states of its known,
		// non-outlier prev_events in the room, resolved if there are several.
		var groups []int64
		for _, id := range ev.prevs {
			prev, ok := known[id]
			if !ok || prev.roomID != ev.roomID || prev.outlier {
				continue
			}
			if !slices.Contains(groups, prev.afterGroup) {
				groups = append(groups, prev.afterGroup)
			}
		}
		var before int64
		switch len(groups) {
		case 0:
		case 1:
			before = groups[0]
		default:
			if before, err = s.resolveGroups(ctx, tx, gomatrixserverlib.RoomVersion(ev.version), ev.roomID, groups); err != nil {
				return fmt.Errorf("sqlstore: state before %s: %w", ev.id, err)
			}
		}
		after := before
		if ev.stateKey != nil && !ev.opts.Rejected {
			id := ev.id
			delta := map[stateKey]*string{{eventType: ev.eventType, stateKey: *ev.stateKey}: &id}
			if after, err = s.newGroup(ctx, tx, ev.roomID, before, delta); err != nil {
				return fmt.Errorf("sqlstore: state after %s: %w", ev.id, err)
			}
		}
		beforeGroup = sql.NullInt64{Int64: before, Valid: before != 0}
		afterGroup = sql.NullInt64{Int64: after, Valid: after != 0}
	}

	_, err = s.exec(ctx, tx, `
INSERT INTO events (event_id, room_id, depth, prev_events, event_type, state_key, sender, redacts,
	rejected, outlier, membership, history_visibility, before_group, after_group, json)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`,
		ev.id, ev.roomID, ev.depth, jsonList(ev.prevs), ev.eventType, ev.stateKey, ev.sender, ev.redacts,
		ev.opts.Rejected, ev.opts.Outlier, ev.membership, ev.historyVisibility, beforeGroup, afterGroup, ev.json)
	if err != nil {
		if isUniqueViolation(err) {
			// Another process added the same event ID (in another room: the
			// room lock serialises adds to one room) after our check.
			return fmt.Errorf("%w: %s", ErrDuplicateEvent, ev.id)
		}
		return fmt.Errorf("sqlstore: inserting %s: %w", ev.id, err)
	}

	edges := make([][]any, len(ev.prevs))
	for i, prev := range ev.prevs {
		edges[i] = []any{ev.id, i, prev, ev.roomID}
	}
	if err := s.insertRows(ctx, tx, `INSERT INTO edges (event_id, ord, prev_event_id, room_id) VALUES `, edges); err != nil {
		return fmt.Errorf("sqlstore: inserting prev_events of %s: %w", ev.id, err)
	}
	if ev.stateKey != nil {
		// As in memstore: state resolution sees the auth events that are
		// state events of the same room, held when the event is added.
		var auths [][]any
		seen := make(map[string]bool)
		for _, id := range ev.auths {
			if a, ok := known[id]; ok && a.isState && a.roomID == ev.roomID && !seen[id] {
				seen[id] = true
				auths = append(auths, []any{ev.id, id})
			}
		}
		if err := s.insertRows(ctx, tx, `INSERT INTO auth_edges (event_id, auth_event_id) VALUES `, auths); err != nil {
			return fmt.Errorf("sqlstore: inserting auth_events of %s: %w", ev.id, err)
		}
	}

	if !ev.opts.Outlier && !ev.opts.Rejected {
		return s.updateExtremities(ctx, tx, ev)
	}
	return nil
}

// updateExtremities maintains forward_extremities for a state-bearing event.
// Like memstore, it follows Synapse: outliers and rejected events neither
// become extremities nor retire their prev_events.
func (s *Store) updateExtremities(ctx context.Context, tx *sql.Tx, ev *newEvent) error {
	if len(ev.prevs) > 0 {
		if _, err := s.exec(ctx, tx, `DELETE FROM forward_extremities WHERE room_id = $1 AND event_id IN (IDS($2))`,
			ev.roomID, s.idList(ev.prevs)); err != nil {
			return fmt.Errorf("sqlstore: retiring prev_events of %s: %w", ev.id, err)
		}
	}
	// An event that a state-bearing event already names as a prev_event
	// (added before it, while it was unknown) is no forward extremity.
	_, err := s.exec(ctx, tx, `
INSERT INTO forward_extremities (room_id, event_id)
SELECT $1, $2 WHERE NOT EXISTS (
	SELECT 1 FROM edges ed JOIN events child ON child.event_id = ed.event_id
	WHERE ed.prev_event_id = $2 AND NOT child.outlier AND NOT child.rejected
)`, ev.roomID, ev.id)
	if err != nil {
		return fmt.Errorf("sqlstore: recording forward extremity %s: %w", ev.id, err)
	}
	return nil
}

// knownEvents returns what the store holds of ids.
func (s *Store) knownEvents(ctx context.Context, q querier, ids []string) (map[string]knownEvent, error) {
	rows, err := s.query(ctx, q, `
SELECT event_id, room_id, state_key IS NOT NULL, outlier, after_group FROM events WHERE event_id IN (IDS($1))`,
		jsonList(ids))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: looking up %d events: %w", len(ids), err)
	}
	defer rows.Close()
	known := make(map[string]knownEvent, len(ids))
	for rows.Next() {
		var (
			id    string
			k     knownEvent
			group sql.NullInt64
		)
		if err := rows.Scan(&id, &k.roomID, &k.isState, &k.outlier, &group); err != nil {
			return nil, fmt.Errorf("sqlstore: looking up events: %w", err)
		}
		k.afterGroup = group.Int64
		known[id] = k
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: looking up events: %w", err)
	}
	return known, nil
}

// maxRowsPerInsert bounds the rows of one multi-row INSERT. Far below the
// databases' parameter limits (SQLite's 32766, PostgreSQL's 65535): SQLite
// (modernc.org/sqlite) binds a statement's parameters in time that grows
// faster than their number, and 100 rows per statement already saves
// nearly all the round trips.
const maxRowsPerInsert = 100

// insertRows inserts rows with prefix ("INSERT INTO t (a, b) VALUES "), as
// few multi-row statements as the parameter limit allows.
func (s *Store) insertRows(ctx context.Context, q querier, prefix string, rows [][]any) error {
	if len(rows) == 0 {
		return nil
	}
	perRow := len(rows[0])
	chunk := maxRowsPerInsert
	for start := 0; start < len(rows); start += chunk {
		end := min(start+chunk, len(rows))
		var sb strings.Builder
		sb.WriteString(prefix)
		args := make([]any, 0, (end-start)*perRow)
		for i, row := range rows[start:end] {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteByte('(')
			for j, v := range row {
				if j > 0 {
					sb.WriteString(", ")
				}
				args = append(args, v)
				fmt.Fprintf(&sb, "$%d", len(args))
			}
			sb.WriteByte(')')
		}
		s.queries.Add(1)
		if _, err := q.ExecContext(ctx, s.dialect.expand(sb.String()), args...); err != nil {
			return err
		}
	}
	return nil
}

// isUniqueViolation reports whether err is a unique constraint violation:
// SQLSTATE 23505 on PostgreSQL, SQLITE_CONSTRAINT_UNIQUE or _PRIMARYKEY on
// SQLite.
func isUniqueViolation(err error) bool {
	var pgErr interface{ SQLState() string }
	if errors.As(err, &pgErr) {
		return pgErr.SQLState() == "23505"
	}
	var liteErr interface{ Code() int }
	if errors.As(err, &liteErr) {
		const sqliteConstraintUnique, sqliteConstraintPrimaryKey = 2067, 1555
		return liteErr.Code() == sqliteConstraintUnique || liteErr.Code() == sqliteConstraintPrimaryKey
	}
	return false
}
