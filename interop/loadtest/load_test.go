//go:build load

package loadtest_test

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/interop/internal/serveproc"
	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/fedhistory/fedhistory/sign"
)

// The served server, and the servers that ask it: each has a user joined
// to the room (gen --other-server) and its key pinned (serve --trust), so
// that no key is ever fetched during the attack.
const serverName = "hs1.example"

var origins = []string{"hs2.example", "hs3.example", "hs4.example", "hs5.example"}

// Defaults of the attack, overridden by FEDHISTORY_LOAD_DURATION (a Go
// duration), FEDHISTORY_LOAD_RATE (requests per second) and
// FEDHISTORY_LOAD_EVENTS (events in the generated room).
const (
	defaultDuration = 60 * time.Second
	defaultRate     = 200
	defaultEvents   = 2000
)

// requestKind is what one request of the mix is, and so what it must get.
type requestKind string

const (
	kindBackfill requestKind = "backfill" // signed, valid: 200
	kindMissing  requestKind = "missing"  // signed, valid: 200
	kindUnsigned requestKind = "unsigned" // injected: no Authorization, 401
	kindBadLimit requestKind = "badlimit" // injected: signed, limit not a positive integer, 400
)

var expectedStatus = map[requestKind]int{
	kindBackfill: http.StatusOK,
	kindMissing:  http.StatusOK,
	kindUnsigned: http.StatusUnauthorized,
	kindBadLimit: http.StatusBadRequest,
}

// kindParam carries a request's kind in its URL, which vegeta reports back
// with the result. The endpoints ignore parameters they do not know, and
// the signed requests sign it like the rest of the URI.
const kindParam = "loadtest"

