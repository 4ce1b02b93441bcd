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

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/pdu"
)

// Pending is one event for AddBatch: the arguments of one Add call.
type Pending struct {
	RoomVersion string
	PDU         []byte
	Options     fedhistory.AddOptions
}

// Add adds one PDU and returns its event ID. It behaves exactly like
// memstore's Store.Add (read its documentation): events must come in
// topological order, the store trusts its input, the first event of a room
// fixes its version, the state before an event is known only as "State" on
// fedhistory.EventStore says (opts.StateBefore, or prev_events all held
// with a known state), and redactions are judged once, when both the
// redaction and its target are held. It fails with an error wrapping
// fedhistory.ErrDuplicateEvent, ErrRoomVersionMismatch,
// ErrUnsupportedRoomVersion, ErrInvalidEvent or ErrInvalidStateBefore when
// memstore would.
func (s *Store) Add(ctx context.Context, roomVersion string, data []byte, opts fedhistory.AddOptions) (string, error) {
	ids, err := s.addBatch(ctx, []Pending{{RoomVersion: roomVersion, PDU: data, Options: opts}})
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
			rooms = append(rooms, ev.Event.RoomID)
		}
		slices.Sort(rooms)
		for _, room := range slices.Compact(rooms) {
			if _, err := s.exec(ctx, tx, `SELECT pg_advisory_xact_lock($1, $2)`, roomLockClass, roomLockKey(room)); err != nil {
				return nil, fmt.Errorf("sqlstore: locking room %s: %w", room, err)
			}
		}
	}
	ids := make([]string, len(parsed))
	// The state groups the batch reads and writes, so that one event's
	// state change builds on the previous one without reading it back.
	groups := make(groupCache)
	for i, ev := range parsed {
		if err := s.addInTx(ctx, tx, groups, ev); err != nil {
			return nil, err
		}
		ids[i] = ev.Event.ID
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("sqlstore: committing %d events: %w", len(parsed), err)
	}
	// A redaction among them may have emptied a cached server ACL.
	s.currentStates.clear()
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
	*pdu.Parsed
	version string
	opts    fedhistory.AddOptions
}

func parseNewEvent(p Pending) (*newEvent, error) {
	parsed, err := pdu.Parse(p.RoomVersion, bytes.Clone(p.PDU))
	if err != nil {
		return nil, err
	}
	return &newEvent{Parsed: parsed, version: p.RoomVersion, opts: p.Options}, nil
}

// membership and historyVisibility are the event's values of the columns
// of the same names: NULL unless it is a state event of that kind.
func (ev *newEvent) membership() *string {
	if ev.IsState() && ev.Event.Type == typeMember {
		return &ev.Membership
	}
	return nil
}

func (ev *newEvent) historyVisibility() *string {
	if ev.IsState() && ev.Event.Type == typeHistoryVisibility && *ev.Event.StateKey == "" {
		return &ev.HistoryVisibility
	}
	return nil
}

// checkStorable refuses, with ErrInvalidEvent, an event whose metadata the
// database cannot hold (see Store.storable): on PostgreSQL, strings with NUL
// characters. (memstore, which holds any Go string, accepts such events.)
func (s *Store) checkStorable(ev *newEvent) error {
	e := &ev.Event
	fields := []string{e.ID, e.RoomID, e.Type, e.Sender, e.Redacts}
	fields = append(append(fields, e.PrevEvents...), ev.AuthEvents...)
	for _, p := range []*string{e.StateKey, ev.membership(), ev.historyVisibility()} {
		if p != nil {
			fields = append(fields, *p)
		}
	}
	for _, f := range fields {
		if !s.storable(f) {
			return fmt.Errorf("%w: %s holds a string %s cannot store: %q", fedhistory.ErrInvalidEvent, e.ID, s.dialect, f)
		}
	}
	return nil
}

// knownEvent is what addInTx needs to know of an event already stored.
type knownEvent struct {
	// event carries ID, RoomID, Type, StateKey, Sender and Rejected: what
	// the redaction rules read of a target.
	event      fedhistory.Event
	outlier    bool
	stateKnown bool
	afterGroup int64 // 0: the empty state; meaningful when stateKnown
}

