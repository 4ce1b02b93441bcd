package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
)

// migrations are the schema changes in order; migrations[i] takes the schema
// from version i to version i+1. Never edit a released migration: append a
// new one.
//
// The SQL is shared by both dialects; dialect.schema rewrites the few types
// that differ (see there).
var migrations = []string{
	// 1: the initial schema.
	`
CREATE TABLE rooms (
	room_id      TEXT PRIMARY KEY,
	room_version TEXT NOT NULL
);

-- state_groups are room states stored as deltas: a group's state is its
-- parent's state with its own entries applied. chain_length counts the
-- deltas down to the nearest snapshot (a group without parent, which holds
-- the whole state), so reading a group never costs more than
-- maxDeltaChain+1 groups' entries. (Since version 3 the chains are
-- levelled: see newGroup.)
CREATE TABLE state_groups (
	group_id     ID_PRIMARY_KEY,
	room_id      TEXT NOT NULL,
	parent_id    BIGINT REFERENCES state_groups (group_id),
	chain_length INTEGER NOT NULL
);

-- state_group_entries: (type, state_key) -> event_id; a NULL event_id
-- removes the key inherited from the parent (state resolution can drop a
-- key). member_server is the server part of an m.room.member state key
-- (everything after the first colon, port included), so the memberships of
-- one server's users are an indexed equality filter.
CREATE TABLE state_group_entries (
	group_id      BIGINT NOT NULL REFERENCES state_groups (group_id),
	event_type    TEXT NOT NULL,
	state_key     TEXT NOT NULL,
	event_id      TEXT,
	member_server TEXT,
	PRIMARY KEY (group_id, event_type, state_key)
);
CREATE INDEX state_group_entries_member_server ON state_group_entries (group_id, member_server);

-- events holds every PDU with the metadata fedhistory.Event carries.
-- prev_events is a JSON array of the event IDs in order (the edges table
-- holds the same for recursive walks); before_group and after_group are the
-- state before and after the event (NULL: the empty state; both NULL for
-- outliers, whose state is unknown). membership and history_visibility are
-- content fields of m.room.member and m.room.history_visibility events.
CREATE TABLE events (
	event_nid          ID_PRIMARY_KEY,
	event_id           TEXT NOT NULL UNIQUE,
	room_id            TEXT NOT NULL,
	depth              BIGINT NOT NULL,
	prev_events        TEXT NOT NULL,
	event_type         TEXT NOT NULL,
	state_key          TEXT,
	sender             TEXT NOT NULL,
	redacts            TEXT NOT NULL,
	rejected           BOOLEAN NOT NULL,
	outlier            BOOLEAN NOT NULL,
	membership         TEXT,
	history_visibility TEXT,
	before_group       BIGINT REFERENCES state_groups (group_id),
	after_group        BIGINT REFERENCES state_groups (group_id),
	json               BLOB_TYPE NOT NULL
);
CREATE UNIQUE INDEX events_room_event ON events (room_id, event_id);
CREATE INDEX events_room_depth ON events (room_id, depth);

-- edges: one row per entry of an event's prev_events, ord its position.
CREATE TABLE edges (
	event_id      TEXT NOT NULL,
	ord           INTEGER NOT NULL,
	prev_event_id TEXT NOT NULL,
	room_id       TEXT NOT NULL,
	PRIMARY KEY (event_id, ord)
);
CREATE INDEX edges_prev ON edges (prev_event_id);

-- auth_edges: the auth_events of a state event that were, when it was added,
-- state events of the same room held here: the auth chains state resolution
-- reads.
CREATE TABLE auth_edges (
	event_id      TEXT NOT NULL,
	auth_event_id TEXT NOT NULL,
	PRIMARY KEY (event_id, auth_event_id)
);

-- forward_extremities: the state-bearing events (neither outlier nor
-- rejected) that no state-bearing event names as a prev_event.
CREATE TABLE forward_extremities (
	room_id  TEXT NOT NULL,
	event_id TEXT NOT NULL,
	PRIMARY KEY (room_id, event_id)
);

CREATE TABLE erased_users (
	user_id TEXT PRIMARY KEY
);
`,
	// 2: the round-two store contract (#12): timestamps, applied
	// redactions, fail-closed state. upgradeToV2 fills in, for the rows of
	// a version 1 database, what SQL alone cannot portably derive.
	`
-- origin_server_ts: the event's field, for Event.OriginServerTS and the
-- timestamp lookup, whose index orders ties as the contract does.
ALTER TABLE events ADD COLUMN origin_server_ts BIGINT NOT NULL DEFAULT 0;
CREATE INDEX events_room_timestamp ON events (room_id, origin_server_ts, depth, event_id);

-- redacted: the store holds a redaction of the event that applies (see
-- "Redactions" on fedhistory.EventStore).
ALTER TABLE events ADD COLUMN redacted BOOLEAN NOT NULL DEFAULT FALSE;

-- state_known: the store knows the state before (and so after) the event.
-- When false, before_group and after_group are NULL and mean nothing; when
-- true, NULL is the empty state, as in version 1.
ALTER TABLE events ADD COLUMN state_known BOOLEAN NOT NULL DEFAULT FALSE;

-- pending_redactions: redactions whose target the store did not hold when
-- they were added, with whether their sender could redact others' events
-- in the state before them (judged then, once). Rows go when the target
-- arrives.
CREATE TABLE pending_redactions (
	target_id         TEXT NOT NULL,
	redaction_id      TEXT NOT NULL,
	sender_may_redact BOOLEAN NOT NULL,
	PRIMARY KEY (target_id, redaction_id)
);

-- Version 1 took a missing or outlier prev_event for the empty state. Its
-- derived states stay, but are no longer trusted where a gap lies upstream:
-- the state is unknown for an outlier, for an event other than a create
-- event with no prev_events or with one not held in its room or an
-- outlier, and for every descendant of such an event.
UPDATE events SET state_known = NOT outlier;
UPDATE events SET state_known = FALSE
WHERE NOT (event_type = 'm.room.create' AND state_key = '') AND event_id IN (
	WITH RECURSIVE unknown (event_id) AS (
		SELECT e.event_id FROM events e
		WHERE NOT e.outlier AND NOT (e.event_type = 'm.room.create' AND e.state_key = '') AND (
			NOT EXISTS (SELECT 1 FROM edges ed WHERE ed.event_id = e.event_id)
			OR EXISTS (
				SELECT 1 FROM edges ed LEFT JOIN events p ON p.event_id = ed.prev_event_id
				WHERE ed.event_id = e.event_id AND (p.event_id IS NULL OR p.room_id <> e.room_id OR p.outlier)))
		UNION
		SELECT ed.event_id FROM unknown u JOIN edges ed ON ed.prev_event_id = u.event_id
	)
	SELECT event_id FROM unknown
);
`,
	// 3: levelled state groups (see newGroup): a delta group's level, which
	// says what its entries are relative to. Groups of version 2 are level
	// 0 deltas or snapshots (no parent), which is what they are.
	`
ALTER TABLE state_groups ADD COLUMN level INTEGER NOT NULL DEFAULT 0;
`,
	// 4: counted auth events per state group (see authCounts), so that
	// /state_ids reads its auth chain's start instead of looking up the
	// auth events of every state event. Groups written before are not
	// counted (auth_counted false): a state whose chain holds one is
	// walked event by event, as before.
	`
ALTER TABLE state_groups ADD COLUMN auth_counted BOOLEAN NOT NULL DEFAULT FALSE;

-- state_group_auth: per state group, for each event A, n = (the number of
-- events of the group's state with an auth_edges link to A) minus (that
-- number for its parent's state; 0 for a snapshot). Summed along a delta
-- chain, n counts the links from the state to A: the events with a positive
-- sum are the state's direct auth events. Rows with n = 0 are not written.
CREATE TABLE state_group_auth (
	group_id      BIGINT NOT NULL REFERENCES state_groups (group_id),
	auth_event_id TEXT NOT NULL,
	n             INTEGER NOT NULL,
	PRIMARY KEY (group_id, auth_event_id)
);
`,
	// 5: the links between events keyed by the linking event's event_nid
	// instead of its ID. An event's nid is assigned in the order events
	// are added, so an import appends to these tables' indexes instead of
	// inserting at random places in B-trees keyed by hash-like IDs: at
	// 10^6 events the old primary keys no longer fit a default
	// PostgreSQL's shared_buffers, and an import spent most of its time
	// writing out and reading back their pages (BENCHMARKS.md, "Round
	// seven"). A prev_event is still named by its ID: it may not be held.
	// An auth link only ever points to an event held in the room (see
	// auth_links), so both of its ends are nids. The second unique index on
	// events' IDs goes too (UNINDEXED keeps SQLite's planner from reading
	// whole rooms without it).
	`
-- prev_edges: one row per entry of an event's prev_events, ord its
-- position (edges before version 5).
CREATE TABLE prev_edges (
	event_nid     BIGINT NOT NULL,
	ord           INTEGER NOT NULL,
	prev_event_id TEXT NOT NULL,
	PRIMARY KEY (event_nid, ord)
) WITHOUT_ROWID;
INSERT INTO prev_edges (event_nid, ord, prev_event_id)
SELECT e.event_nid, ed.ord, ed.prev_event_id FROM edges ed JOIN events e ON e.event_id = ed.event_id;
CREATE INDEX prev_edges_prev ON prev_edges (prev_event_id);
DROP TABLE edges;

-- auth_links: an event's auth events that were, when it was added, held in
-- its room (auth_edges before version 5): the auth chains of the auth chain
-- endpoints and of state resolution, which follows the links between state
-- events.
-- The unique index on (room_id, event_id) goes: event_id is unique by
-- itself, and an import paid for a second B-tree keyed by event ID.
DROP INDEX events_room_event;

CREATE TABLE auth_links (
	event_nid BIGINT NOT NULL,
	auth_nid  BIGINT NOT NULL,
	PRIMARY KEY (event_nid, auth_nid)
) WITHOUT_ROWID;
INSERT INTO auth_links (event_nid, auth_nid)
SELECT e.event_nid, a.event_nid
FROM auth_edges l JOIN events e ON e.event_id = l.event_id JOIN events a ON a.event_id = l.auth_event_id;
DROP TABLE auth_edges;
`,
}

