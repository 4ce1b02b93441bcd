package fedhistory_test

// Benchmarks of the history endpoints against their floor: one ed25519
// verification and a copy of the served events' stored bytes. BENCHMARKS.md
// has the commands, the recorded figures and what they mean; the names
// below are how results are compared over time, so do not rename them.
//
// Every room is synthetic (internal/synthroom): room version 1 events of
// about 1 KiB, cloned from signed templates, 1% of them joins of users of
// other servers, history visibility "joined", and the requesting servers'
// users joined during the setup. The 10^6-event rooms take tens of seconds
// to build; they are only built with FEDHISTORY_BENCH_LARGE=1.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/benchsign"
	"github.com/fedhistory/fedhistory/internal/synthroom"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/fedhistory/fedhistory/sign"
)

const (
	benchBackfillLimit = 100
	benchMissingLimit  = 20
	// benchHandlerRoomEvents is the size of the room the handler benchmarks
	// read; the walk benchmarks show that the size does not matter.
	benchHandlerRoomEvents = 10_000
	benchMessageBytes      = 1024
	// largeBenchEnv enables the 10^6-event rooms.
	largeBenchEnv = "FEDHISTORY_BENCH_LARGE"
)

// benchOrigins are the servers that ask for history; each has a user
// joined to every benchmark room. The serial benchmarks use the first.
var benchOrigins = []string{"hs2.example", "hs3.example", "hs4.example", "hs5.example"}

// benchRoomOptions is the shape of every benchmark room but its DAG shape.
func benchRoomOptions(shape synthroom.Shape) synthroom.Options {
	members := make([]string, len(benchOrigins))
	for i, origin := range benchOrigins {
		members[i] = "@bob:" + origin
	}
	return synthroom.Options{
		Shape:             shape,
		MessageBytes:      benchMessageBytes,
		HistoryVisibility: "joined",
		Members:           members,
		JoinEvery:         100,
	}
}

// benchRoom is a synthetic room loaded into a memstore.
type benchRoom struct {
	store     *memstore.Store
	roomID    string
	newest    string
	ids       []string // the synthetic events' IDs, oldest first
	events    int      // every event, setup included
	jsonBytes int      // their JSON
}

// buildBenchRoom loads the setup and n synthetic events into a new store.
func buildBenchRoom(tb testing.TB, opts synthroom.Options, n int) *benchRoom {
	tb.Helper()
	g, err := synthroom.New(opts)
	require.NoError(tb, err)
	room := &benchRoom{store: memstore.New(), roomID: g.RoomID(), ids: make([]string, 0, n)}
	for _, ev := range g.Setup() {
		_, err := room.store.Add(synthroom.Version, ev.JSON, fedhistory.AddOptions{})
		require.NoError(tb, err)
		room.jsonBytes += len(ev.JSON)
	}
	room.events = len(g.Setup()) + n
	var buf []byte
	for range n {
		id, pdu := g.Next(buf)
		buf = pdu
		if _, err := room.store.Add(synthroom.Version, pdu, fedhistory.AddOptions{}); err != nil {
			tb.Fatal(err)
		}
		room.ids = append(room.ids, id)
		room.jsonBytes += len(pdu)
	}
	room.newest = g.Newest()
	return room
}

// benchRooms builds each room once per process, on first use.
var benchRooms struct {
	mu    sync.Mutex
	rooms map[string]*benchRoom
}

func sharedBenchRoom(tb testing.TB, shape synthroom.Shape, n int) *benchRoom {
	tb.Helper()
	benchRooms.mu.Lock()
	defer benchRooms.mu.Unlock()
	key := strconv.Itoa(int(shape)) + "/" + strconv.Itoa(n)
	if room, ok := benchRooms.rooms[key]; ok {
		return room
	}
	room := buildBenchRoom(tb, benchRoomOptions(shape), n)
	// Collect the building's garbage now: a 10^6-event room leaves a
	// gigabyte-sized heap whose first concurrent collection would otherwise
	// run during, and be charged to, the first timed iterations.
	runtime.GC()
	if benchRooms.rooms == nil {
		benchRooms.rooms = map[string]*benchRoom{}
	}
	benchRooms.rooms[key] = room
	return room
}

