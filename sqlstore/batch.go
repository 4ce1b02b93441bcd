package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/fedhistory/fedhistory"
)

// AddBatch's transaction works in chunks of addChunkEvents events. For each
// chunk it reads, in three statements, what the store holds of the events
// the chunk adds and names (duplicates, prev_events, auth_events, redaction
// targets), the redactions waiting for them and which of them stored events
// already name as a prev_event; it then works out every event in order in
// memory (state groups, redactions, forward extremities) and writes the
// chunk's rows as multi-row INSERTs. A read that must see the rows of the
// batch so far (a state resolution, a redaction's power levels, a given
// StateBefore) writes them out first (flush).
//
// An import used to cost about eight statements per event, each a round
// trip (PostgreSQL: ~300 events/s); chunks of 1000 made it about one per
// 15 events (BENCHMARKS.md, "Import"). Chunks of 8000 events make
// fewer, larger statements and COPYs: fedhistory import of a 10^5-event
// room, 2 runs each, PostgreSQL 10.1, 9.6 s -> 8.2, 7.9 s; SQLite 9.0,
// 9.3 s -> 8.6, 8.5 s (4000: PostgreSQL 9.2, 8.6 s; 16000: 8.0, 8.1 s with
// 100 MB more memory). A chunk holds about 1.5 KiB per event.
const addChunkEvents = 8000

// A transaction keeps the state groups it wrote or read and the auth links
// of the state events it added, so that an import's next state change
// costs no read; an AddSeq of any length would keep them all. Once they
// pass these bounds (about 100 MB each) they are forgotten after a chunk
// is written, and read back from the database as needed (groupChain,
// storedAuthLinks), as those of earlier transactions are.
const (
	maxHeldEntries   = 1_000_000 // state entries of the groups kept
	maxHeldAuthLinks = 200_000   // state events whose links are kept
)

// maxInsertParams bounds the parameters of one multi-row INSERT, far below
// both databases' limits (SQLite's 32766, PostgreSQL's 65535): SQLite
// (modernc.org/sqlite) binds a statement's parameters in time that grows
// faster than their number, and a few hundred rows per statement already
// save nearly all the round trips.
const maxInsertParams = 1000

// batchWriter is one AddBatch transaction: what it knows and what it has
// not written yet.
type batchWriter struct {
	s  *Store
	tx *preparedTx
	// conn is the transaction's connection on PostgreSQL, for COPY; nil
	// on SQLite.
	conn *sql.Conn
	// groups holds the state groups the batch has read or written, so that
	// one event's state change builds on the previous one without reading
	// it back, up to maxHeldEntries entries written (heldEntries; see
	// forget).
	groups      groupCache
	heldEntries int
	// rooms are the versions of the rooms the batch has touched.
	rooms map[string]string

	// Per chunk (see prefetch): what the store holds, or the batch has
	// added since, of the IDs the chunk adds or names; the redactions
	// waiting for a target, by target; and the IDs that a stored or added
	// state-bearing event names as a prev_event.
	known   map[string]knownEvent
	pending map[string][]pendingRedaction
	named   map[string]bool

	// The rows not written yet, in the order flush writes them.
	groupRows, entryRows [][]any
	eventRows            []*eventRow
	unflushed            map[string]*eventRow // eventRows by event ID
	edgeRows, authRows   [][]any
	authCounts           []authCount // what state_group_auth counts (see authCounts)
	// authLinks are the auth links (auth_links) of the state events the batch
	// added, for writeAuthCounts: only a state event can be a state
	// change. Up to maxHeldAuthLinks events (see forget).
	authLinks    map[string][]string
	redactStored []string // stored events a redaction of the batch applies to
	settled      []string // targets whose stored pending redactions were judged
	// extremities are the forward extremity changes per room.
	extremities map[string]*extremityChanges

	// groupIDs and eventNIDs allocate the new rows' keys.
	groupIDs, eventNIDs idAllocator
}

// eventRow is the events row of an added event.
type eventRow struct {
	args []any
}

// The columns of the rows flush writes, in the order of their values.
var (
	groupColumns = []string{"group_id", "room_id", "parent_id", "chain_length", "level", "auth_counted"}
	entryColumns = []string{"group_id", "event_type", "state_key", "event_id", "member_server"}
	eventColumns = []string{
		"event_nid", "event_id", "room_id", "depth", "prev_events", "event_type", "state_key", "sender", "redacts",
		"rejected", "outlier", "membership", "history_visibility", "before_group", "after_group", "json",
		"origin_server_ts", "state_known", "redacted",
	}
	edgeColumns     = []string{"event_nid", "ord", "prev_event_id"}
	authEdgeColumns = []string{"event_nid", "auth_nid"}
)