func TestLoad(t *testing.T) {
	duration := envDuration(t, "FEDHISTORY_LOAD_DURATION", defaultDuration)
	rate := envInt(t, "FEDHISTORY_LOAD_RATE", defaultRate)
	events := envInt(t, "FEDHISTORY_LOAD_EVENTS", defaultEvents)
	dir := t.TempDir()

	binary := serveproc.Build(t, dir)
	args := []string{"gen", "--out", filepath.Join(dir, "room.jsonl"), "--events", strconv.Itoa(events),
		"--fork-every", "9", "--seed", "1", "--server-name", serverName}
	for _, origin := range origins {
		args = append(args, "--other-server", origin)
	}
	serveproc.Run(t, dir, binary, args...)
	room := serveproc.ReadRoom(t, filepath.Join(dir, "room.jsonl"))

	keys := map[string]*sign.SigningKey{}
	serveArgs := []string{"serve", "--listen", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0",
		"--server-name", serverName, "--room", filepath.Join(dir, "room.jsonl")}
	for _, origin := range origins {
		key, err := sign.GenerateKey(nil)
		require.NoError(t, err)
		keys[origin] = key
		serveArgs = append(serveArgs, "--trust", origin+"="+key.ID+":"+base64.RawStdEncoding.EncodeToString(key.Public()))
	}
	srv := serveproc.Start(t, dir, binary, serveArgs...)

	transport := &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute}
	client := &http.Client{Transport: transport, Timeout: 30 * time.Second}
	statsClient := &http.Client{Timeout: 30 * time.Second}

	// Warm up (first use of every code path, the limiter's maps, the
	// connection pool), then measure the baseline after a forced GC.
	warm := newTargeter(srv.FederationURL, room, keys, 1)
	for range 50 {
		var target vegeta.Target
		require.NoError(t, warm.next(&target))
		req, err := target.Request()
		require.NoError(t, err)
		resp, err := client.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	transport.CloseIdleConnections()
	before := settledStats(t, statsClient, srv.DebugURL, 0)
	saveHeapProfile(t, statsClient, srv.DebugURL, "before")

	// Sample the server while under load.
	var during []serverStats
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		ticker := time.NewTicker(5 * time.Second)
		defer ticker.Stop()
		for {
			select {
			case <-stopSampling:
				return
			case <-ticker.C:
				if stats, err := readStats(statsClient, srv.DebugURL, false); err == nil {
					during = append(during, stats)
				}
			}
		}
	}()

	attacker := vegeta.NewAttacker(vegeta.Timeout(30*time.Second), vegeta.Client(client))
	targeter := newTargeter(srv.FederationURL, room, keys, 2)
	byKind := map[requestKind]*vegeta.Metrics{}
	for kind := range expectedStatus {
		byKind[kind] = &vegeta.Metrics{}
	}
	var valid vegeta.Metrics
	unexpected := map[requestKind]int{}
	var examples []string
	pacer := vegeta.ConstantPacer{Freq: rate, Per: time.Second}
	for res := range attacker.Attack(vegeta.Targeter(targeter.next), pacer, duration, "fedhistory") {
		kind := kindOf(res.URL)
		metrics, ok := byKind[kind]
		require.True(t, ok, "a result for an unknown URL %q (error %q)", res.URL, res.Error)
		metrics.Add(res)
		if kind == kindBackfill || kind == kindMissing {
			valid.Add(res)
		}
		if problem := checkResult(kind, res); problem != "" {
			unexpected[kind]++
			if len(examples) < 10 {
				examples = append(examples, problem)
			}
		}
	}
	valid.Close()
	for _, metrics := range byKind {
		metrics.Close()
	}
	close(stopSampling)
	<-sampled

	// Let the server's connection goroutines end with our connections.
	transport.CloseIdleConnections()
	after := settledStats(t, statsClient, srv.DebugURL, before.Goroutines)
	saveHeapProfile(t, statsClient, srv.DebugURL, "after")
	exitCode := stop(t, srv)

	report := formatReport(duration, rate, events, &valid, byKind, unexpected, before, during, after)
	t.Log("\n" + report)
	if path := os.Getenv("FEDHISTORY_LOAD_REPORT"); path != "" {
		require.NoError(t, os.WriteFile(path, []byte(report), 0o644))
	}

	require.Empty(t, examples, "requests that did not get what they must")
	require.Equal(t, 0, exitCode, "serve did not shut down cleanly")
	logErrors := serveproc.LogLines(t, srv.LogPath, "level=ERROR")
	require.Empty(t, logErrors, "the server logged errors")
	// Flat: what the attack left behind once idle connections are gone and
	// a GC ran. A leak of one goroutine or a few hundred bytes per request
	// would show as thousands here.
	require.LessOrEqual(t, after.Goroutines, before.Goroutines+5, "goroutines before %d, after %d", before.Goroutines, after.Goroutines)
	require.LessOrEqual(t, after.HeapAlloc, before.HeapAlloc+before.HeapAlloc/4+4<<20,
		"live heap before %d, after %d", before.HeapAlloc, after.HeapAlloc)
}

// checkResult returns what is wrong with a result, or "".
func checkResult(kind requestKind, res *vegeta.Result) string {
	want := expectedStatus[kind]
	if int(res.Code) != want {
		return fmt.Sprintf("%s %s: status %d (want %d), error %q, body %.200s", kind, res.URL, res.Code, want, res.Error, res.Body)
	}
	var prefix string
	switch kind {
	case kindBackfill:
		prefix = `{"origin":"` + serverName + `","origin_server_ts":`
	case kindMissing:
		prefix = `{"events":[`
	case kindUnsigned:
		prefix = `{"errcode":"M_UNAUTHORIZED"`
	case kindBadLimit:
		prefix = `{"errcode":"M_INVALID_PARAM"`
	}
	if !bytes.HasPrefix(res.Body, []byte(prefix)) {
		return fmt.Sprintf("%s %s: body %.200s does not start with %s", kind, res.URL, res.Body, prefix)
	}
	return ""
}

func kindOf(rawURL string) requestKind {
	u, err := url.Parse(rawURL)
	if err != nil {
		return ""
	}
	return requestKind(u.Query().Get(kindParam))
}

// targeter makes the request mix: 45% backfill, 45% get_missing_events,
// each signed by a random origin, and 10% injected invalid requests. It is
// safe for vegeta's concurrent workers.
type targeter struct {
	base string
	room *serveproc.Room
	keys map[string]*sign.SigningKey

	mu  sync.Mutex
	rng *rand.Rand
}