// benchServer is a handler in front of the handler room, behind the real
// X-Matrix verifier, with every origin's key pinned (a cached key).
type benchServer struct {
	room    *benchRoom
	handler http.Handler
	keys    map[string]*sign.SigningKey
}

var (
	benchServerOnce sync.Once
	benchServerVal  *benchServer
)

func sharedBenchServer(tb testing.TB) *benchServer {
	tb.Helper()
	benchServerOnce.Do(func() {
		benchServerVal = newBenchServer(tb, sharedBenchRoom(tb, synthroom.Linear, benchHandlerRoomEvents))
	})
	if benchServerVal == nil {
		tb.Fatal("building the benchmark server failed in another benchmark")
	}
	return benchServerVal
}

// newBenchServer puts the handler, behind the real verifier with every
// origin's key pinned, in front of room.
func newBenchServer(tb testing.TB, room *benchRoom, mutate ...func(*fedhistory.Config)) *benchServer {
	tb.Helper()
	origins, err := benchsign.New(ourServer, benchOrigins)
	require.NoError(tb, err)
	s := &benchServer{room: room, keys: origins.Keys}
	verifier := origins.Verifier
	cfg := fedhistory.Config{
		ServerName:    ourServer,
		Store:         room.store,
		Authenticator: verifier,
		Logger:        slog.New(slog.DiscardHandler),
	}
	for _, m := range mutate {
		m(&cfg)
	}
	s.handler, err = fedhistory.New(cfg)
	require.NoError(tb, err)
	return s
}

// signedGet is origin's signed GET of target.
func (s *benchServer) signedGet(tb testing.TB, origin, target string) *http.Request {
	tb.Helper()
	req := httptest.NewRequest(http.MethodGet, target, nil)
	require.NoError(tb, s.keys[origin].SignRequest(req, origin, ourServer))
	return req
}

// serveLoop serves req b.N times, failing on any status but 200.
func serveLoop(b *testing.B, h http.Handler, req *http.Request) {
	b.ReportAllocs()
	cpu := startCPU()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d: %s", rec.Code, rec.Body.Bytes())
		}
	}
	cpu.report(b)
}

// backfillRequest is origin's signed GET /backfill of limit events from
// the newest event.
func (s *benchServer) backfillRequest(tb testing.TB, origin string, limit int) *http.Request {
	tb.Helper()
	req := httptest.NewRequest(http.MethodGet,
		backfillURL(s.room.roomID, strconv.Itoa(limit), s.room.newest), nil)
	require.NoError(tb, s.keys[origin].SignRequest(req, origin, ourServer))
	return req
}

// rewindableBody is a request body that can be read again after Rewind,
// so a signed POST can be served many times without allocating.
type rewindableBody struct {
	bytes.Reader
	data []byte
}

func (b *rewindableBody) Close() error { return nil }
func (b *rewindableBody) Rewind()      { b.Reset(b.data) }

// missingEventsRequest is origin's signed POST /get_missing_events from the
// newest event back towards one 1000 events older.
func (s *benchServer) missingEventsRequest(tb testing.TB, origin string) (*http.Request, *rewindableBody) {
	tb.Helper()
	ids := s.room.ids
	body, err := json.Marshal(map[string]any{
		"limit":           benchMissingLimit,
		"min_depth":       0,
		"earliest_events": []string{ids[len(ids)-1000]},
		"latest_events":   []string{ids[len(ids)-1]},
	})
	require.NoError(tb, err)
	req := httptest.NewRequest(http.MethodPost, missingURL(s.room.roomID), bytes.NewReader(body))
	require.NoError(tb, s.keys[origin].SignRequest(req, origin, ourServer))
	rewindable := &rewindableBody{data: body}
	rewindable.Rewind()
	req.Body = rewindable
	return req, rewindable
}

// servedPDUs decodes the PDUs of a successful answer.
func servedPDUs(tb testing.TB, rec *httptest.ResponseRecorder, key string) []json.RawMessage {
	tb.Helper()
	require.Equal(tb, http.StatusOK, rec.Code, "body: %s", rec.Body.Bytes())
	var answer map[string]json.RawMessage
	require.NoError(tb, json.Unmarshal(rec.Body.Bytes(), &answer))
	var pdus []json.RawMessage
	require.NoError(tb, json.Unmarshal(answer[key], &pdus))
	return pdus
}

