package sqlstore

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/fedhistory/fedhistory"
)

// stateBeforeQuery reads an event's row (kind 0) and the entries of the
// groups along its before-state's delta chain (kind 1), the latter only when
// that state is known and servable. CHAIN_ENTRIES joins each group of the
// chain with its entries, AUTH_ROWS is empty for StateBefore and, for
// StateIDs, adds the chain's state_group_auth rows (kind 2: n in the dist
// column, the auth event in the event_id column) and a row for each group of
// the chain that has none (kind 3: written before schema version 4) (see
// stateBeforeQueries).
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
FROM CHAIN_ENTRIESAUTH_ROWS`

// stateAuthRows are stateBeforeQuery's AUTH_ROWS for StateIDs. The flag of
// each group is a scalar subquery, a search by primary key in either
// database. CHAIN_AUTH joins each group of the chain with its counts.
const stateAuthRows = `
UNION ALL
SELECT 2, FALSE, FALSE, FALSE, a.n, NULL, NULL, a.auth_event_id
FROM CHAIN_AUTH
UNION ALL
SELECT 3, FALSE, FALSE, FALSE, c.dist, NULL, NULL, NULL
FROM chain c WHERE NOT (SELECT auth_counted FROM state_groups WHERE group_id = c.group_id)`

// stateBeforeQueries are stateBeforeQuery for each dialect, without
// (StateBefore) and with (StateIDs) the auth counts. Both must read the
// chain first and search the entries by group (their primary key's
// prefix), so that the cost follows the state, not the table, and both
// planners need telling: SQLite, without statistics, would rather scan
// every entry and probe the chain, so CROSS JOIN fixes its join order;
// PostgreSQL underestimates a recursive CTE's rows and picks a hash join
// over a sequential scan of all entries, so a LATERAL subquery that OFFSET 0
// keeps from being flattened makes it search the index once per group.
// state_group_auth is searched the same way.
var stateBeforeQueries, stateIDsQueries = stateQueries(""), stateQueries(stateAuthRows)

func stateQueries(authRows string) [2]string {
	query := strings.Replace(stateBeforeQuery, "AUTH_ROWS", authRows, 1)
	return [2]string{
		sqlite: strings.NewReplacer(
			"CHAIN_ENTRIES", "chain c CROSS JOIN state_group_entries e\nWHERE e.group_id = c.group_id",
			"CHAIN_AUTH", "chain c CROSS JOIN state_group_auth a\nWHERE a.group_id = c.group_id",
		).Replace(query),
		postgres: strings.NewReplacer(
			"CHAIN_ENTRIES", "chain c CROSS JOIN LATERAL (\n\tSELECT event_type, state_key, event_id FROM state_group_entries\n\tWHERE group_id = c.group_id OFFSET 0\n) e",
			"CHAIN_AUTH", "chain c CROSS JOIN LATERAL (\n\tSELECT auth_event_id, n FROM state_group_auth\n\tWHERE group_id = c.group_id OFFSET 0\n) a",
		).Replace(query),
	}
}

// StateBefore returns the IDs of the events of roomID's state just before
// eventID, one per (type, state_key): the state group the store recorded as
// the event's before-state when it was added, read in one statement (the
// event's row, and the entries along its group's delta chain). It fails
// with an error wrapping fedhistory.ErrEventNotFound when the store holds
// no event eventID in roomID, or holds it rejected or as an outlier, and
// with fedhistory.ErrStateUnknown when the state before it is unknown.
func (s *Store) StateBefore(ctx context.Context, roomID, eventID string) ([]string, error) {
	ids, _, err := s.stateBefore(ctx, roomID, eventID, false)
	return ids, err
}

// StateIDs returns StateBefore(roomID, eventID) and the AuthChain of those
// events (fedhistory.StateIDsStore), in two statements whatever the size of
// the state. The first reads the state and, summed along its group's delta
// chain, state_group_auth's counts: the events with a positive count are the
// state's direct auth events, so the second walks auth_links from those few
// (authClosureQueries) instead of from every state event: at 10^5 members,
// AuthChain of the state searched auth_edges 10^5 times (about 1.5 s of
// the 1.9 s a request took on PostgreSQL), where the counts are a handful of
// rows. A state whose chain holds a group written before schema version 4,
// which has no counts, falls back to AuthChain.
func (s *Store) StateIDs(ctx context.Context, roomID, eventID string) (pduIDs, authChainIDs []string, err error) {
	pduIDs, direct, err := s.stateBefore(ctx, roomID, eventID, true)
	switch {
	case err != nil:
		return nil, nil, err
	case direct == nil:
		authChainIDs, err = s.AuthChain(ctx, roomID, pduIDs)
		return pduIDs, authChainIDs, err
	case len(direct) == 0:
		return pduIDs, nil, nil
	}
	rows, err := s.query(ctx, s.db, authClosureQueries[s.dialect], s.idList(direct))
	if err != nil {
		return nil, nil, fmt.Errorf("sqlstore: reading the auth chain of the state before %s: %w", eventID, err)
	}
	authChainIDs, err = scanIDs(rows)
	if err != nil {
		return nil, nil, fmt.Errorf("sqlstore: reading the auth chain of the state before %s: %w", eventID, err)
	}
	return pduIDs, authChainIDs, nil
}

// stateBefore is StateBefore and, with auth, the state's direct auth events
// (nil when a group of its chain has no counts: see StateIDs).
func (s *Store) stateBefore(ctx context.Context, roomID, eventID string, auth bool) (ids, direct []string, err error) {
	if !s.storable(roomID) || !s.storable(eventID) {
		return nil, nil, fmt.Errorf("sqlstore: no event %q in room %q: %w", eventID, roomID, fedhistory.ErrEventNotFound)
	}
	query := stateBeforeQueries[s.dialect]
	if auth {
		query = stateIDsQueries[s.dialect]
	}
	sc := stateScratchPool.Get().(*stateScratch)
	if sc.index == nil {
		// A fresh scratch (the pool is emptied by the collector, which a
		// large state's request itself sets off): sized for the last state
		// read, so that its map and slice are not grown step by step. At
		// 10^5 members that growth was a third of a request through the
		// handler.
		hint := int(lastStateSize.Load())
		sc.index = make(map[string]int, hint)
		sc.entries = make([]nearEntry, 0, hint)
	}
	defer sc.release()
	defer func() { lastStateSize.Store(int64(len(sc.entries))) }()
	r := stateRead{sc: sc}
	if s.dialect == postgres {
		err = s.readStatePG(ctx, query, roomID, eventID, &r)
	} else {
		err = s.readState(ctx, query, roomID, eventID, &r)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("sqlstore: reading the state before %s: %w", eventID, err)
	}
	switch {
	case !r.found:
		return nil, nil, fmt.Errorf("sqlstore: no event %q in room %q: %w", eventID, roomID, fedhistory.ErrEventNotFound)
	case r.rejected:
		return nil, nil, fmt.Errorf("sqlstore: event %s is rejected: %w", eventID, fedhistory.ErrEventNotFound)
	case r.outlier:
		return nil, nil, fmt.Errorf("sqlstore: event %s is an outlier: %w", eventID, fedhistory.ErrEventNotFound)
	case !r.known:
		return nil, nil, fmt.Errorf("sqlstore: state before %s: %w", eventID, fedhistory.ErrStateUnknown)
	}
	ids = make([]string, 0, len(sc.entries))
	for _, e := range sc.entries {
		if !e.removed {
			ids = append(ids, e.eventID)
		}
	}
	if auth && !r.uncounted {
		direct = make([]string, 0, len(r.counts))
		for id, n := range r.counts {
			if n > 0 {
				direct = append(direct, id)
			}
		}
	}
	return ids, direct, nil
}

// stateRead is what stateBefore's statement says, row by row: kind 0, the
// event's row; kind 1, an entry of a group dist steps up the chain; kind 2,
// a count of state_group_auth; kind 3, a group without counts.
type stateRead struct {
	found, rejected, outlier, known, uncounted bool
	counts                                     map[string]int
	sc                                         *stateScratch
}

func (r *stateRead) count(eventID string, n int) {
	if r.counts == nil {
		r.counts = make(map[string]int)
	}
	r.counts[eventID] += n
}

// readState reads stateBefore's statement through database/sql (SQLite).
func (s *Store) readState(ctx context.Context, query, roomID, eventID string, r *stateRead) error {
	rows, err := s.query(ctx, s.db, query, roomID, eventID)
	if err != nil {
		return err
	}
	defer rows.Close()
	// Declared once, not per row: Scan takes their addresses, so each
	// would be a heap allocation per row (8 of the 11 per ID at 10^5).
	var (
		kind                                int
		rowRejected, rowOutlier, rowKnown   bool
		dist                                int
		eventType, stateKeyText, entryEvent sql.NullString
	)
	for rows.Next() {
		if err := rows.Scan(&kind, &rowRejected, &rowOutlier, &rowKnown, &dist, &eventType, &stateKeyText, &entryEvent); err != nil {
			return err
		}
		switch kind {
		case 0:
			r.found, r.rejected, r.outlier, r.known = true, rowRejected, rowOutlier, rowKnown
		case 1:
			addEntry(r.sc, eventType.String, stateKeyText.String, nearEntry{dist: dist, eventID: entryEvent.String, removed: !entryEvent.Valid})
		case 2:
			r.count(entryEvent.String, dist)
		case 3:
			r.uncounted = true
		}
	}
	return rows.Err()
}

// readStatePG reads stateBefore's statement on PostgreSQL with pgx itself,
// each row's raw column values, copying the strings it keeps into arenas.
// database/sql cost 6 allocations per entry (the driver's strings and
// values), and with Scan about 40% of the Go side's time at 10^5 members:
// paired runs on the same 10^5-member room took a median 64 ms per request
// this way, 121 ms through database/sql, and ~400 allocations instead of
// 600,000 (see bench/round3/stateids.md).
func (s *Store) readStatePG(ctx context.Context, query, roomID, eventID string, r *stateRead) error {
	var ids arena // the answer's event IDs: they outlive the call
	return s.queryRaw(ctx, query, []any{roomID, eventID}, func(vals [][]byte, fields []pgconn.FieldDescription) error {
		kind, err := pgInt(vals[0], fields[0].Format)
		if err != nil {
			return err
		}
		switch kind {
		case 0:
			r.found = true
			r.rejected, r.outlier, r.known = pgBool(vals[1], fields[1].Format), pgBool(vals[2], fields[2].Format), pgBool(vals[3], fields[3].Format)
		case 1:
			dist, err := pgInt(vals[4], fields[4].Format)
			if err != nil {
				return err
			}
			e := nearEntry{dist: dist, removed: vals[7] == nil}
			if !e.removed {
				e.eventID = ids.str(vals[7])
			}
			addEntry(r.sc, vals[5], vals[6], e)
		case 2:
			n, err := pgInt(vals[4], fields[4].Format)
			if err != nil {
				return err
			}
			r.count(string(vals[7]), n)
		case 3:
			r.uncounted = true
		}
		return nil
	})
}

// queryRaw runs query on PostgreSQL through pgx, counted and observed as
// query does, and hands row each row's raw values (valid until it returns).
func (s *Store) queryRaw(ctx context.Context, query string, args []any, row func(vals [][]byte, fields []pgconn.FieldDescription) error) error {
	s.queries.Add(1)
	query = s.dialect.rebind(query)
	if s.observe != nil {
		s.observe(query, args)
	}
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return withPgx(conn, func(c *pgx.Conn) error {
		rows, err := c.Query(ctx, query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		fields := rows.FieldDescriptions()
		for rows.Next() {
			if err := row(rows.RawValues(), fields); err != nil {
				return err
			}
		}
		return rows.Err()
	})
}

// pgInt decodes an integer column in either wire format.
func pgInt(v []byte, format int16) (int, error) {
	if format == pgtype.BinaryFormatCode {
		switch len(v) {
		case 2:
			return int(int16(binary.BigEndian.Uint16(v))), nil
		case 4:
			return int(int32(binary.BigEndian.Uint32(v))), nil
		case 8:
			return int(int64(binary.BigEndian.Uint64(v))), nil
		}
		return 0, fmt.Errorf("sqlstore: an integer of %d bytes", len(v))
	}
	return strconv.Atoi(string(v))
}

// pgBool decodes a boolean column in either wire format.
func pgBool(v []byte, format int16) bool {
	if format == pgtype.BinaryFormatCode {
		return len(v) == 1 && v[0] != 0
	}
	return len(v) == 1 && v[0] == 't'
}

// arena copies byte strings into large chunks it never moves, so that each
// string costs no allocation of its own.
type arena struct{ chunk []byte }

func (a *arena) str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if len(b) > cap(a.chunk)-len(a.chunk) {
		a.chunk = make([]byte, 0, max(64<<10, len(b)))
	}
	start := len(a.chunk)
	a.chunk = append(a.chunk, b...)
	return unsafe.String(&a.chunk[start], len(b))
}

// stateScratch is stateBefore's working memory, kept in stateScratchPool
// between calls: the entry nearest to the state's group for each key (the
// nearestEntries of one chain, with only what the answer needs). At 10^5
// members, nearestEntries' slice of 128-byte groupEntry values, grown by
// append and thrown away on every request, cost 68 ms of the 250 ms a
// request took (growslice and the zeroing of fresh large allocations).
type stateScratch struct {
	entries []nearEntry
	// index maps each key, encoded by keyBuf's rule (the type's length as
	// a uvarint, the type, the state key: unambiguous whatever the
	// strings hold), to its entry; keys copies the keys it holds.
	index  map[string]int
	keyBuf []byte
	keys   arena
}

// nearEntry is an entry of a group dist steps up the chain.
type nearEntry struct {
	dist    int
	eventID string
	removed bool
}

var stateScratchPool = sync.Pool{New: func() any { return new(stateScratch) }}

// lastStateSize is the number of keys of the last state stateBefore read,
// the size a fresh stateScratch starts with.
var lastStateSize atomic.Int64

// addEntry records e for the key (eventType, stateKey) unless a nearer
// group's entry has that key.
func addEntry[S string | []byte](sc *stateScratch, eventType, stateKey S, e nearEntry) {
	sc.keyBuf = binary.AppendUvarint(sc.keyBuf[:0], uint64(len(eventType)))
	sc.keyBuf = append(append(sc.keyBuf, eventType...), stateKey...)
	if i, ok := sc.index[string(sc.keyBuf)]; !ok {
		sc.index[sc.keys.str(sc.keyBuf)] = len(sc.entries)
		sc.entries = append(sc.entries, e)
	} else if e.dist < sc.entries[i].dist {
		sc.entries[i] = e
	}
}

// release empties sc, keeping its capacity (but not the keys' memory), and
// returns it to the pool.
func (sc *stateScratch) release() {
	clear(sc.entries) // drop the strings
	sc.entries = sc.entries[:0]
	clear(sc.index)
	sc.keys = arena{}
	stateScratchPool.Put(sc)
}

// authClosureQueries are, per dialect, the auth chain of a state from its
// direct auth events $1 (see StateIDs): those not rejected, and what the
// walk of authChainQueries reaches from them.
var authClosureQueries = perDialect(func(d dialect) string {
	return `
