package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/sign"
)

var metricsLine = regexp.MustCompile(`^fedhistory: metrics on (http://127\.0\.0\.1:\d+/metrics)$`)

// scrape fetches the metrics and returns each series ("name{labels}")
// with its value.
func scrape(t *testing.T, metricsURL string) (map[string]float64, string) {
	t.Helper()
	resp, err := http.Get(metricsURL)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	series := map[string]float64{}
	scanner := bufio.NewScanner(strings.NewReader(string(body)))
	for scanner.Scan() {
		line := scanner.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		require.Positive(t, i, "a malformed line: %q", line)
		value, err := strconv.ParseFloat(line[i+1:], 64)
		require.NoError(t, err, line)
		series[line[:i]] = value
	}
	return series, string(body)
}

// waitForSeries scrapes until every series of want has its value.
func waitForSeries(t *testing.T, metricsURL string, want map[string]float64) map[string]float64 {
	t.Helper()
	deadline := time.Now().Add(startupDeadline)
	for {
		got, body := scrape(t, metricsURL)
		missing := false
		for name, value := range want {
			if got[name] != value {
				missing = true
			}
		}
		if !missing {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("the metrics never reached %v; last scrape:\n%s", want, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestServeMetricsCountEachOutcome runs serve with --metrics-listen, gets
// one answer of each kind from it, and finds each counted under its status
// code, with no label naming a room or a server.
func TestServeMetricsCountEachOutcome(t *testing.T) {
	dir := t.TempDir()
	served := generate(t, dir, "served.jsonl", "--events", "20", "--seed", "51")
	failing := generate(t, dir, "failing.jsonl", "--events", "20", "--seed", "52")
	hanging := generate(t, dir, "hanging.jsonl", "--events", "20", "--seed", "53")
	// asker (hs2.example) has a user in every room; stranger has none;
	// busy sends the requests that exceed its limit.
	const stranger, busy = "stranger.test", "busy.test"
	keys := map[string]*sign.SigningKey{}
	args := []string{
		"--room", served.Path, "--room", failing.Path, "--room", hanging.Path,
		"--metrics-listen", "127.0.0.1:0",
		"--max-concurrent-per-origin", "1", "--max-queued-per-origin", "1",
		// The requests held in the hanging room are cancelled at once.
		"--drain-timeout", "10ms",
	}
	for _, origin := range []string{asker, stranger, busy} {
		key, err := sign.GenerateKey(nil)
		require.NoError(t, err)
		keys[origin] = key
		args = append(args, "--trust", trustSpec(origin, key))
	}
	srv := startServerEnv(t, dir, []string{
		testStoreFailRoomEnv + "=" + failing.RoomID,
		testStoreHangRoomEnv + "=" + hanging.RoomID,
	}, args...)
	line, ok := srv.stdout.line(1, srv.exited)
	require.True(t, ok, "no metrics line; stdout %q", srv.stdout.String())
	m := metricsLine.FindStringSubmatch(line)
	require.NotNil(t, m, line)
	metricsURL := m[1]

	client := func(origin string) *federationClient {
		c, err := newFederationClient(srv.URL, "", origin, keys[origin], 2*time.Minute, false)
		require.NoError(t, err)
		return c
	}
	backfill := func(origin string, room *dumpRoom) int {
		resp, err := client(origin).Backfill(context.Background(), room.RoomID, []string{room.last().ID}, 5)
		require.NoError(t, err)
		return resp.Status
	}
	require.Equal(t, http.StatusOK, backfill(asker, served))
	require.Equal(t, http.StatusForbidden, backfill(stranger, served))
	require.Equal(t, http.StatusInternalServerError, backfill(asker, failing))
	unsigned, err := http.Get(srv.URL + backfillURI(served.RoomID, []string{served.last().ID}, 5))
	require.NoError(t, err)
	unsigned.Body.Close()
	require.Equal(t, http.StatusUnauthorized, unsigned.StatusCode)

	// busy's first request holds its one turn in the hanging room; of two
	// more, one waits in its queue of one and the other is turned away.
	statuses := make(chan int, 3)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() { statuses <- backfill(busy, hanging) })
	}
	require.Equal(t, http.StatusTooManyRequests, <-statuses)

	got := waitForSeries(t, metricsURL, map[string]float64{
		`fedhistory_requests_total{code="200",endpoint="backfill"}`:                        1,
		`fedhistory_requests_total{code="401",endpoint="backfill"}`:                        1,
		`fedhistory_requests_total{code="403",endpoint="backfill"}`:                        1,
		`fedhistory_requests_total{code="429",endpoint="backfill"}`:                        1,
		`fedhistory_requests_total{code="500",endpoint="backfill"}`:                        1,
		`fedhistory_limiter_total{decision="rejected",limit="origin",reason="queue_full"}`: 1,
		// The two held: the one being served, the one in the queue.
		`fedhistory_requests_in_flight`: 2,
	})
	require.Equal(t, 1.0, got[`fedhistory_store_errors_total{method="CurrentState"}`], "the failing room's first call")
	require.Positive(t, got[`fedhistory_request_duration_seconds_count{endpoint="backfill"}`])
	require.Positive(t, got[`fedhistory_events_served_total{endpoint="backfill",form="whole"}`])
	require.Positive(t, got[`go_goroutines`], "the Go runtime's metrics")
	// Every signed request's key was pinned (--trust): the verifier's
	// lookups are counted too.
	require.GreaterOrEqual(t, got[`fedhistory_key_fetches_total{result="ok",source="pinned"}`], 6.0)
	_, body := scrape(t, metricsURL)
	for _, name := range []string{served.RoomID, failing.RoomID, hanging.RoomID, asker, stranger, busy, served.last().ID} {
		require.NotContains(t, body, name, "a label names a room, an event or a server")
	}

	require.Equal(t, exitOK, srv.stop(t), srv.stderr.String())
	wg.Wait()
	close(statuses)
	for status := range statuses {
		require.Equal(t, http.StatusServiceUnavailable, status, "held until shutdown, then cancelled")
	}
}

// collector is an OpenTelemetry collector's OTLP/HTTP traces endpoint.
type collector struct {
	mu    sync.Mutex
	spans []*spanSeen
}

type spanSeen struct {
	name, traceID, spanID, parentID string
	attrs                           map[string]string
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil || r.URL.Path != tracesPath || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				seen := &spanSeen{
					name: s.GetName(), traceID: fmt.Sprintf("%x", s.GetTraceId()),
					spanID: fmt.Sprintf("%x", s.GetSpanId()), parentID: fmt.Sprintf("%x", s.GetParentSpanId()),
					attrs: map[string]string{},
				}
				for _, kv := range s.GetAttributes() {
					seen.attrs[kv.GetKey()] = kv.GetValue().String()
				}
				for _, kv := range rs.GetResource().GetAttributes() {
					seen.attrs["resource."+kv.GetKey()] = kv.GetValue().GetStringValue()
				}
				c.spans = append(c.spans, seen)
			}
		}
	}
	w.Header().Set("Content-Type", "application/x-protobuf")
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	_, _ = w.Write(out)
}