// BenchmarkFloor is the least any backfill of 100 events can cost: one
// ed25519 verification of the request's signed JSON, and the 100 events'
// stored bytes written, wrapped as a transaction, into a recorder through
// the http.ResponseWriter interface. The events are those
// BenchmarkBackfillHandler serves, byte for byte.
func BenchmarkFloor(b *testing.B) {
	s := sharedBenchServer(b)
	origin := benchOrigins[0]
	req := s.backfillRequest(b, origin, benchBackfillLimit)

	// The message the verifier checks: the request's canonical JSON
	// (spec: server-server API, "Request Authentication").
	object, err := json.Marshal(map[string]string{
		"method": req.Method, "uri": req.RequestURI, "origin": origin, "destination": ourServer,
	})
	require.NoError(b, err)
	message, err := gomatrixserverlib.CanonicalJSON(object)
	require.NoError(b, err)
	x, err := sign.ParseAuthorization(req.Header.Get("Authorization"))
	require.NoError(b, err)
	signature, err := base64.RawStdEncoding.DecodeString(x.Signature)
	require.NoError(b, err)
	public := s.keys[origin].Public()
	require.True(b, ed25519.Verify(public, message, signature), "the floor verifies the handler's signature")

	events, err := fedhistory.WalkBackfillForBenchmark(context.Background(), s.room.store, s.room.roomID,
		[]string{s.room.newest}, benchBackfillLimit)
	require.NoError(b, err)
	require.Len(b, events, benchBackfillLimit)
	rec := httptest.NewRecorder()
	s.handler.ServeHTTP(rec, req)
	served := servedPDUs(b, rec, "pdus")
	require.Len(b, served, len(events))
	size := len(`{"origin":"`+ourServer+`","origin_server_ts":1234567890123,"pdus":[]}`) + len(events) - 1
	for i, ev := range events {
		require.Equal(b, string(ev.JSON), string(served[i]), "the floor writes what the handler serves")
		size += len(ev.JSON)
	}
	prefix := []byte(`{"origin":"` + ourServer + `","origin_server_ts":`)

	b.ReportAllocs()
	b.SetBytes(int64(size))
	// The cheapest way through the http.ResponseWriter interface: assemble
	// the body in a buffer allocated once, then one Write. (Writing piece
	// by piece makes the recorder grow its buffer a dozen times.)
	body := make([]byte, 0, size+32)
	cpu := startCPU()
	for b.Loop() {
		if !ed25519.Verify(public, message, signature) {
			b.Fatal("signature does not verify")
		}
		body = append(body[:0], prefix...)
		body = strconv.AppendInt(body, time.Now().UnixMilli(), 10)
		body = append(body, `,"pdus":[`...)
		for i, ev := range events {
			if i > 0 {
				body = append(body, ',')
			}
			body = append(body, ev.JSON...)
		}
		body = append(body, `]}`...)
		rec := httptest.NewRecorder()
		header := rec.Header()
		header.Set("Content-Type", "application/json")
		header.Set("Content-Length", strconv.Itoa(len(body)))
		rec.WriteHeader(http.StatusOK)
		rec.Write(body)
	}
	cpu.report(b)
}

// BenchmarkBackfillHandler is a full signed GET /backfill?limit=100 through
// the handler New returns: routing, X-Matrix verification with a pinned
// key, the load limits, authorisation, the walk, the history visibility
// filter and the response.
func BenchmarkBackfillHandler(b *testing.B) {
	s := sharedBenchServer(b)
	req := s.backfillRequest(b, benchOrigins[0], benchBackfillLimit)
	rec := httptest.NewRecorder()
	s.handler.ServeHTTP(rec, req)
	require.Len(b, servedPDUs(b, rec, "pdus"), benchBackfillLimit)
	b.SetBytes(int64(rec.Body.Len()))

	b.ReportAllocs()
	cpu := startCPU()
	for b.Loop() {
		rec := httptest.NewRecorder()
		s.handler.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d: %s", rec.Code, rec.Body.Bytes())
		}
	}
	cpu.report(b)
}