// eventRedactedArg is the index of the redacted column in eventRow.args.
var eventRedactedArg = slices.Index(eventColumns, "redacted")

// pendingRedaction is a redaction waiting for its target.
type pendingRedaction struct {
	// redaction carries what the redaction rules read of it.
	redaction       fedhistory.Event
	senderMayRedact bool
	// stored: the pending_redactions row is written.
	stored bool
}

// extremityChanges are the forward extremity changes of one room not
// written yet.
type extremityChanges struct {
	// added are state-bearing events no state-bearing event named when
	// they were added.
	added []string
	// retired are the prev_events of added state-bearing events.
	retired map[string]bool
}

func newBatchWriter(s *Store, conn *sql.Conn, tx *sql.Tx) *batchWriter {
	w := &batchWriter{
		s:           s,
		tx:          &preparedTx{tx: tx, prepare: s.dialect == sqlite},
		groups:      make(groupCache),
		rooms:       make(map[string]string),
		unflushed:   make(map[string]*eventRow),
		authLinks:   make(map[string][]string),
		extremities: make(map[string]*extremityChanges),
		groupIDs:    newIDAllocator("state_groups", "group_id"),
		eventNIDs:   newIDAllocator("events", "event_nid"),
	}
	if s.dialect == postgres {
		w.conn = conn
	}
	return w
}