func newTargeter(base string, room *serveproc.Room, keys map[string]*sign.SigningKey, seed uint64) *targeter {
	return &targeter{base: base, room: room, keys: keys, rng: rand.New(rand.NewPCG(seed, 0x10ad))}
}

// request is one drawn request, before signing.
type request struct {
	kind   requestKind
	method string
	uri    string
	body   []byte
	origin string
}

func (tg *targeter) draw() request {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	n := len(tg.room.Events)
	// Ask about the newer half of the room, as peers catching up do.
	latest := n/2 + tg.rng.IntN(n-n/2)
	r := request{origin: origins[tg.rng.IntN(len(origins))]}
	backfill := func(limit string) {
		q := url.Values{kindParam: {string(r.kind)}, "v": {tg.room.Events[latest]}, "limit": {limit}}
		r.method = http.MethodGet
		r.uri = "/_matrix/federation/v1/backfill/" + url.PathEscape(tg.room.ID) + "?" + q.Encode()
	}
	missing := func() {
		earliest := max(0, latest-1-tg.rng.IntN(60))
		body, _ := json.Marshal(map[string]any{
			"earliest_events": []string{tg.room.Events[earliest]},
			"latest_events":   []string{tg.room.Events[latest]},
			"limit":           1 + tg.rng.IntN(20),
			"min_depth":       0,
		})
		r.method = http.MethodPost
		r.uri = "/_matrix/federation/v1/get_missing_events/" + url.PathEscape(tg.room.ID) + "?" + kindParam + "=" + string(r.kind)
		r.body = body
	}
	switch draw := tg.rng.IntN(100); {
	case draw < 45:
		r.kind = kindBackfill
		backfill(strconv.Itoa(1 + tg.rng.IntN(100)))
	case draw < 90:
		r.kind = kindMissing
		missing()
	case draw < 95:
		r.kind = kindUnsigned
		if tg.rng.IntN(2) == 0 {
			backfill("10")
		} else {
			missing()
		}
	default:
		r.kind = kindBadLimit
		backfill([]string{"0", "-5", "ten", "1e3", ""}[tg.rng.IntN(5)])
	}
	return r
}

// next is the vegeta.Targeter: it draws a request and signs it, as the
// origin would, for this very URI and body.
func (tg *targeter) next(target *vegeta.Target) error {
	r := tg.draw()
	req, err := http.NewRequest(r.method, tg.base+r.uri, bytes.NewReader(r.body))
	if err != nil {
		return err
	}
	if r.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if r.kind != kindUnsigned {
		if err := tg.keys[r.origin].SignRequest(req, r.origin, serverName); err != nil {
			return err
		}
	}
	target.Method, target.URL, target.Body, target.Header = r.method, tg.base+r.uri, r.body, req.Header
	return nil
}

// serverStats is what /debug/vars says of the server process.
type serverStats struct {
	Goroutines int `json:"goroutines"`
	MemStats   struct {
		HeapAlloc uint64
		HeapInuse uint64
		Sys       uint64
		NumGC     uint32
	} `json:"memstats"`
	HeapAlloc uint64 `json:"-"`
}

// readStats reads the server's expvars, after forced GCs when gc is set
// (the heap profile endpoint runs one), so that HeapAlloc is the live heap.
// Two GCs: what sync.Pools hold survives the first one.
func readStats(client *http.Client, debugURL string, gc bool) (serverStats, error) {
	var stats serverStats
	for range map[bool]int{false: 0, true: 2}[gc] {
		resp, err := client.Get(debugURL + "/debug/pprof/heap?gc=1")
		if err != nil {
			return stats, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	resp, err := client.Get(debugURL + "/debug/vars")
	if err != nil {
		return stats, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
		return stats, err
	}
	stats.HeapAlloc = stats.MemStats.HeapAlloc
	return stats, nil
}

// saveHeapProfile saves the server's heap profile as
// $FEDHISTORY_LOAD_PROFILES/heap-<name>.pprof when that directory is set,
// for "go tool pprof -diff_base heap-before.pprof heap-after.pprof".
func saveHeapProfile(t *testing.T, client *http.Client, debugURL, name string) {
	t.Helper()
	dir := os.Getenv("FEDHISTORY_LOAD_PROFILES")
	if dir == "" {
		return
	}
	resp, err := client.Get(debugURL + "/debug/pprof/heap?gc=1")
	require.NoError(t, err)
	defer resp.Body.Close()
	profile, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "heap-"+name+".pprof"), profile, 0o644))
}