// TestServeExportsTraces runs serve with --otlp-endpoint aimed at a fake
// collector: a request that carries a traceparent is a span of that trace,
// exported by the time serve exits, and its log line has the trace ID.
func TestServeExportsTraces(t *testing.T) {
	dir := t.TempDir()
	room := generate(t, dir, "room.jsonl", "--events", "20", "--seed", "61")
	key, err := sign.GenerateKey(nil)
	require.NoError(t, err)
	coll := &collector{}
	collectorServer := httptest.NewServer(coll)
	defer collectorServer.Close()
	srv := startServer(t, dir, "--room", room.Path, "--trust", trustSpec(asker, key), "--otlp-endpoint", collectorServer.URL)

	const traceID, parentID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
	req, err := http.NewRequest(http.MethodGet, srv.URL+backfillURI(room.RoomID, []string{room.last().ID}, 5), nil)
	require.NoError(t, err)
	req.Header.Set("traceparent", "00-"+traceID+"-"+parentID+"-01")
	require.NoError(t, key.SignRequest(req, asker, srv.Name))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, exitOK, srv.stop(t), srv.stderr.String())

	coll.mu.Lock()
	defer coll.mu.Unlock()
	var names []string
	var request *spanSeen
	for _, s := range coll.spans {
		require.Equal(t, traceID, s.traceID, "%s: every span continues the caller's trace", s.name)
		names = append(names, s.name)
		if s.parentID == parentID {
			request = s
		}
	}
	require.NotNil(t, request, "no span has the caller's span as its parent: %v", names)
	require.Equal(t, "GET "+fedhistory.Prefix+"/backfill/{roomId}", request.name)
	require.Contains(t, request.attrs["http.response.status_code"], "200")
	require.Contains(t, request.attrs["matrix.origin"], asker)
	require.Equal(t, "fedhistory", request.attrs["resource.service.name"])
	for _, want := range []string{"authenticate", "authorise", "walk", "filter", "store.CurrentState"} {
		require.True(t, slices.Contains(names, want), "no %s span among %v", want, names)
	}
	require.Contains(t, srv.stderr.String(), `msg="exporting traces over OTLP/HTTP" endpoint=`+collectorServer.URL+tracesPath)
	require.Regexp(t, `msg=request method=GET path=\S+ status=200 .*origin=`+regexp.QuoteMeta(asker)+` trace_id=`+traceID, srv.stderr.String())
}

func TestJoinVerifierTraces(t *testing.T) {
	var calls []string
	record := func(name string) *sign.VerifierTrace {
		return &sign.VerifierTrace{
			KeyFetch: func(server, source string, _ time.Duration, _ error) {
				calls = append(calls, name+" fetch "+server+" "+source)
			},
		}
	}
	a, b := record("a"), record("b")
	b.Pending = func(decision, origin string) { calls = append(calls, "b pending "+decision+" "+origin) }
	require.Same(t, a, joinVerifierTraces(a, nil))
	require.Same(t, b, joinVerifierTraces(nil, b))
	joined := joinVerifierTraces(a, b)
	joined.KeyFetch("hs2.example", "direct", time.Second, nil)
	joined.Pending("admitted", "hs2.example")
	require.Equal(t, []string{"a fetch hs2.example direct", "b fetch hs2.example direct", "b pending admitted hs2.example"}, calls)
	require.Nil(t, joinVerifierTraces(a, &sign.VerifierTrace{}).Pending, "nobody listens")
}
