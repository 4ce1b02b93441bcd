package sqlstore

// Benchmarks of the full signed request over the SQL stores: X-Matrix
// verification with the real sign.Verifier (keys pinned), fedhistory.New's
// handler, and the store underneath, in synthetic rooms with realistic
// state (internal/synthroom). Besides ns/op they report the statements a
// request costs (stmts/op) and the latency percentiles (p50-ms, p99-ms) of
// the timed requests. The 10^6-event rooms are built only with
// FEDHISTORY_BENCH_LARGE=1, and built once: see benchDatabase.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/benchsign"
	"github.com/fedhistory/fedhistory/internal/synthroom"
)

const (
	// largeBenchEnv enables the large rooms (10^6 events, 10^5 members), as
	// in the root package.
	largeBenchEnv = "FEDHISTORY_BENCH_LARGE"
	// hugeBenchEnv enables the 10^7-event handler room, for a run by hand:
	// its PostgreSQL build takes about half an hour and 30 GB.
	hugeBenchEnv = "FEDHISTORY_BENCH_HUGE"
	// benchDestination is the server the requests are addressed to.
	benchDestination = "history.example"
	// handlerBackfillLimit and handlerMissingLimit are the limits of the
	// benchmarked requests.
	handlerBackfillLimit = 100
	handlerMissingLimit  = 20
	// benchRoomFormat names the generator's output format: bump it when a
	// change to the benchmark rooms must not reuse cached databases.
	benchRoomFormat = 2
)

// handlerOrigins are the requesting servers: sixteen, each with a user
// joined during the setup.
var handlerOrigins = func() []string {
	origins := make([]string, 16)
	for i := range origins {
		origins[i] = "origin" + strconv.Itoa(i) + ".example"
	}
	return origins
}()

// handlerRoomOptions is the shape of every handler benchmark room: 1% of
// the events are joins of users of 1000 servers (10^4 members at 10^6
// events), one in 1000 a history visibility change or a server ACL.
func handlerRoomOptions() synthroom.Options {
	members := make([]string, len(handlerOrigins))
	for i, origin := range handlerOrigins {
		members[i] = "@bob:" + origin
	}
	return synthroom.Options{
		Shape:             synthroom.Linear,
		MessageBytes:      1024,
		HistoryVisibility: "joined",
		Members:           members,
		JoinEvery:         100,
		JoinServers:       1000,
		StateEvery:        1000,
	}
}

// handlerRoomSizes are the rooms of the handler benchmarks: 10^4, 10^6
// and 10^7 events of the handler room, and a room short but with 10^4
// members and about 10^6 state entries. A room whose env is set is built
// only when that variable is "1".
var handlerRoomSizes = []struct {
	name string
	opts func() synthroom.Options
	n    int
	env  string
}{
	{"events=1e4", handlerRoomOptions, 10_000, ""},
	{"events=1e6", handlerRoomOptions, 1_000_000, largeBenchEnv},
	{"events=1e7", handlerRoomOptions, 10_000_000, hugeBenchEnv},
	{"state=1e6", stateHeavyRoomOptions, stateHeavyRoomEvents, ""},
}

// benchRoomInfo is what a benchmark needs to know of a built room.
type benchRoomInfo struct {
	RoomID string
	IDs    []string // the synthetic events, oldest first
}

// benchFixture is a handler over a store holding a room.
type benchFixture struct {
	store   *Store
	room    benchRoomInfo
	handler http.Handler
	origins *benchsign.Origins
}

var benchFixtures struct {
	mu       sync.Mutex
	fixtures map[string]*benchFixture
}

// handlerFixture returns the fixture of the dialect and room size, built
// (or opened from the cache) once per process.
func handlerFixture(b *testing.B, dialect, name string, opts synthroom.Options, n int) *benchFixture {
	b.Helper()
	benchFixtures.mu.Lock()
	defer benchFixtures.mu.Unlock()
	key := dialect + "/" + name
	if f, ok := benchFixtures.fixtures[key]; ok {
		return f
	}
	s, room := benchDatabase(b, dialect, opts, n)
	f := newBenchFixture(b, s, room, 0)
	if benchFixtures.fixtures == nil {
		benchFixtures.fixtures = map[string]*benchFixture{}
	}
	benchFixtures.fixtures[key] = f
	return f
}