// upgrades are the steps of a migration that need Go (parsing stored JSON,
// the redaction rules): upgrades[v] runs right after migration v's SQL, in
// the same transaction.
var upgrades = map[int]func(ctx context.Context, s *Store, tx *sql.Tx) error{
	2: upgradeToV2,
}

// migrate brings the schema up to date inside one transaction. On
// PostgreSQL the transaction first takes an advisory lock, so that several
// processes opening one database at once apply each migration once: the
// others wait, then find the schema current. On SQLite the transaction is
// BEGIN IMMEDIATE (see openSQLite), which takes the database's write lock.
func (s *Store) migrate(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlstore: migrating: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	if s.dialect == postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, migrationLockKey); err != nil {
			return fmt.Errorf("sqlstore: locking for migration: %w", err)
		}
	}
	if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("sqlstore: creating schema_version: %w", err)
	}
	var version int
	err = tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&version)
	switch {
	case err == sql.ErrNoRows:
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version) VALUES (0)`); err != nil {
			return fmt.Errorf("sqlstore: initialising schema_version: %w", err)
		}
	case err != nil:
		return fmt.Errorf("sqlstore: reading schema_version: %w", err)
	}
	if version > len(migrations) {
		return fmt.Errorf("%w: database is at version %d, this build knows %d", ErrSchemaTooNew, version, len(migrations))
	}
	for v := version; v < len(migrations); v++ {
		for _, stmt := range splitStatements(s.dialect.schema(migrations[v])) {
			if _, err := tx.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("sqlstore: migration %d: %w", v+1, err)
			}
		}
		if upgrade := upgrades[v+1]; upgrade != nil {
			if err := upgrade(ctx, s, tx); err != nil {
				return fmt.Errorf("sqlstore: migration %d: %w", v+1, err)
			}
		}
	}
	if version < len(migrations) {
		if _, err := tx.ExecContext(ctx, s.dialect.rebind(`UPDATE schema_version SET version = $1`), len(migrations)); err != nil {
			return fmt.Errorf("sqlstore: updating schema_version: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sqlstore: committing migrations: %w", err)
	}
	return nil
}

// checkSchema reads the schema version, and only reads: it fails with
// ErrSchemaTooOld when the database is behind this build (or has no schema
// yet), ErrSchemaTooNew when it is ahead.
func (s *Store) checkSchema(ctx context.Context) error {
	exists := `SELECT to_regclass('schema_version') IS NOT NULL`
	if s.dialect == sqlite {
		exists = `SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version')`
	}
	var found bool
	if err := s.db.QueryRowContext(ctx, exists).Scan(&found); err != nil {
		return fmt.Errorf("sqlstore: looking for schema_version: %w", err)
	}
	version := 0
	if found {
		err := s.db.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&version)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("sqlstore: reading schema_version: %w", err)
		}
	}
	switch {
	case version < len(migrations):
		return fmt.Errorf("%w: database is at version %d, this build needs %d: run `fedhistory migrate --db …` (or sqlstore.Migrate) with a role that may change the schema",
			ErrSchemaTooOld, version, len(migrations))
	case version > len(migrations):
		return fmt.Errorf("%w: database is at version %d, this build knows %d", ErrSchemaTooNew, version, len(migrations))
	}
	return nil
}

// migrationLockKey is the PostgreSQL advisory lock that serialises
// migrations: an arbitrary constant ("fedhist" in ASCII).
const migrationLockKey int64 = 0x6665646869737400

// splitStatements splits a migration at semicolons that end a line. The
// migrations contain no string literals with semicolons, so this is enough,
// and it spares both drivers from multi-statement Exec, which pgx's extended
// protocol does not allow.
func splitStatements(script string) []string {
	var stmts []string
	for _, part := range strings.Split(script, ";\n") {
		var lines []string
		for _, line := range strings.Split(part, "\n") {
			if trimmed := strings.TrimSpace(line); trimmed != "" && !strings.HasPrefix(trimmed, "--") {
				lines = append(lines, line)
			}
		}
		if len(lines) > 0 {
			stmts = append(stmts, strings.TrimSuffix(strings.Join(lines, "\n"), ";"))
		}
	}
	return stmts
}