// prefetch reads, for chunk, what add needs of the database (see
// addChunkEvents), in three statements. Everything the batch wrote before is
// flushed, so the database has it.
func (w *batchWriter) prefetch(ctx context.Context, chunk []*newEvent) error {
	seen := make(map[string]bool)
	var ids, own []string
	note := func(id string) {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	for _, ev := range chunk {
		e := &ev.Event
		own = append(own, e.ID)
		note(e.ID)
		for _, id := range e.PrevEvents {
			note(id)
		}
		for _, id := range ev.AuthEvents {
			note(id)
		}
		if e.Redacts != "" {
			note(e.Redacts)
		}
	}
	var err error
	if w.known, err = w.s.knownEvents(ctx, w.tx, ids); err != nil {
		return err
	}

	w.pending = make(map[string][]pendingRedaction)
	rows, err := w.s.query(ctx, w.tx, `
SELECT p.target_id, r.event_id, r.room_id, r.event_type, r.sender, r.redacts, r.rejected, p.sender_may_redact
FROM pending_redactions p JOIN events r ON r.event_id = p.redaction_id
WHERE p.target_id IN (IDS($1))`, w.s.idList(own))
	if err != nil {
		return fmt.Errorf("sqlstore: reading pending redactions: %w", err)
	}
	err = scanRows(rows, func() error {
		var (
			target string
			p      = pendingRedaction{stored: true}
			r      = &p.redaction
		)
		if err := rows.Scan(&target, &r.ID, &r.RoomID, &r.Type, &r.Sender, &r.Redacts, &r.Rejected, &p.senderMayRedact); err != nil {
			return err
		}
		w.pending[target] = append(w.pending[target], p)
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlstore: reading pending redactions: %w", err)
	}

	// An event that a stored state-bearing event names is no forward
	// extremity. The correlated subquery probes edges' prev_event_id index
	// once per ID: written as a join, PostgreSQL hashed the IDs and scanned
	// the whole edges table for every chunk, which made an import
	// quadratic (3.5 of 11 s at 10^5 events).
	w.named = make(map[string]bool)
	rows, err = w.s.query(ctx, w.tx, `
SELECT ids.id, (
	SELECT COUNT(*) FROM prev_edges ed JOIN events child ON child.event_nid = ed.event_nid
	WHERE ed.prev_event_id = ids.id AND NOT child.outlier AND NOT child.rejected
) FROM (ID_ROWS($1)) ids`, w.s.idList(own))
	if err != nil {
		return fmt.Errorf("sqlstore: reading the children of %d events: %w", len(own), err)
	}
	err = scanRows(rows, func() error {
		var (
			id       string
			children int
		)
		if err := rows.Scan(&id, &children); err != nil {
			return err
		}
		if children > 0 {
			w.named[id] = true
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlstore: reading the children of %d events: %w", len(own), err)
	}
	return nil
}

// scanRows calls scan for every row of rows, and closes them.
func scanRows(rows *sql.Rows, scan func() error) error {
	defer rows.Close()
	for rows.Next() {
		if err := scan(); err != nil {
			return err
		}
	}
	return rows.Err()
}

// roomVersion checks that ev is of its room's version, creating the room
// with ev's version if it is the first event of the room.
func (w *batchWriter) checkRoomVersion(ctx context.Context, ev *newEvent) error {
	e := &ev.Event
	version, ok := w.rooms[e.RoomID]
	if !ok {
		err := w.s.queryRow(ctx, w.tx, `SELECT room_version FROM rooms WHERE room_id = $1`, e.RoomID).Scan(&version)
		switch {
		case err == sql.ErrNoRows:
			if _, err := w.s.exec(ctx, w.tx, `INSERT INTO rooms (room_id, room_version) VALUES ($1, $2)`, e.RoomID, ev.version); err != nil {
				return fmt.Errorf("sqlstore: creating room %s: %w", e.RoomID, err)
			}
			version = ev.version
		case err != nil:
			return fmt.Errorf("sqlstore: reading room %s: %w", e.RoomID, err)
		}
		w.rooms[e.RoomID] = version
	}
	if version != ev.version {
		return fmt.Errorf("%w: event %s is version %s, room %s is version %s",
			fedhistory.ErrRoomVersionMismatch, e.ID, ev.version, e.RoomID, version)
	}
	return nil
}

// recordExtremities maintains the forward extremities for a state-bearing
// event. Like memstore, it follows Synapse: outliers and rejected events
// neither become extremities nor retire their prev_events. The rule is
// order-independent (an extremity is a state-bearing event that no
// state-bearing event names), so flush can apply a whole chunk's changes at
// once.
func (w *batchWriter) recordExtremities(ev *newEvent) {
	e := &ev.Event
	changes := w.extremities[e.RoomID]
	if changes == nil {
		changes = &extremityChanges{retired: make(map[string]bool)}
		w.extremities[e.RoomID] = changes
	}
	for _, prev := range e.PrevEvents {
		changes.retired[prev] = true
		w.named[prev] = true
	}
	if !w.named[e.ID] {
		changes.added = append(changes.added, e.ID)
	}
}

// idAllocator hands out the values of one identity column (state_groups'
// group_id, events' event_nid) to a transaction, which writes them
// explicitly: so that rows referring to a new row (a group's entries, an
// event's links) are built before it is written. PostgreSQL hands them out
// from the column's sequence, in blocks that double up to 1024 (so that a
// single Add takes one value and an import one statement per 1024 rows);
// on SQLite the transaction holds the database's write lock, so the next
// value is the largest so far plus one.
type idAllocator struct {
	table, column string
	free          []int64 // PostgreSQL: taken from the sequence, unused
	block         int     // PostgreSQL: the size of the next block
	last          int64   // SQLite: the largest value so far
}

func newIDAllocator(table, column string) idAllocator {
	return idAllocator{table: table, column: column, block: 1}
}

// next returns a new value of the column.
func (a *idAllocator) next(ctx context.Context, w *batchWriter) (int64, error) {
	if w.s.dialect == sqlite {
		if a.last == 0 {
			var largest sql.NullInt64
			if err := w.s.queryRow(ctx, w.tx, `SELECT MAX(`+a.column+`) FROM `+a.table).Scan(&largest); err != nil {
				return 0, fmt.Errorf("allocating a value of %s.%s: %w", a.table, a.column, err)
			}
			a.last = largest.Int64
		}
		a.last++
		return a.last, nil
	}
	if len(a.free) == 0 {
		rows, err := w.s.query(ctx, w.tx, `SELECT nextval(pg_get_serial_sequence('`+a.table+`', '`+a.column+`')) FROM generate_series(1, $1)`, a.block)
		if err != nil {
			return 0, fmt.Errorf("allocating values of %s.%s: %w", a.table, a.column, err)
		}
		err = scanRows(rows, func() error {
			var id int64
			err := rows.Scan(&id)
			a.free = append(a.free, id)
			return err
		})
		if err != nil {
			return 0, fmt.Errorf("allocating values of %s.%s: %w", a.table, a.column, err)
		}
		a.block = min(2*a.block, 1024)
	}
	id := a.free[0]
	a.free = a.free[1:]
	return id, nil
}

// flush writes every buffered row, in an order that satisfies the foreign
// keys: state groups (parents first), their entries, events, then what
// refers to events.
func (w *batchWriter) flush(ctx context.Context) error {
	s := w.s
	if err := w.insert(ctx, "state_groups", groupColumns, w.groupRows); err != nil {
		return fmt.Errorf("sqlstore: creating state groups: %w", err)
	}
	if err := w.insert(ctx, "state_group_entries", entryColumns, w.entryRows); err != nil {
		return fmt.Errorf("sqlstore: filling state groups: %w", err)
	}
	events := make([][]any, len(w.eventRows))
	for i, row := range w.eventRows {
		events[i] = row.args
	}
	if err := w.insert(ctx, "events", eventColumns, events); err != nil {
		if isUniqueViolation(err) {
			// Another process added one of the same event IDs (in another
			// room: the room lock serialises adds to one room) after
			// prefetch looked.
			return fmt.Errorf("%w: %w", fedhistory.ErrDuplicateEvent, err)
		}
		return fmt.Errorf("sqlstore: inserting %d events: %w", len(events), err)
	}
	if err := w.insert(ctx, "prev_edges", edgeColumns, w.edgeRows); err != nil {
		return fmt.Errorf("sqlstore: inserting prev_events: %w", err)
	}
	if err := w.insert(ctx, "auth_links", authEdgeColumns, w.authRows); err != nil {
		return fmt.Errorf("sqlstore: inserting auth_events: %w", err)
	}
	if err := w.writeAuthCounts(ctx); err != nil {
		return fmt.Errorf("sqlstore: counting the auth events of %d state changes: %w", len(w.authCounts), err)
	}
	if len(w.redactStored) > 0 {
		if _, err := s.exec(ctx, w.tx, `UPDATE events SET redacted = TRUE WHERE event_id IN (IDS($1))`, jsonList(w.redactStored)); err != nil {
			return fmt.Errorf("sqlstore: redacting %d events: %w", len(w.redactStored), err)
		}
	}
	if len(w.settled) > 0 {
		if _, err := s.exec(ctx, w.tx, `DELETE FROM pending_redactions WHERE target_id IN (IDS($1))`, jsonList(w.settled)); err != nil {
			return fmt.Errorf("sqlstore: settling redactions: %w", err)
		}
	}
	var waiting [][]any
	for _, target := range slices.Sorted(maps.Keys(w.pending)) {
		list := w.pending[target]
		for i := range list {
			if !list[i].stored {
				waiting = append(waiting, []any{target, list[i].redaction.ID, list[i].senderMayRedact})
				list[i].stored = true
			}
		}
	}
	if err := w.insert(ctx, "pending_redactions", []string{"target_id", "redaction_id", "sender_may_redact"}, waiting); err != nil {
		return fmt.Errorf("sqlstore: filing redactions: %w", err)
	}
	for _, room := range slices.Sorted(maps.Keys(w.extremities)) {
		changes := w.extremities[room]
		if len(changes.retired) > 0 {
			retired := slices.Sorted(maps.Keys(changes.retired))
			if _, err := s.exec(ctx, w.tx, `DELETE FROM forward_extremities WHERE room_id = $1 AND event_id IN (IDS($2))`,
				room, s.idList(retired)); err != nil {
				return fmt.Errorf("sqlstore: retiring forward extremities of %s: %w", room, err)
			}
		}
		var added [][]any
		for _, id := range changes.added {
			if !changes.retired[id] {
				added = append(added, []any{room, id})
			}
		}
		if err := w.insert(ctx, "forward_extremities", []string{"room_id", "event_id"}, added); err != nil {
			return fmt.Errorf("sqlstore: recording forward extremities of %s: %w", room, err)
		}
	}

	w.heldEntries += len(w.entryRows)
	w.groupRows, w.entryRows, w.eventRows, w.edgeRows, w.authRows, w.authCounts = nil, nil, nil, nil, nil, nil
	w.redactStored, w.settled = nil, nil
	clear(w.unflushed)
	clear(w.extremities)
	return nil
}

// forget drops the groups and auth links the writer keeps once they pass
// their bounds (see maxHeldEntries). Only after flush: the database must
// hold everything forgotten.
func (w *batchWriter) forget() {
	// Counted as written: the groups read from the database are the few
	// that the batch's first state change of a room (or the first after
	// forgetting) builds on.
	if w.heldEntries > w.s.maxHeldEntries {
		clear(w.groups)
		w.heldEntries = 0
	}
	if len(w.authLinks) > w.s.maxHeldAuthLinks {
		clear(w.authLinks)
	}
}

// insert writes rows into table: on PostgreSQL with COPY when there are
// many (see minCopyRows), else with insertRows.
func (w *batchWriter) insert(ctx context.Context, table string, columns []string, rows [][]any) error {
	if w.conn == nil || len(rows) < minCopyRows {
		return w.s.insertRows(ctx, w.tx, table, columns, rows)
	}
	w.s.queries.Add(1)
	return withPgx(w.conn, func(conn *pgx.Conn) error {
		_, err := conn.CopyFrom(ctx, pgx.Identifier{table}, columns, pgx.CopyFromRows(rows))
		return err
	})
}

// withPgx runs f on the pgx connection under conn, a PostgreSQL
// connection: for what database/sql cannot say (COPY, raw row values).
func withPgx(conn *sql.Conn, f func(*pgx.Conn) error) error {
	return conn.Raw(func(driverConn any) error {
		c, ok := driverConn.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("sqlstore: the PostgreSQL connection is a %T, not pgx's", driverConn)
		}
		return f(c.Conn())
	})
}

// minCopyRows is the fewest rows insert writes with COPY. pgx's COPY costs
// an extra round trip (it first reads the table's column types), and then
// inserts about twice as fast as multi-row INSERTs: 20,000 rows of events
// took 0.36 s instead of 0.66 s here.
const minCopyRows = 200

// insertRows inserts rows into table's columns in as few multi-row INSERTs
// as maxInsertParams allows. On SQLite a failing INSERT rolls back the
// whole transaction (see multiRowInsert): after an error the caller must
// not use the transaction again, as AddBatch does not.
func (s *Store) insertRows(ctx context.Context, q querier, table string, columns []string, rows [][]any) error {
	if len(rows) == 0 {
		return nil
	}
	perRow := len(columns)
	chunk := max(1, maxInsertParams/perRow)
	args := make([]any, 0, min(len(rows), chunk)*perRow)
	for start := 0; start < len(rows); start += chunk {
		end := min(start+chunk, len(rows))
		args = args[:0]
		for _, row := range rows[start:end] {
			args = append(args, row...)
		}
		s.queries.Add(1)
		query := s.multiRowInsert(table, columns, end-start)
		if s.observe != nil {
			s.observe(query, args)
		}
		if _, err := q.ExecContext(ctx, query, args...); err != nil {
			return err
		}
	}
	return nil
}

// multiRowInserts caches multiRowInsert's texts: a few tables, each with at
// most maxInsertParams row counts.
var multiRowInserts sync.Map // multiRowKey → string

type multiRowKey struct {
	dialect        dialect
	table, columns string
	rows           int
}

// multiRowInsert is the INSERT of rows rows into table's columns, for the
// dialect.
func (s *Store) multiRowInsert(table string, columns []string, rows int) string {
	key := multiRowKey{s.dialect, table, strings.Join(columns, ", "), rows}
	if text, ok := multiRowInserts.Load(key); ok {
		return text.(string)
	}
	var sb strings.Builder
	if s.dialect == sqlite {
		// A failing row of a multi-row INSERT undoes the statement's
		// earlier rows, so SQLite journals every page the statement
		// changes, unless the failure rolls back the whole transaction,
		// as any failure of AddBatch's does anyway. (Foreign-key checks
		// still need the journal: this helps the tables without foreign
		// keys.) Inserting a 10^5-event room's edges took 0.9 s instead
		// of 2.2 s.
		sb.WriteString("INSERT OR ROLLBACK INTO " + table + " (" + key.columns + ") VALUES ")
	} else {
		sb.WriteString("INSERT INTO " + table + " (" + key.columns + ") VALUES ")
	}
	n := 0
	for i := range rows {
		if i > 0 {
			sb.WriteString(", ")
		}
		sb.WriteByte('(')
		for j := range columns {
			if j > 0 {
				sb.WriteString(", ")
			}
			n++
			if s.dialect == sqlite {
				// Anonymous parameters, bound in order: modernc.org/sqlite
				// looks up the name of every numbered one ("?17") in a list
				// as long as the statement's, so binding a multi-row INSERT
				// of numbered parameters takes time quadratic in its rows
				// (a quarter of an import's time).
				sb.WriteByte('?')
				continue
			}
			sb.WriteByte('$')
			sb.WriteString(strconv.Itoa(n))
		}
		sb.WriteByte(')')
	}
	text := sb.String()
	multiRowInserts.Store(key, text)
	return text
}

// preparedTx is a transaction whose statements are prepared once each, on
// SQLite, whose driver would otherwise parse every statement anew (pgx
// keeps a statement cache per connection itself). The statements belong to
// the transaction, which closes them when it ends: preparing them on the
// database instead would make a statement inside the transaction wait for a
// second connection, which an in-memory database never has.
type preparedTx struct {
	tx      *sql.Tx
	prepare bool
	stmts   map[string]*sql.Stmt
}

func (p *preparedTx) stmt(ctx context.Context, query string) *sql.Stmt {
	if !p.prepare {
		return nil
	}
	if stmt, ok := p.stmts[query]; ok {
		return stmt
	}
	stmt, err := p.tx.PrepareContext(ctx, query)
	if err != nil {
		return nil // the unprepared statement reports the error
	}
	if p.stmts == nil {
		p.stmts = make(map[string]*sql.Stmt)
	}
	p.stmts[query] = stmt
	return stmt
}

func (p *preparedTx) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if stmt := p.stmt(ctx, query); stmt != nil {
		return stmt.QueryContext(ctx, args...)
	}
	return p.tx.QueryContext(ctx, query, args...)
}

func (p *preparedTx) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if stmt := p.stmt(ctx, query); stmt != nil {
		return stmt.QueryRowContext(ctx, args...)
	}
	return p.tx.QueryRowContext(ctx, query, args...)
}

func (p *preparedTx) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if stmt := p.stmt(ctx, query); stmt != nil {
		return stmt.ExecContext(ctx, args...)
	}
	return p.tx.ExecContext(ctx, query, args...)
}