// BenchmarkBackfillHandlerLimits is BenchmarkBackfillHandler at several
// limits, to show how its allocations grow with the limit (-benchmem).
func BenchmarkBackfillHandlerLimits(b *testing.B) {
	s := sharedBenchServer(b)
	for _, limit := range []int{1, 10, 50, 100} {
		b.Run("limit="+strconv.Itoa(limit), func(b *testing.B) {
			req := s.backfillRequest(b, benchOrigins[0], limit)
			rec := httptest.NewRecorder()
			s.handler.ServeHTTP(rec, req)
			require.Len(b, servedPDUs(b, rec, "pdus"), limit)
			b.ReportAllocs()
			for b.Loop() {
				rec := httptest.NewRecorder()
				s.handler.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					b.Fatalf("status %d: %s", rec.Code, rec.Body.Bytes())
				}
			}
		})
	}
}

// BenchmarkBackfillHandlerParallel is BenchmarkBackfillHandler from
// GOMAXPROCS goroutines at once (run it with -cpu 1,2,…), each for its own
// origin in turn, so that the per-origin limit is not what is measured.
func BenchmarkBackfillHandlerParallel(b *testing.B) {
	s := sharedBenchServer(b)
	requests := make([]*http.Request, len(benchOrigins))
	for i, origin := range benchOrigins {
		requests[i] = s.backfillRequest(b, origin, benchBackfillLimit)
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU()
	b.RunParallel(func(pb *testing.PB) {
		req := requests[int(next.Add(1)-1)%len(requests)]
		for pb.Next() {
			rec := httptest.NewRecorder()
			s.handler.ServeHTTP(rec, req)
			if rec.Code != http.StatusOK {
				b.Errorf("status %d: %s", rec.Code, rec.Body.Bytes())
				return
			}
		}
	})
	cpu.report(b)
}

// BenchmarkMissingEventsHandler is a full signed POST /get_missing_events
// with limit 20.
func BenchmarkMissingEventsHandler(b *testing.B) {
	s := sharedBenchServer(b)
	req, body := s.missingEventsRequest(b, benchOrigins[0])
	rec := httptest.NewRecorder()
	s.handler.ServeHTTP(rec, req)
	require.Len(b, servedPDUs(b, rec, "events"), benchMissingLimit)
	b.SetBytes(int64(rec.Body.Len()))

	b.ReportAllocs()
	cpu := startCPU()
	for b.Loop() {
		body.Rewind()
		rec := httptest.NewRecorder()
		s.handler.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d: %s", rec.Code, rec.Body.Bytes())
		}
	}
	cpu.report(b)
}

// cpuMeter reports the CPU time the whole process spent per operation, as
// "cpu-ns/op", next to the wall time of ns/op. On a machine shared with
// other work, wall time also measures the competition for the cores; CPU
// time does not, and it still counts the garbage collector's work on every
// core. With b.RunParallel, a flat cpu-ns/op over -cpu 1,2,… means the
// work per request does not grow with contention.
type cpuMeter struct {
	start time.Duration
	ok    bool
}

// startCPU starts measuring; call it just before the benchmark loop.
func startCPU() cpuMeter {
	start, ok := processCPUTime()
	return cpuMeter{start: start, ok: ok}
}

// report adds cpu-ns/op; call it just after the loop.
func (m cpuMeter) report(b *testing.B) {
	end, ok := processCPUTime()
	if m.ok && ok && b.N > 0 {
		b.ReportMetric(float64(end-m.start)/float64(b.N), "cpu-ns/op")
	}
}

// roomSizes are the room sizes of the benchmarks that show a request's cost
// does not grow with the room's history.
var roomSizes = []struct {
	name  string
	n     int
	large bool
}{
	{"1e3", 1_000, false},
	{"1e6", 1_000_000, true},
}

