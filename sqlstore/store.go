package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	// The two database/sql drivers, "pgx" and "sqlite" (the latter also for
	// its error codes).
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	sqlitedriver "modernc.org/sqlite"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/setting"
	"github.com/matrix-org/gomatrixserverlib"
)

// Errors returned by Open. Add returns the root package's errors
// (fedhistory.ErrDuplicateEvent and the others), as memstore does.
var (
	// ErrUnsupportedDSN: the DSN names neither SQLite nor PostgreSQL.
	ErrUnsupportedDSN = errors.New("sqlstore: unsupported DSN")
	// ErrSchemaTooNew: the database was migrated by a newer build.
	ErrSchemaTooNew = errors.New("sqlstore: database schema is newer than this build")
	// ErrSchemaTooOld: the database's schema is behind this build (or
	// absent) and Open was not asked to migrate it; run Migrate (the
	// command line's "fedhistory migrate --db …").
	ErrSchemaTooOld = errors.New("sqlstore: database schema is older than this build")
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

	// current caches each forked room's resolved current state for one set
	// of forward extremities, so that a forked room does not run state
	// resolution on every request. Keyed by room ID, bounded by bytes.
	current *lru[string, *resolvedCurrent]

	// observe, when set (by tests), sees every counted statement as the
	// database receives it: the text after rebind and the arguments.
	observe func(query string, args []any)

	// Answer caches, each bounded by Options.CacheBytes (see cache.go):
	//   - roomVersions: a room's version never changes once stored;
	//   - erased: whether a user is erased, for Options.StaleAfter (another
	//     process may erase a user; EraseUser here updates the entry);
	//   - currentStates: CurrentState's answer per (current state group,
	//     server). A state group's entries never change, and neither do the
	//     memberships of its events; the ACL's content can, when a redaction
	//     of the ACL event arrives, so entries also expire after StaleAfter,
	//     and every Add through this Store clears the cache.
	staleAfter    time.Duration
	roomVersions  *lru[string, string]
	erased        *lru[string, bool]
	currentStates *lru[currentStateKey, *fedhistory.CurrentState]

	// statements are SQLite's prepared statements by query text: the
	// SQLite driver prepares every statement anew, while pgx keeps a
	// statement cache per connection itself.
	statements sync.Map // string → *sql.Stmt

	// walkRowLimit caps the rows of one walk candidate query (see walk.go);
	// tests lower it to exercise the walks' fallback.
	walkRowLimit int
	// addChunk is the events AddBatch works out and writes at a time (see
	// addChunkEvents); tests lower it to cross chunk boundaries everywhere.
	addChunk int
	// maxHeldEntries and maxHeldAuthLinks bound what an AddBatch
	// transaction keeps of the state it wrote (see batchWriter.forget);
	// tests set them to 0 to make it read everything back.
	maxHeldEntries, maxHeldAuthLinks int
}

// Options configure Open. Their zero values are safe defaults: a pool
// sized for the machine, caches of a few MiB, and no writes.
type Options struct {
	// Migrate brings the schema up to date before the Store is returned.
	// Without it Open only reads the schema version, and fails with
	// ErrSchemaTooOld when the database is behind: a server that only
	// serves never writes, so it can run with a read-only role or on a read
	// replica. An in-memory SQLite database is always migrated (it starts
	// empty and lives only as long as the Store).
	Migrate bool

	// MaxOpenConns caps the connections to the database; 0 means
	// 2×GOMAXPROCS+8, and a value set here is never exceeded. Keep the sum
	// over every process sharing a PostgreSQL server below its
	// max_connections.
	MaxOpenConns int
	// MaxIdleConns is how many connections stay open when idle; 0 means
	// MaxOpenConns, so that a steady load never opens and closes
	// connections (database/sql's default keeps 2).
	MaxIdleConns int
	// ConnMaxLifetime and ConnMaxIdleTime retire connections, so that a
	// pool follows a database failover or a changed DNS record; 0 means 30
	// and 5 minutes, a negative value never.
	ConnMaxLifetime time.Duration
	ConnMaxIdleTime time.Duration

	// CacheBytes bounds each of the Store's answer caches (see Store); 0
	// means 8 MiB. One of them holds the resolved current state of rooms
	// with several forward extremities (about 150 bytes per state entry): a
	// forked room whose state does not fit is resolved on every request.
	CacheBytes int
	// StaleAfter is how long the answers that another process can change
	// stay cached: erasures (ErasedUsers) and the current server ACL, which
	// a redaction can empty. 0 means 30 seconds; a negative value disables
	// those caches. Changes made through this Store take effect at once.
	StaleAfter time.Duration
}

