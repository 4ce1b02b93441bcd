package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	// The two database/sql drivers, "pgx" and "sqlite" (the latter also for
	// its error codes).
	_ "github.com/jackc/pgx/v5/stdlib"
	sqlitedriver "modernc.org/sqlite"

	"github.com/fedhistory/fedhistory"
	"github.com/matrix-org/gomatrixserverlib"
)

// Errors returned by Open. Add returns the root package's errors
// (fedhistory.ErrDuplicateEvent and the others), as memstore does.
var (
	// ErrUnsupportedDSN: the DSN names neither SQLite nor PostgreSQL.
	ErrUnsupportedDSN = errors.New("sqlstore: unsupported DSN")
	// ErrSchemaTooNew: the database was migrated by a newer build.
	ErrSchemaTooNew = errors.New("sqlstore: database schema is newer than this build")
)

// Store is a fedhistory.EventStore on a SQL database. It is safe for
// concurrent use, and several Stores (in several processes) may share one
// PostgreSQL database.
type Store struct {
	db      *sql.DB
	dialect dialect
	queries atomic.Int64

	// pdus caches parsed state events for state resolution. Parsing is the
	// expensive part of resolution's input (gomatrixserverlib hashes every
	// event of version 3 and later to learn its ID), and stored events never
	// change, so a parsed event stays valid for good.
	pdus pduCache

	// current caches each room's resolved current state for one set of
	// forward extremities, so that a forked room does not run state
	// resolution on every request. Keyed by room ID.
	currentMu sync.Mutex
	current   map[string]*resolvedCurrent

	// observe, when set (by tests), sees every counted statement as the
	// database receives it: the text after rebind and the arguments.
	observe func(query string, args []any)

	// walkRowLimit caps the rows of one walk candidate query (see walk.go);
	// tests lower it to exercise the walks' fallback.
	walkRowLimit int
}

// Open opens (creating if need be) the database named by dsn and brings its
// schema up to date:
//
//   - "sqlite:/path/to/file.db" (or "sqlite:relative.db") opens an SQLite
//     database file, in WAL mode; "sqlite::memory:" a private in-memory
//     database, which lives as long as the Store.
//   - "postgres://…" or "postgresql://…" opens a PostgreSQL database (a
//     pgx connection string: search_path and other run-time parameters may
//     be given as query parameters).
//
// Migrations are idempotent, and several processes may open the same
// database at once (see migrate).
func Open(ctx context.Context, dsn string) (*Store, error) {
	var (
		db  *sql.DB
		d   dialect
		err error
	)
	switch {
	case strings.HasPrefix(dsn, "sqlite:"):
		d = sqlite
		db, err = openSQLite(strings.TrimPrefix(dsn, "sqlite:"))
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		d = postgres
		db, err = sql.Open("pgx", dsn)
	default:
		return nil, fmt.Errorf("%w: want sqlite:… or postgres://…", ErrUnsupportedDSN)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlstore: opening %s database: %w", d, err)
	}
	s := &Store{db: db, dialect: d, current: make(map[string]*resolvedCurrent), walkRowLimit: maxWalkRows}
	if err := ping(ctx, db, d); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlstore: connecting to %s database: %w", d, err)
	}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// ping makes the first connection. For SQLite it retries while the file is
// locked: the first connections to a fresh file switch it to WAL, and SQLite
// answers a concurrent switch with SQLITE_BUSY at once rather than through
// the busy timeout, so several processes (or Opens) starting together would
// otherwise fail. The retries stop with ctx, or after sqliteBusyWait.
func ping(ctx context.Context, db *sql.DB, d dialect) error {
	deadline := time.Now().Add(sqliteBusyWait)
	for delay := time.Millisecond; ; delay = min(2*delay, 100*time.Millisecond) {
		err := db.PingContext(ctx)
		var sqliteErr *sqlitedriver.Error
		if err == nil || d != sqlite || !errors.As(err, &sqliteErr) ||
			sqliteErr.Code()&0xff != sqliteBusy || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
}

// sqliteBusy is SQLite's primary result code SQLITE_BUSY; sqliteBusyWait
// matches the busy_timeout pragma below.
const (
	sqliteBusy     = 5
	sqliteBusyWait = 10 * time.Second
)

// openSQLite opens an SQLite database with the settings the store relies on.
func openSQLite(path string) (*sql.DB, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: empty SQLite path", ErrUnsupportedDSN)
	}
	memory := path == ":memory:"
	// busy_timeout makes a connection wait for another's write lock instead
	// of failing at once; _txlock=immediate takes the write lock when a
	// transaction begins (the store only uses transactions to write), so
	// that two writers never both read and then fail to upgrade their lock.
	params := "_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)&_txlock=immediate"
	if !memory {
		// WAL lets readers proceed while one connection writes; a 32 MiB
		// page cache per connection (SQLite's default is 2 MiB) holds the
		// indexes a walk touches in a large room.
		params += "&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=cache_size(-32768)"
	}
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	db, err := sql.Open("sqlite", path+sep+params)
	if err != nil {
		return nil, err
	}
	if memory {
		// Every connection to ":memory:" is a database of its own: keep
		// exactly one, for ever.
		db.SetMaxOpenConns(1)
		db.SetMaxIdleConns(1)
		db.SetConnMaxLifetime(0)
		db.SetConnMaxIdleTime(0)
	}
	return db, nil
}