// BenchmarkBackfillHandlerRoomSize is BenchmarkBackfillHandler over rooms
// of 10^3 and 10^6 events (the latter with FEDHISTORY_BENCH_LARGE=1), linear
// and forked: the full signed request must cost the same.
func BenchmarkBackfillHandlerRoomSize(b *testing.B) {
	for _, shape := range []struct {
		prefix string
		shape  synthroom.Shape
	}{{"", synthroom.Linear}, {"fork/", synthroom.Forked}} {
		for _, size := range roomSizes {
			b.Run(shape.prefix+"events="+size.name, func(b *testing.B) {
				if size.large && !largeBenchmarks() {
					b.Skip("building a 10^6-event room takes tens of seconds: set " + largeBenchEnv + "=1")
				}
				s := newBenchServer(b, sharedBenchRoom(b, shape.shape, size.n))
				req := s.backfillRequest(b, benchOrigins[0], benchBackfillLimit)
				rec := httptest.NewRecorder()
				s.handler.ServeHTTP(rec, req)
				require.Len(b, servedPDUs(b, rec, "pdus"), benchBackfillLimit)
				serveLoop(b, s.handler, req)
			})
		}
	}
}

// BenchmarkEventHandler is a signed GET /event of one event: it should
// cost little more than BenchmarkFloor's signature check.
func BenchmarkEventHandler(b *testing.B) {
	s := sharedBenchServer(b)
	req := s.signedGet(b, benchOrigins[0], fedhistory.Prefix+"/event/"+url.PathEscape(s.room.newest))
	rec := httptest.NewRecorder()
	s.handler.ServeHTTP(rec, req)
	require.Len(b, servedPDUs(b, rec, "pdus"), 1)
	serveLoop(b, s.handler, req)
}

// BenchmarkTimestampToEventRoomSize is a signed GET /timestamp_to_event
// into the middle of rooms of 10^3 and 10^6 events: an index lookup, the
// same cost whatever the room's size.
func BenchmarkTimestampToEventRoomSize(b *testing.B) {
	for _, size := range roomSizes {
		b.Run("events="+size.name, func(b *testing.B) {
			if size.large && !largeBenchmarks() {
				b.Skip("building a 10^6-event room takes tens of seconds: set " + largeBenchEnv + "=1")
			}
			room := sharedBenchRoom(b, synthroom.Linear, size.n)
			s := newBenchServer(b, room)
			middle, err := room.store.Events(context.Background(), room.roomID, []string{room.ids[len(room.ids)/2]})
			require.NoError(b, err)
			req := s.signedGet(b, benchOrigins[0], fedhistory.Prefix+"/timestamp_to_event/"+url.PathEscape(room.roomID)+
				"?dir=b&ts="+strconv.FormatInt(middle[0].OriginServerTS, 10))
			serveLoop(b, s.handler, req)
		})
	}
}

// BenchmarkStateIDsHandler is a signed GET /state_ids at the newest event
// of a room whose state holds 10^4 (10^5 with FEDHISTORY_BENCH_LARGE=1)
// members: "cold" with a cache too small to keep the answer, so every
// request asks the store, "cached" from the handler's cache.
func BenchmarkStateIDsHandler(b *testing.B) {
	members := 10_000
	if largeBenchmarks() {
		members = 100_000
	}
	opts := benchRoomOptions(synthroom.Linear)
	opts.JoinEvery = 1
	room := buildBenchRoom(b, opts, members)
	runtime.GC()
	for _, tc := range []struct {
		name       string
		cacheBytes int
	}{{"cold", 1}, {"cached", 0}} {
		b.Run("members="+strconv.Itoa(members)+"/"+tc.name, func(b *testing.B) {
			s := newBenchServer(b, room, func(cfg *fedhistory.Config) { cfg.StateCacheBytes = tc.cacheBytes })
			req := s.signedGet(b, benchOrigins[0], fedhistory.Prefix+"/state_ids/"+url.PathEscape(room.roomID)+
				"?event_id="+url.QueryEscape(room.newest))
			answer, size := s.stateIDs(b, req)
			require.Greater(b, len(answer.PDUIDs), members)
			b.ReportMetric(float64(len(answer.PDUIDs)+len(answer.AuthChainIDs)), "ids/op")
			b.SetBytes(int64(size))
			serveLoop(b, s.handler, req)
		})
	}
}

// stateIDsAnswer is a /state_ids answer.
type stateIDsAnswer struct {
	PDUIDs       []string `json:"pdu_ids"`
	AuthChainIDs []string `json:"auth_chain_ids"`
}