// newBenchFixture serves s through fedhistory.New with the real verifier
// of handlerOrigins' keys; stateCacheBytes is Config.StateCacheBytes (0:
// the default).
func newBenchFixture(t testing.TB, s *Store, room benchRoomInfo, stateCacheBytes int) *benchFixture {
	t.Helper()
	origins, err := benchsign.New(benchDestination, handlerOrigins)
	require.NoError(t, err)
	handler, err := fedhistory.New(fedhistory.Config{
		ServerName: benchDestination, Store: s, Authenticator: origins.Verifier,
		Logger: slog.New(slog.DiscardHandler), StateCacheBytes: stateCacheBytes,
	})
	require.NoError(t, err)
	return &benchFixture{store: s, room: room, handler: handler, origins: origins}
}

// benchDatabase opens a store holding the synthetic room of opts and n
// events. Building a 10^6-event room takes minutes, so the database
// outlives the process: an SQLite file under the temporary directory, or a
// PostgreSQL schema, both named by a hash of the generator's parameters and
// the schema version. A database whose build did not finish has no
// bench_room row and is rebuilt.
func benchDatabase(b testing.TB, dialect string, opts synthroom.Options, n int) (*Store, benchRoomInfo) {
	b.Helper()
	params, err := json.Marshal(struct {
		Options synthroom.Options
		N       int
		Format  int
		Schema  int
	}{opts, n, benchRoomFormat, len(migrations)})
	require.NoError(b, err)
	sum := sha256.Sum256(params)
	name := "fedhistory_bench_" + hex.EncodeToString(sum[:8])

	var dsn string
	switch dialect {
	case "sqlite":
		dir := filepath.Join(os.TempDir(), "fedhistory-sqlbench")
		require.NoError(b, os.MkdirAll(dir, 0o755))
		dsn = "sqlite:" + filepath.Join(dir, name+".db")
	default:
		base := os.Getenv(postgresEnv)
		if base == "" {
			b.Skip(postgresEnv + " not set: skipping PostgreSQL benchmarks")
		}
		admin, err := sql.Open("pgx", base)
		require.NoError(b, err)
		defer admin.Close()
		_, err = admin.Exec(`CREATE SCHEMA IF NOT EXISTS ` + name)
		require.NoError(b, err)
		u, err := url.Parse(base)
		require.NoError(b, err)
		q := u.Query()
		q.Set("search_path", name)
		u.RawQuery = q.Encode()
		dsn = u.String()
	}
	ctx := context.Background()
	s := openBenchStore(b, dsn)
	if room, ok := builtRoom(ctx, s); ok {
		b.Logf("%s: reusing the %d-event room in %s", dialect, n, name)
		return s, room
	}
	start := time.Now()
	room := buildRoom(b, s, opts, n)
	if dialect == "postgres" {
		_, err := s.db.ExecContext(ctx, `ANALYZE`)
		require.NoError(b, err)
	}
	ids, err := json.Marshal(room.IDs)
	require.NoError(b, err)
	_, err = s.db.ExecContext(ctx, `CREATE TABLE bench_room (room_id TEXT NOT NULL, ids TEXT NOT NULL)`)
	require.NoError(b, err)
	_, err = s.db.ExecContext(ctx, s.dialect.rebind(`INSERT INTO bench_room (room_id, ids) VALUES ($1, $2)`), room.RoomID, string(ids))
	require.NoError(b, err)
	b.Logf("%s: built a %d-event room in %v (%s)", dialect, n, time.Since(start), name)
	return s, room
}