// authCount is one state change of a new state group as state_group_auth
// counts it: sign +1 for an event the group's state holds and its parent's
// does not (at that key), -1 for an event it replaces or removes.
type authCount struct {
	group   int64
	eventID string
	sign    int
}

// writeAuthCounts writes state_group_auth's rows for the state changes of
// the groups the batch wrote: per group, the signed number of auth links
// from the changed events to each auth event (rows with a sum of 0 are not
// written). The links of the state events the batch added are in
// authLinks; those of older events are read from auth_links, by its
// primary key's prefix, in one statement. Counted in the database instead
// (a join of the changes with auth_edges), this took 2.7 of 17 s of a
// 10^5-event PostgreSQL import.
func (w *batchWriter) writeAuthCounts(ctx context.Context) error {
	if len(w.authCounts) == 0 {
		return nil
	}
	var older []string
	for _, c := range w.authCounts {
		if _, ok := w.authLinks[c.eventID]; !ok {
			older = append(older, c.eventID)
		}
	}
	var stored map[string][]string
	if len(older) > 0 {
		slices.Sort(older)
		var err error
		if stored, err = w.s.storedAuthLinks(ctx, w.tx, slices.Compact(older)); err != nil {
			return err
		}
	}
	type groupAuth struct {
		group int64
		auth  string
	}
	sums := make(map[groupAuth]int)
	for _, c := range w.authCounts {
		links, ok := w.authLinks[c.eventID]
		if !ok {
			links = stored[c.eventID]
		}
		for _, auth := range links {
			sums[groupAuth{c.group, auth}] += c.sign
		}
	}
	rows := make([][]any, 0, len(sums))
	for _, k := range slices.SortedFunc(maps.Keys(sums), func(a, b groupAuth) int {
		return cmp.Or(cmp.Compare(a.group, b.group), strings.Compare(a.auth, b.auth))
	}) {
		if n := sums[k]; n != 0 {
			rows = append(rows, []any{k.group, k.auth, n})
		}
	}
	return w.insert(ctx, "state_group_auth", authCountColumns, rows)
}

// storedAuthLinks returns the auth links of the events ids.
func (s *Store) storedAuthLinks(ctx context.Context, q querier, ids []string) (map[string][]string, error) {
	rows, err := s.query(ctx, q, `
SELECT e.event_id, auth.event_id
FROM events e
JOIN auth_links a ON a.event_nid = e.event_nid
JOIN events auth ON auth.event_nid = a.auth_nid
WHERE e.event_id IN (IDS($1))`, s.idList(ids))
	if err != nil {
		return nil, fmt.Errorf("reading the auth events of %d events: %w", len(ids), err)
	}
	links := make(map[string][]string, len(ids))
	err = scanRows(rows, func() error {
		var id, auth string
		if err := rows.Scan(&id, &auth); err != nil {
			return err
		}
		links[id] = append(links[id], auth)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the auth events of %d events: %w", len(ids), err)
	}
	return links, nil
}

// authCountColumns are the columns of state_group_auth's rows.
var authCountColumns = []string{"group_id", "auth_event_id", "n"}