func (s *Store) addInTx(ctx context.Context, tx *sql.Tx, groups groupCache, ev *newEvent) error {
	if err := s.checkStorable(ev); err != nil {
		return err
	}
	e := &ev.Event
	e.Rejected, e.Outlier = ev.opts.Rejected, ev.opts.Outlier
	// One query for the event itself (a duplicate?), its prev_events, its
	// auth_events and the target of a redaction.
	lookup := append(append([]string{e.ID}, e.PrevEvents...), ev.AuthEvents...)
	if e.Redacts != "" {
		lookup = append(lookup, e.Redacts)
	}
	known, err := s.knownEvents(ctx, tx, lookup)
	if err != nil {
		return err
	}
	if _, dup := known[e.ID]; dup {
		return fmt.Errorf("%w: %s", fedhistory.ErrDuplicateEvent, e.ID)
	}
	var roomVersion string
	err = s.queryRow(ctx, tx, `SELECT room_version FROM rooms WHERE room_id = $1`, e.RoomID).Scan(&roomVersion)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := s.exec(ctx, tx, `INSERT INTO rooms (room_id, room_version) VALUES ($1, $2)`, e.RoomID, ev.version); err != nil {
			return fmt.Errorf("sqlstore: creating room %s: %w", e.RoomID, err)
		}
	case err != nil:
		return fmt.Errorf("sqlstore: reading room %s: %w", e.RoomID, err)
	case roomVersion != ev.version:
		return fmt.Errorf("%w: event %s is version %s, room %s is version %s",
			fedhistory.ErrRoomVersionMismatch, e.ID, ev.version, e.RoomID, roomVersion)
	}

	st, err := s.stateOnAdd(ctx, tx, groups, ev, known)
	if err != nil {
		return err
	}
	redactions, err := s.redactionsOnAdd(ctx, tx, ev, st, known)
	if err != nil {
		return err
	}

	_, err = s.exec(ctx, tx, `
INSERT INTO events (event_id, room_id, depth, prev_events, event_type, state_key, sender, redacts,
	rejected, outlier, membership, history_visibility, before_group, after_group, json,
	origin_server_ts, state_known, redacted)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)`,
		e.ID, e.RoomID, e.Depth, jsonList(e.PrevEvents), e.Type, e.StateKey, e.Sender, e.Redacts,
		e.Rejected, e.Outlier, ev.membership(), ev.historyVisibility(), st.beforeColumn(), st.afterColumn(), e.JSON,
		e.OriginServerTS, st.known, redactions.self)
	if err != nil {
		if isUniqueViolation(err) {
			// Another process added the same event ID (in another room: the
			// room lock serialises adds to one room) after our check.
			return fmt.Errorf("%w: %s", fedhistory.ErrDuplicateEvent, e.ID)
		}
		return fmt.Errorf("sqlstore: inserting %s: %w", e.ID, err)
	}
	if err := redactions.apply(ctx, tx); err != nil {
		return err
	}

	edges := make([][]any, len(e.PrevEvents))
	for i, prev := range e.PrevEvents {
		edges[i] = []any{e.ID, i, prev, e.RoomID}
	}
	if err := s.insertRows(ctx, tx, `INSERT INTO edges (event_id, ord, prev_event_id, room_id) VALUES `, edges); err != nil {
		return fmt.Errorf("sqlstore: inserting prev_events of %s: %w", e.ID, err)
	}
	// As in memstore: the auth chain links of an event are its auth events
	// held in its room when it is added, whatever their kind. (State
	// resolution follows only those between state events.)
	var auths [][]any
	seen := make(map[string]bool)
	for _, id := range ev.AuthEvents {
		if a, ok := known[id]; ok && a.event.RoomID == e.RoomID && !seen[id] {
			seen[id] = true
			auths = append(auths, []any{e.ID, id})
		}
	}
	if err := s.insertRows(ctx, tx, `INSERT INTO auth_edges (event_id, auth_event_id) VALUES `, auths); err != nil {
		return fmt.Errorf("sqlstore: inserting auth_events of %s: %w", e.ID, err)
	}

	if !e.Outlier && !e.Rejected {
		return s.updateExtremities(ctx, tx, ev)
	}
	return nil
}

// updateExtremities maintains forward_extremities for a state-bearing event.
// Like memstore, it follows Synapse: outliers and rejected events neither
// become extremities nor retire their prev_events.
func (s *Store) updateExtremities(ctx context.Context, tx *sql.Tx, ev *newEvent) error {
	if len(ev.Event.PrevEvents) > 0 {
		if _, err := s.exec(ctx, tx, `DELETE FROM forward_extremities WHERE room_id = $1 AND event_id IN (IDS($2))`,
			ev.Event.RoomID, s.idList(ev.Event.PrevEvents)); err != nil {
			return fmt.Errorf("sqlstore: retiring prev_events of %s: %w", ev.Event.ID, err)
		}
	}
	// An event that a state-bearing event already names as a prev_event
	// (added before it, while it was unknown) is no forward extremity.
	_, err := s.exec(ctx, tx, `
INSERT INTO forward_extremities (room_id, event_id)
SELECT $1, $2 WHERE NOT EXISTS (
	SELECT 1 FROM edges ed JOIN events child ON child.event_id = ed.event_id
	WHERE ed.prev_event_id = $2 AND NOT child.outlier AND NOT child.rejected
)`, ev.Event.RoomID, ev.Event.ID)
	if err != nil {
		return fmt.Errorf("sqlstore: recording forward extremity %s: %w", ev.Event.ID, err)
	}
	return nil
}

// knownEvents returns what the store holds of ids.
func (s *Store) knownEvents(ctx context.Context, q querier, ids []string) (map[string]knownEvent, error) {
	rows, err := s.query(ctx, q, `
SELECT event_id, room_id, event_type, state_key, sender, rejected, outlier, state_known, after_group
FROM events WHERE event_id IN (IDS($1))`,
		s.idList(ids))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: looking up %d events: %w", len(ids), err)
	}
	defer rows.Close()
	known := make(map[string]knownEvent, len(ids))
	for rows.Next() {
		var (
			k        knownEvent
			stateKey sql.NullString
			group    sql.NullInt64
		)
		if err := rows.Scan(&k.event.ID, &k.event.RoomID, &k.event.Type, &stateKey, &k.event.Sender,
			&k.event.Rejected, &k.outlier, &k.stateKnown, &group); err != nil {
			return nil, fmt.Errorf("sqlstore: looking up events: %w", err)
		}
		if stateKey.Valid {
			k.event.StateKey = &stateKey.String
		}
		k.event.Outlier = k.outlier
		k.afterGroup = group.Int64
		known[k.event.ID] = k
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