// openBenchStore opens (migrating) the benchmark database of dsn.
func openBenchStore(b testing.TB, dsn string) *Store {
	b.Helper()
	s, err := Open(context.Background(), dsn, Options{Migrate: true})
	require.NoError(b, err)
	return s
}

// builtRoom reads the room a finished build recorded.
func builtRoom(ctx context.Context, s *Store) (benchRoomInfo, bool) {
	var room benchRoomInfo
	var ids string
	err := s.db.QueryRowContext(ctx, `SELECT room_id, ids FROM bench_room`).Scan(&room.RoomID, &ids)
	if err != nil {
		return room, false
	}
	if json.Unmarshal([]byte(ids), &room.IDs) != nil {
		return room, false
	}
	return room, true
}

// buildRoom adds the setup and n synthetic events in batches.
func buildRoom(b testing.TB, s *Store, opts synthroom.Options, n int) benchRoomInfo {
	b.Helper()
	ctx := context.Background()
	g, err := synthroom.New(opts)
	require.NoError(b, err)
	var batch []Pending
	for _, ev := range g.Setup() {
		batch = append(batch, Pending{RoomVersion: synthroom.Version, PDU: ev.JSON})
	}
	require.NoError(b, s.AddBatch(ctx, batch))
	room := benchRoomInfo{RoomID: g.RoomID(), IDs: make([]string, 0, n)}
	// Large batches: each AddBatch reads the state group chain it builds
	// on once, and a 10^6-event room then takes about two minutes.
	const batchSize = 50_000
	for start := 0; start < n; start += batchSize {
		batch = batch[:0]
		for range min(batchSize, n-start) {
			id, pdu := g.Next(nil)
			room.IDs = append(room.IDs, id)
			batch = append(batch, Pending{RoomVersion: synthroom.Version, PDU: pdu})
		}
		require.NoError(b, s.AddBatch(ctx, batch))
	}
	return room
}

// eachHandlerRoom runs bench once per dialect and room size, as
// sub-benchmarks "postgres/events=1e4" and so on.
func eachHandlerRoom(b *testing.B, bench func(b *testing.B, f *benchFixture)) {
	for _, d := range []string{"postgres", "sqlite"} {
		b.Run(d, func(b *testing.B) {
			for _, size := range handlerRoomSizes {
				b.Run(size.name, func(b *testing.B) {
					if size.env != "" && os.Getenv(size.env) != "1" {
						b.Skipf("%s=1 builds the %s rooms", size.env, size.name)
					}
					bench(b, handlerFixture(b, d, size.name, size.opts(), size.n))
				})
			}
		})
	}
}