// settledStats reads the server's stats after a GC, once its goroutine
// count has come down to at most target+2 (connection goroutines end
// shortly after their connections close), or after 50 tries.
func settledStats(t *testing.T, client *http.Client, debugURL string, target int) serverStats {
	t.Helper()
	var stats serverStats
	for try := 0; try < 50; try++ {
		var err error
		stats, err = readStats(client, debugURL, true)
		require.NoError(t, err)
		if target == 0 || stats.Goroutines <= target+2 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	client.CloseIdleConnections()
	return stats
}

func formatReport(duration time.Duration, rate, events int, valid *vegeta.Metrics, byKind map[requestKind]*vegeta.Metrics,
	unexpected map[requestKind]int, before serverStats, during []serverStats, after serverStats) string {
	var b strings.Builder
	fmt.Fprintf(&b, "fedhistory serve under load: %s at %d req/s, a room of %d events, %d origins (GOMAXPROCS of the test %d)\n\n",
		duration, rate, events, len(origins), runtime.GOMAXPROCS(0))
	fmt.Fprintf(&b, "| requests | count | as expected | p50 | p99 | max |\n|---|---|---|---|---|---|\n")
	kinds := make([]string, 0, len(byKind))
	for kind := range byKind {
		kinds = append(kinds, string(kind))
	}
	sort.Strings(kinds)
	for _, kind := range kinds {
		m := byKind[requestKind(kind)]
		fmt.Fprintf(&b, "| %s (want %d) | %d | %d | %s | %s | %s |\n", kind, expectedStatus[requestKind(kind)], m.Requests,
			int(m.Requests)-unexpected[requestKind(kind)], round(m.Latencies.P50), round(m.Latencies.P99), round(m.Latencies.Max))
	}
	fmt.Fprintf(&b, "| all valid (backfill + get_missing_events) | %d | %.2f%% succeeded | %s | %s | %s |\n\n",
		valid.Requests, valid.Success*100, round(valid.Latencies.P50), round(valid.Latencies.P99), round(valid.Latencies.Max))
	fmt.Fprintf(&b, "valid requests sent at %.1f/s (of %d/s in all); their status codes: %v\n\n", valid.Rate, rate, valid.StatusCodes)
	maxGoroutines, maxHeap := 0, uint64(0)
	for _, s := range during {
		maxGoroutines = max(maxGoroutines, s.Goroutines)
		maxHeap = max(maxHeap, s.HeapAlloc)
	}
	fmt.Fprintf(&b, "| server | before (after GC) | during (max of %d samples) | after (after GC, idle) |\n|---|---|---|---|\n", len(during))
	fmt.Fprintf(&b, "| goroutines | %d | %d | %d |\n", before.Goroutines, maxGoroutines, after.Goroutines)
	fmt.Fprintf(&b, "| heap in use (HeapAlloc) | %s | %s | %s |\n", mib(before.HeapAlloc), mib(maxHeap), mib(after.HeapAlloc))
	fmt.Fprintf(&b, "| GC cycles | %d | | %d |\n", before.MemStats.NumGC, after.MemStats.NumGC)
	return b.String()
}

func round(d time.Duration) time.Duration {
	if d > time.Millisecond {
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}

func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// stop sends SIGTERM and returns the exit status.
func stop(t *testing.T, s *serveproc.Server) int {
	t.Helper()
	require.NoError(t, s.Cmd.Process.Signal(syscall.SIGTERM))
	<-s.Exited()
	return s.Cmd.ProcessState.ExitCode()
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	require.NoError(t, err, "%s", name)
	require.Positive(t, d, "%s", name)
	return d
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	require.NoError(t, err, "%s", name)
	require.Positive(t, n, "%s", name)
	return n
}