// Close closes the database.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("sqlstore: closing: %w", err)
	}
	return nil
}

// Queries returns the number of SQL statements the store has run so far,
// migrations excluded: for tests and for the queries/op benchmark metric.
func (s *Store) Queries() int64 { return s.queries.Load() }

// querier is what *sql.DB and *sql.Tx have in common.
type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// query, queryRow and exec run one counted statement on q (the database or
// a transaction), after expanding the query's macros for the dialect.
func (s *Store) query(ctx context.Context, q querier, query string, args ...any) (*sql.Rows, error) {
	s.queries.Add(1)
	query = s.dialect.rebind(query)
	if s.observe != nil {
		s.observe(query, args)
	}
	return q.QueryContext(ctx, query, args...)
}

func (s *Store) queryRow(ctx context.Context, q querier, query string, args ...any) *sql.Row {
	s.queries.Add(1)
	query = s.dialect.rebind(query)
	if s.observe != nil {
		s.observe(query, args)
	}
	return q.QueryRowContext(ctx, query, args...)
}

func (s *Store) exec(ctx context.Context, q querier, query string, args ...any) (sql.Result, error) {
	s.queries.Add(1)
	query = s.dialect.rebind(query)
	if s.observe != nil {
		s.observe(query, args)
	}
	return q.ExecContext(ctx, query, args...)
}

// jsonList encodes ids as the JSON array that the IDS($n) macro expects.
func jsonList(ids []string) string {
	if ids == nil {
		return "[]"
	}
	data, err := json.Marshal(ids)
	if err != nil {
		// Marshalling a []string cannot fail: invalid UTF-8 is replaced.
		panic(fmt.Sprintf("sqlstore: encoding IDs: %v", err))
	}
	return string(data)
}

// storable reports whether v can be stored in (and so compared with) a text
// column. PostgreSQL's text holds neither NUL characters nor invalid UTF-8,
// and refuses such a parameter with an error; a request carrying one (a
// forged room or event ID) must instead find nothing, as on SQLite.
func (s *Store) storable(v string) bool {
	return s.dialect != postgres || (utf8.ValidString(v) && !strings.ContainsRune(v, 0))
}

// idList is jsonList without the IDs the database cannot hold.
func (s *Store) idList(ids []string) string {
	if s.dialect != postgres {
		return jsonList(ids)
	}
	kept := make([]string, 0, len(ids))
	for _, id := range ids {
		if s.storable(id) {
			kept = append(kept, id)
		}
	}
	return jsonList(kept)
}

// pduCache is a bounded cache of parsed events by event ID.
type pduCache struct {
	mu     sync.Mutex
	parsed map[string]cachedPDU
}

// cachedPDU is a parsed event and the bytes it was parsed from.
type cachedPDU struct {
	json []byte
	pdu  gomatrixserverlib.PDU
}

// maxCachedPDUs bounds pduCache. When full the cache starts afresh: simpler
// than LRU, and state resolution's working set (a room's state and auth
// chains) is far smaller.
const maxCachedPDUs = 50_000

// get returns the event parsed from data under id, if cached.
func (c *pduCache) get(id string, data []byte) (gomatrixserverlib.PDU, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cached, ok := c.parsed[id]
	if !ok || !bytes.Equal(cached.json, data) {
		return nil, false
	}
	return cached.pdu, true
}

func (c *pduCache) put(id string, data []byte, pdu gomatrixserverlib.PDU) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.parsed == nil || len(c.parsed) >= maxCachedPDUs {
		c.parsed = make(map[string]cachedPDU)
	}
	c.parsed[id] = cachedPDU{json: data, pdu: pdu}
}

var (
	_ fedhistory.EventStore          = (*Store)(nil)
	_ fedhistory.ErasureStore        = (*Store)(nil)
	_ fedhistory.BackfillWalker      = (*Store)(nil)
	_ fedhistory.MissingEventsWalker = (*Store)(nil)
)