// serveTimed serves the request newRequest makes b.N times, failing on any
// status but 200, and reports statements and latency percentiles per
// request. newRequest runs inside the timed loop, so it must be cheap.
func serveTimed(b *testing.B, f *benchFixture, newRequest func() *http.Request, check func(*httptest.ResponseRecorder)) {
	b.Helper()
	rec := httptest.NewRecorder()
	f.handler.ServeHTTP(rec, newRequest())
	require.Equal(b, http.StatusOK, rec.Code, "body: %s", rec.Body.Bytes())
	check(rec)
	b.SetBytes(int64(rec.Body.Len()))

	latencies := make([]time.Duration, 0, 1024)
	b.ReportAllocs()
	before := f.store.Queries()
	for b.Loop() {
		req := newRequest()
		rec := httptest.NewRecorder()
		start := time.Now()
		f.handler.ServeHTTP(rec, req)
		latencies = append(latencies, time.Since(start))
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d: %s", rec.Code, rec.Body.Bytes())
		}
	}
	b.ReportMetric(float64(f.store.Queries()-before)/float64(b.N), "stmts/op")
	slices.Sort(latencies)
	percentile := func(p float64) float64 {
		return float64(latencies[int(p*float64(len(latencies)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(percentile(0.50), "p50-ms")
	b.ReportMetric(percentile(0.99), "p99-ms")
}

// BenchmarkSQLBackfillHandler is a full signed GET /backfill of 100 events
// from the room's newest event.
func BenchmarkSQLBackfillHandler(b *testing.B) {
	eachHandlerRoom(b, func(b *testing.B, f *benchFixture) {
		q := url.Values{"v": {f.room.IDs[len(f.room.IDs)-1]}, "limit": {strconv.Itoa(handlerBackfillLimit)}}
		target := "/_matrix/federation/v1/backfill/" + url.PathEscape(f.room.RoomID) + "?" + q.Encode()
		req := httptest.NewRequest(http.MethodGet, target, nil)
		require.NoError(b, f.origins.Sign(req, handlerOrigins[0], benchDestination))
		serveTimed(b, f, func() *http.Request { return req }, func(rec *httptest.ResponseRecorder) {
			require.Len(b, answerPDUs(b, rec, "pdus"), handlerBackfillLimit)
		})
	})
}

// BenchmarkSQLMissingEventsHandler is a full signed POST
// /get_missing_events of 20 events from the newest event back towards one
// 1000 events older.
func BenchmarkSQLMissingEventsHandler(b *testing.B) {
	eachHandlerRoom(b, func(b *testing.B, f *benchFixture) {
		ids := f.room.IDs
		body, err := json.Marshal(map[string]any{
			"limit":           handlerMissingLimit,
			"min_depth":       0,
			"earliest_events": []string{ids[len(ids)-1000]},
			"latest_events":   []string{ids[len(ids)-1]},
		})
		require.NoError(b, err)
		target := "/_matrix/federation/v1/get_missing_events/" + url.PathEscape(f.room.RoomID)
		signed := httptest.NewRequest(http.MethodPost, target, bytes.NewReader(body))
		require.NoError(b, f.origins.Sign(signed, handlerOrigins[0], benchDestination))
		newRequest := func() *http.Request {
			req := signed.Clone(context.Background())
			req.Body = nopCloser{bytes.NewReader(body)}
			return req
		}
		serveTimed(b, f, newRequest, func(rec *httptest.ResponseRecorder) {
			require.Len(b, answerPDUs(b, rec, "events"), handlerMissingLimit)
		})
	})
}

type nopCloser struct{ *bytes.Reader }

func (nopCloser) Close() error { return nil }

// answerPDUs decodes the PDUs under key of a successful answer.
func answerPDUs(b *testing.B, rec *httptest.ResponseRecorder, key string) []json.RawMessage {
	b.Helper()
	var answer map[string]json.RawMessage
	require.NoError(b, json.Unmarshal(rec.Body.Bytes(), &answer))
	var pdus []json.RawMessage
	require.NoError(b, json.Unmarshal(answer[key], &pdus))
	return pdus
}

// BenchmarkSQLBackfillHandlerParallel is BenchmarkSQLBackfillHandler from
// 16 concurrent goroutines, each signing as its own origin (so no
// per-origin limit is shared), reporting requests per second.
func BenchmarkSQLBackfillHandlerParallel(b *testing.B) {
	eachHandlerRoom(b, func(b *testing.B, f *benchFixture) {
		q := url.Values{"v": {f.room.IDs[len(f.room.IDs)-1]}, "limit": {strconv.Itoa(handlerBackfillLimit)}}
		target := "/_matrix/federation/v1/backfill/" + url.PathEscape(f.room.RoomID) + "?" + q.Encode()
		requests := make(chan *http.Request, len(handlerOrigins))
		for _, origin := range handlerOrigins {
			req := httptest.NewRequest(http.MethodGet, target, nil)
			require.NoError(b, f.origins.Sign(req, origin, benchDestination))
			requests <- req
		}
		b.SetParallelism(max(1, len(handlerOrigins)/runtime.GOMAXPROCS(0)))
		start := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			req := <-requests
			for pb.Next() {
				rec := httptest.NewRecorder()
				f.handler.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Errorf("status %d: %s", rec.Code, rec.Body.Bytes())
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "req/s")
	})
}