// stateIDs serves req, a signed /state_ids request, which must succeed,
// and returns the answer and its size in bytes.
func (s *benchServer) stateIDs(tb testing.TB, req *http.Request) (stateIDsAnswer, int) {
	tb.Helper()
	rec := httptest.NewRecorder()
	s.handler.ServeHTTP(rec, req)
	require.Equal(tb, http.StatusOK, rec.Code, "body: %.200s", rec.Body.Bytes())
	var answer stateIDsAnswer
	require.NoError(tb, json.Unmarshal(rec.Body.Bytes(), &answer))
	return answer, rec.Body.Len()
}

// largeBenchmarks reports whether the 10^6-event rooms may be built.
func largeBenchmarks() bool { return os.Getenv(largeBenchEnv) == "1" }

// BenchmarkBackfillWalk is the backfill walk alone, limit 100 from the
// newest event, as the handler runs it over memstore (the store's own walk,
// which is dag.Backfill over its records), in rooms of growing size: its
// cost must depend on the limit, not on the room.
func BenchmarkBackfillWalk(b *testing.B) {
	shapes := []struct {
		prefix string
		shape  synthroom.Shape
	}{
		{"", synthroom.Linear},
		{"fork/", synthroom.Forked},
	}
	sizes := []struct {
		name  string
		n     int
		large bool
	}{
		{"1e3", 1_000, false},
		{"1e5", 100_000, false},
		{"1e6", 1_000_000, true},
	}
	for _, shape := range shapes {
		for _, size := range sizes {
			b.Run(shape.prefix+"events="+size.name, func(b *testing.B) {
				if size.large && !largeBenchmarks() {
					b.Skip("building a 10^6-event room takes tens of seconds: set " + largeBenchEnv + "=1")
				}
				room := sharedBenchRoom(b, shape.shape, size.n)
				ctx := context.Background()
				from := []string{room.newest}
				b.ReportAllocs()
				cpu := startCPU()
				for b.Loop() {
					events, err := fedhistory.WalkBackfillForBenchmark(ctx, room.store, room.roomID, from, benchBackfillLimit)
					if err != nil {
						b.Fatal(err)
					}
					if len(events) != benchBackfillLimit {
						b.Fatalf("got %d events, want %d", len(events), benchBackfillLimit)
					}
				}
				cpu.report(b)
			})
		}
	}
}

// TestResidentMemoryOfLargeRoom measures what the in-memory store of a
// 10^6-event room costs: the process's resident memory after a garbage
// collection that returns freed memory to the system, against the total
// size of the events' JSON. The store must stay within three times the JSON.
func TestResidentMemoryOfLargeRoom(t *testing.T) {
	if !largeBenchmarks() {
		t.Skip("builds a 10^6-event room: set " + largeBenchEnv + "=1")
	}
	baseline := residentBytes(t)
	room := buildBenchRoom(t, benchRoomOptions(synthroom.Linear), 1_000_000)
	room.ids = nil // the test's own bookkeeping, not the store's
	resident := residentBytes(t)
	var heap runtime.MemStats
	runtime.ReadMemStats(&heap)
	runtime.KeepAlive(room.store)

	ratio := float64(resident) / float64(room.jsonBytes)
	t.Logf("%d events, %d bytes of JSON (%.0f per event)", room.events, room.jsonBytes, float64(room.jsonBytes)/float64(room.events))
	t.Logf("resident: %d bytes before the room, %d after (%.2f × the JSON; the room alone %.2f ×)",
		baseline, resident, ratio, float64(resident-baseline)/float64(room.jsonBytes))
	t.Logf("live heap: %d bytes (%.2f × the JSON)", heap.HeapAlloc, float64(heap.HeapAlloc)/float64(room.jsonBytes))
	require.LessOrEqual(t, ratio, 3.0, "resident memory must stay within three times the events' JSON")
}

// residentBytes returns VmRSS after a full collection that returns free
// memory to the operating system.
func residentBytes(t *testing.T) int64 {
	t.Helper()
	runtime.GC()
	debug.FreeOSMemory()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status to read the resident size from: %v", err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kib, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			require.NoError(t, err)
			return kib << 10
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}