WITH RECURSIVE chain (event_nid, event_id) AS (
	SELECT event_nid, event_id FROM events WHERE event_id IN (IDS($1)) AND NOT rejected
	UNION
	SELECT x.event_nid, x.event_id FROM chain c ` + authLinks(d, "NOT x.rejected") + `
)
SELECT event_id FROM chain`
})

// authChainQueries are, per dialect, the walk of auth_links from the seeds
// $2 of room $1 (see AuthChain) through the events not rejected. The chain
// carries each event's ID with its nid, so that the answer needs no join
// of its own.
var authChainQueries = perDialect(func(d dialect) string {
	return `
WITH RECURSIVE chain (event_nid, event_id) AS (
	SELECT x.event_nid, x.event_id FROM events c ` + authLinks(d, "NOT x.rejected") + `
	WHERE UNINDEXED(c.room_id) = $1 AND c.event_id IN (IDS($2)) AND NOT c.rejected
	UNION
	SELECT x.event_nid, x.event_id FROM chain c ` + authLinks(d, "NOT x.rejected") + `
)
SELECT event_id FROM chain`
})

// authLinks joins the events c to the events x they link to in auth_links
// that match filter (which names x), each link an index probe (see probe):
// a plain join on SQLite. PostgreSQL estimates a recursive CTE's working
// table at hundreds of rows per step whatever it holds, and with integer
// keys on both sides it then merge-joins the links with a scan of the
// events' primary key, or hash-joins them with a sequential scan of events.
func authLinks(d dialect, filter string) string {
	return probe(d, "a.auth_nid", "auth_links", "a", "a.event_nid = c.event_nid", false, "") + `
	` + probe(d, "x.event_nid, x.event_id", "events", "x", "x.event_nid = a.auth_nid AND "+filter, true, "")
}

// perDialect is query built for each dialect.
func perDialect(query func(dialect) string) [2]string {
	return [2]string{sqlite: query(sqlite), postgres: query(postgres)}
}

// AuthChain returns the IDs of the events reachable from eventIDs through
// one or more auth links, without duplicates, in one recursive statement
// over auth_links. Add records there exactly the links the contract counts
// (an event's auth events held in its room when it was added, in room
// version 12 the create event among them), so the walk needs no room
// filter past the seeds. Rejected events are neither returned nor walked
// through, a rejected seed included; outliers are both. IDs the store does
// not hold in roomID contribute nothing, and a seed is in the answer only
// when the walk reaches it from another.
//
// UNION, not UNION ALL, makes the recursion terminate and visit each event
// once: both databases discard a row the recursion has already produced.
// Each step is an index lookup in auth_links (its primary key starts with
// event_nid) and one in events (by its primary key), so the cost is bounded
// by the answer's size, not the room's history.
func (s *Store) AuthChain(ctx context.Context, roomID string, eventIDs []string) ([]string, error) {
	if len(eventIDs) == 0 || !s.storable(roomID) {
		return nil, nil
	}
	rows, err := s.query(ctx, s.db, authChainQueries[s.dialect], roomID, s.idList(eventIDs))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: reading the auth chain of %d events: %w", len(eventIDs), err)
	}
	chain, err := scanIDs(rows)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: reading an auth chain: %w", err)
	}
	return chain, nil
}

// scanIDs reads rows of one string column, and closes them.
func scanIDs(rows *sql.Rows) ([]string, error) {
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}