// Defaults of Options.
const (
	defaultConnMaxLifetime = 30 * time.Minute
	defaultConnMaxIdleTime = 5 * time.Minute
	defaultCacheBytes      = 8 << 20
	defaultStaleAfter      = 30 * time.Second
)

// withDefaults fills in the zero fields.
func (o Options) withDefaults() Options {
	setting.Default(&o.MaxOpenConns, 2*runtime.GOMAXPROCS(0)+8)
	if o.MaxIdleConns <= 0 || o.MaxIdleConns > o.MaxOpenConns {
		o.MaxIdleConns = o.MaxOpenConns
	}
	if o.ConnMaxLifetime == 0 {
		o.ConnMaxLifetime = defaultConnMaxLifetime
	}
	if o.ConnMaxIdleTime == 0 {
		o.ConnMaxIdleTime = defaultConnMaxIdleTime
	}
	setting.Default(&o.CacheBytes, defaultCacheBytes)
	if o.StaleAfter == 0 {
		o.StaleAfter = defaultStaleAfter
	}
	return o
}

// Open opens the database named by dsn:
//
//   - "sqlite:/path/to/file.db" (or "sqlite:relative.db") opens an SQLite
//     database file, in WAL mode; "sqlite::memory:" a private in-memory
//     database, which lives as long as the Store.
//   - "postgres://…" or "postgresql://…" opens a PostgreSQL database (a
//     pgx connection string: search_path and other run-time parameters may
//     be given as query parameters).
//
// Without opts.Migrate (or Migrate beforehand), the schema must be current:
// Open then only reads, and fails with ErrSchemaTooOld or ErrSchemaTooNew.
// Migrations are idempotent, and several processes may migrate the same
// database at once (see migrate).
//
// On PostgreSQL the store's sessions run with jit=off unless the DSN sets
// jit: its statements are short index lookups, but the planner's estimates
// for their recursive queries are high enough to make PostgreSQL spend
// ~350 ms compiling the auth chain query of a 10^4-member room, which then
// runs in ~120 ms (/state_ids at 646–838 ms/op with JIT, 122 ms without).
func Open(ctx context.Context, dsn string, opts Options) (*Store, error) {
	o := opts.withDefaults()
	var (
		db  *sql.DB
		d   dialect
		err error
	)
	memory := false
	switch {
	case strings.HasPrefix(dsn, "sqlite:"):
		d = sqlite
		path := strings.TrimPrefix(dsn, "sqlite:")
		memory = path == ":memory:"
		db, err = openSQLite(path)
	case strings.HasPrefix(dsn, "postgres://"), strings.HasPrefix(dsn, "postgresql://"):
		d = postgres
		db, err = openPostgres(dsn)
	default:
		return nil, fmt.Errorf("%w: want sqlite:… or postgres://…", ErrUnsupportedDSN)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlstore: opening %s database: %w", d, err)
	}
	if !memory {
		configurePool(db, o)
	}
	s := &Store{
		db: db, dialect: d, current: newLRU[string, *resolvedCurrent](o.CacheBytes), walkRowLimit: maxWalkRows, addChunk: addChunkEvents,
		maxHeldEntries: maxHeldEntries, maxHeldAuthLinks: maxHeldAuthLinks,
		staleAfter:    o.StaleAfter,
		roomVersions:  newLRU[string, string](o.CacheBytes),
		erased:        newLRU[string, bool](o.CacheBytes),
		currentStates: newLRU[currentStateKey, *fedhistory.CurrentState](o.CacheBytes),
	}
	if err := ping(ctx, db, d); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqlstore: connecting to %s database: %w", d, err)
	}
	if o.Migrate || memory {
		err = s.migrate(ctx)
	} else {
		err = s.checkSchema(ctx)
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// Migrate brings the schema of the database named by dsn up to date (see
// Open for the DSNs), creating it in an empty database. Serving processes
// never do this themselves: run it (or "fedhistory migrate --db …") with a
// role that may change the schema before starting them.
func Migrate(ctx context.Context, dsn string) error {
	s, err := Open(ctx, dsn, Options{Migrate: true, MaxOpenConns: 1})
	if err != nil {
		return err
	}
	return s.Close()
}

// openPostgres opens a pool on the pgx DSN, with jit=off for every session
// unless the DSN says otherwise (see Open).
func openPostgres(dsn string) (*sql.DB, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	if _, set := cfg.RuntimeParams["jit"]; !set {
		cfg.RuntimeParams["jit"] = "off"
	}
	return stdlib.OpenDB(*cfg), nil
}

// configurePool applies the pool options to db.
func configurePool(db *sql.DB, o Options) {
	db.SetMaxOpenConns(o.MaxOpenConns)
	db.SetMaxIdleConns(o.MaxIdleConns)
	db.SetConnMaxLifetime(max(o.ConnMaxLifetime, 0))
	db.SetConnMaxIdleTime(max(o.ConnMaxIdleTime, 0))
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

// The page cache of an SQLite connection (SQLite's default is 2 MiB), and
// the bounds of that of the connection an import (an AddSeq, an AddBatch of
// at least sqliteImportMinEvents) writes with (see addBatch).
const (
	sqliteCacheKiB          = 32 << 10
	sqliteImportCacheMinKiB = 256 << 10
	sqliteImportCacheMaxKiB = 512 << 10
	// sqliteImportMinEvents is the smallest AddBatch that gets the
	// import's cache (a sequence always does).
	sqliteImportMinEvents = 1000
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
		params += fmt.Sprintf("&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=cache_size(-%d)", sqliteCacheKiB)
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
	s.statements.Range(func(_, stmt any) bool {
		stmt.(*sql.Stmt).Close()
		return true
	})
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
	if stmt := s.prepared(ctx, q, query); stmt != nil {
		return stmt.QueryContext(ctx, args...)
	}
	return q.QueryContext(ctx, query, args...)
}

func (s *Store) queryRow(ctx context.Context, q querier, query string, args ...any) *sql.Row {
	s.queries.Add(1)
	query = s.dialect.rebind(query)
	if s.observe != nil {
		s.observe(query, args)
	}
	if stmt := s.prepared(ctx, q, query); stmt != nil {
		return stmt.QueryRowContext(ctx, args...)
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

// prepared returns SQLite's prepared statement of query when q is the
// database itself (a transaction's statements stay unprepared: they write,
// rarely), or nil. database/sql prepares a Stmt once per connection and
// keeps it; query is a constant (see dialect.rebind), so the map holds one
// entry per statement of the store.
func (s *Store) prepared(ctx context.Context, q querier, query string) *sql.Stmt {
	if s.dialect != sqlite || q != querier(s.db) {
		return nil
	}
	if stmt, ok := s.statements.Load(query); ok {
		return stmt.(*sql.Stmt)
	}
	stmt, err := s.db.PrepareContext(ctx, query)
	if err != nil {
		return nil // the unprepared statement reports the error
	}
	if existing, loaded := s.statements.LoadOrStore(query, stmt); loaded {
		stmt.Close()
		return existing.(*sql.Stmt)
	}
	return stmt
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
