package fedhistory_test

// Hardening: limits and fairness, a misbehaving store, a misbehaving key
// server. Every test here asserts what happened (who was refused, what the
// store saw, what was served), never how long it took.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/dag"
	"github.com/fedhistory/fedhistory/internal/faultstore"
	"github.com/fedhistory/fedhistory/internal/redact"
	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/fedhistory/fedhistory/sign"
)

// otherMember is a second server with a joined user in the rooms of
// twoServerRoom: the "other origin" of the fairness tests.
const otherMember = "hs3.example"

// twoServerRoom is a short room with users of memberServer and otherMember
// joined, and messages m1 … m5.
func twoServerRoom(t testing.TB) *testRoom {
	t.Helper()
	room := newTestRoom(t, "10", 40)
	room.name("carol_join", must(t)(room.b.Join("@carol:"+otherMember)))
	room.messages(t, "m", 5)
	return room
}

// gatedStore holds the calls of one method at a gate until the test opens
// it or the call's context ends, and reports what it saw. Embedding the
// EventStore interface hides any walker capability of the wrapped store, so
// the handler's own walk (and its Events calls) runs.
type gatedStore struct {
	fedhistory.EventStore
	method string // the gated method: "CurrentState", "Events" or "Visibility"
	server string // for CurrentState and Visibility: gate only this server's calls ("" every call)

	entered   chan struct{} // one value per call reaching the gate
	open      chan struct{} // closed by the test to let every call through
	cancelled chan error    // the context error of each call that gave up waiting

	mu                 sync.Mutex
	waiting, maxAtGate int
}

func newGatedStore(store fedhistory.EventStore, method, server string) *gatedStore {
	return &gatedStore{
		EventStore: store, method: method, server: server,
		entered: make(chan struct{}, 1000), open: make(chan struct{}), cancelled: make(chan error, 1000),
	}
}

func (s *gatedStore) gate(ctx context.Context, method, server string) error {
	if method != s.method || (s.server != "" && server != s.server) {
		return nil
	}
	s.mu.Lock()
	s.waiting++
	s.maxAtGate = max(s.maxAtGate, s.waiting)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.waiting--
		s.mu.Unlock()
	}()
	s.entered <- struct{}{}
	select {
	case <-s.open:
		return nil
	case <-ctx.Done():
		s.cancelled <- ctx.Err()
		return fmt.Errorf("gated store: %s: %w", method, ctx.Err())
	}
}

// mostAtGate is the largest number of calls that waited at the gate at once.
func (s *gatedStore) mostAtGate() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxAtGate
}

func (s *gatedStore) CurrentState(ctx context.Context, roomID, server string) (*fedhistory.CurrentState, error) {
	if err := s.gate(ctx, "CurrentState", server); err != nil {
		return nil, err
	}
	return s.EventStore.CurrentState(ctx, roomID, server)
}

func (s *gatedStore) Events(ctx context.Context, roomID string, ids []string) ([]*fedhistory.Event, error) {
	if err := s.gate(ctx, "Events", ""); err != nil {
		return nil, err
	}
	return s.EventStore.Events(ctx, roomID, ids)
}

func (s *gatedStore) Visibility(ctx context.Context, roomID, server string, ids []string) ([]fedhistory.EventVisibility, error) {
	if err := s.gate(ctx, "Visibility", server); err != nil {
		return nil, err
	}
	return s.EventStore.Visibility(ctx, roomID, server, ids)
}

// historyRequest builds a request for one of the endpoints from origin
// ("" for none), with extra headers.
func historyRequest(ctx context.Context, method, target, origin, body string) *http.Request {
	var reader io.Reader = http.NoBody
	if body != "" {
		reader = strings.NewReader(body)
	}
	req := httptest.NewRequestWithContext(ctx, method, target, reader)
	if origin != "" {
		req.Header.Set(originHeader, origin)
	}
	return req
}

// serveRequest runs req through h.
// A streamed answer that fails after its first byte panics with
// http.ErrAbortHandler, as net/http expects; the response then says aborted.
func serveRequest(h http.Handler, req *http.Request) (resp response) {
	rec := httptest.NewRecorder()
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				panic(p)
			}
			resp = response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes(), aborted: true}
		}
	}()
	h.ServeHTTP(rec, req)
	return response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
}

// requireRetryLater checks a 429 M_LIMIT_EXCEEDED with retry_after_ms and
// a Retry-After header of at least one whole second.
func requireRetryLater(t *testing.T, resp response) {
	t.Helper()
	require.Equal(t, http.StatusTooManyRequests, resp.status, "body: %s", resp.body)
	require.Equal(t, "M_LIMIT_EXCEEDED", resp.errcode(t))
	var body struct {
		RetryAfterMS int64 `json:"retry_after_ms"`
	}
	require.NoError(t, json.Unmarshal(resp.body, &body))
	require.Positive(t, body.RetryAfterMS)
	seconds, err := strconv.Atoi(resp.header.Get("Retry-After"))
	require.NoError(t, err, "Retry-After %q", resp.header.Get("Retry-After"))
	require.GreaterOrEqual(t, seconds, 1)
	require.GreaterOrEqual(t, int64(seconds)*1000, body.RetryAfterMS, "Retry-After rounds up")
}

func TestPerOriginLimiter(t *testing.T) {
	room := twoServerRoom(t)
	store := load(t, room)
	target := backfillURL(room.id, "3", room.ev(t, "m5"))

	tests := []struct {
		name                   string
		concurrent, queued     int // Config values; 0 is the default
		wantRunning, wantQueue int
	}{
		{"defaults: 3 at a time and 50 waiting, like Synapse's federation limiter", 0, 0, 3, 50},
		{"configured: 1 at a time and 2 waiting", 1, 2, 1, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Only the noisy origin's requests wait in the store.
			gated := newGatedStore(store, "CurrentState", memberServer)
			h := newHandler(t, gated, func(cfg *fedhistory.Config) {
				cfg.MaxConcurrentPerOrigin = tc.concurrent
				cfg.MaxQueuedPerOrigin = tc.queued
				// Waiting requests give up at their deadline; none may
				// here, however slow the machine.
				cfg.RequestTimeout = time.Hour
			})

			// One request more than the origin may have running and
			// waiting: whatever order they arrive in, exactly one is
			// refused, and it is the only one that can finish while the
			// store holds the others.
			sent := tc.wantRunning + tc.wantQueue + 1
			results := make(chan response, sent)
			for range sent {
				go func() {
					results <- serveRequest(h, historyRequest(t.Context(), http.MethodGet, target, memberServer, ""))
				}()
			}
			requireRetryLater(t, <-results)
			for range tc.wantRunning {
				<-gated.entered
			}

			// Another origin is served meanwhile.
			other := serveRequest(h, historyRequest(t.Context(), http.MethodGet, target, otherMember, ""))
			require.Equal(t, http.StatusOK, other.status, "body: %s", other.body)

			close(gated.open)
			for range sent - 1 {
				resp := <-results
				require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
			}
			require.Equal(t, tc.wantRunning, gated.mostAtGate(), "requests of one origin running at once")
		})
	}
}

// TestMalformedRequestsAreAnswered400WhenTheOriginIsBusy: parsing comes
// before the per-origin queue (the chaos suite saw a bad limit answered 429
// or 503 under load), so a malformed request gets its 400 however many of
// its origin's requests are running and queued, and takes no slot.
func TestMalformedRequestsAreAnswered400WhenTheOriginIsBusy(t *testing.T) {
	room := twoServerRoom(t)
	store := load(t, room)
	target := backfillURL(room.id, "3", room.ev(t, "m5"))
	gated := newGatedStore(store, "CurrentState", memberServer)
	h := newHandler(t, gated, func(cfg *fedhistory.Config) {
		cfg.MaxConcurrentPerOrigin = 1
		cfg.MaxQueuedPerOrigin = 1
		cfg.RequestTimeout = time.Hour
	})
	results := make(chan response, 2)
	for range 2 { // one running, one queued: the origin is full
		go func() {
			results <- serveRequest(h, historyRequest(t.Context(), http.MethodGet, target, memberServer, ""))
		}()
	}
	<-gated.entered
	for _, bad := range []struct{ method, target, body string }{
		{http.MethodGet, fedhistory.Prefix + "/backfill/" + url.PathEscape(room.id) + "?v=" + url.QueryEscape(room.ev(t, "m5")) + "&limit=x", ""},
		{http.MethodGet, fedhistory.Prefix + "/backfill/" + url.PathEscape(room.id) + "?limit=3", ""},
		{http.MethodPost, fedhistory.Prefix + "/get_missing_events/" + url.PathEscape(room.id), `{"latest_events":"not a list"}`},
	} {
		resp := serveRequest(h, historyRequest(t.Context(), bad.method, bad.target, memberServer, bad.body))
		require.Equal(t, http.StatusBadRequest, resp.status, "%s: body: %s", bad.target, resp.body)
	}
	close(gated.open)
	for range 2 {
		resp := <-results
		require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	}
}

func TestInFlightCap(t *testing.T) {
	room := twoServerRoom(t)
	store := load(t, room)
	target := backfillURL(room.id, "3", room.ev(t, "m5"))
	gated := newGatedStore(store, "CurrentState", "")
	h := newHandler(t, gated, func(cfg *fedhistory.Config) {
		cfg.MaxInFlight = 2
		cfg.RequestTimeout = time.Hour
	})

	results := make(chan response, 2)
	for _, origin := range []string{memberServer, otherMember} {
		go func() {
			results <- serveRequest(h, historyRequest(t.Context(), http.MethodGet, target, origin, ""))
		}()
	}
	<-gated.entered
	<-gated.entered

	tests := []struct {
		name   string
		origin string
	}{
		{"a third origin", "hs4.example"},
		{"an origin with requests running", memberServer},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			requireRetryLater(t, serveRequest(h, historyRequest(t.Context(), http.MethodGet, target, tc.origin, "")))
		})
	}
	// The cap counts authenticated requests only: work before
	// authentication is bounded by the Authenticator (sign's pending
	// key-fetch limits), so a request that fails it is told so.
	resp := serveRequest(h, historyRequest(t.Context(), http.MethodGet, target, "", ""))
	require.Equal(t, http.StatusUnauthorized, resp.status, "body: %s", resp.body)

	close(gated.open)
	for range 2 {
		resp := <-results
		require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	}
	// The slots are free again.
	resp = serveRequest(h, historyRequest(t.Context(), http.MethodGet, target, memberServer, ""))
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
}

// TestQueuedRequestsHoldNoInFlightSlot: requests waiting in one origin's
// queue do not count against MaxInFlight, so a queue cannot take the other
// origins' capacity (security issue, item 5); and a queued request whose
// deadline passes is answered as a timeout, not as a refusal.
func TestQueuedRequestsHoldNoInFlightSlot(t *testing.T) {
	room := twoServerRoom(t)
	store := load(t, room)
	target := backfillURL(room.id, "3", room.ev(t, "m5"))
	gated := newGatedStore(store, "CurrentState", memberServer)
	h := newHandler(t, gated, func(cfg *fedhistory.Config) {
		cfg.MaxConcurrentPerOrigin = 1
		cfg.MaxQueuedPerOrigin = 10
		cfg.MaxInFlight = 2
		cfg.RequestTimeout = time.Hour
	})

	const sent = 6 // 1 running, 5 queued: three times MaxInFlight
	results := make(chan response, sent)
	for range sent {
		go func() {
			results <- serveRequest(h, historyRequest(t.Context(), http.MethodGet, target, memberServer, ""))
		}()
	}
	<-gated.entered // the one running request holds the origin's slot

	other := serveRequest(h, historyRequest(t.Context(), http.MethodGet, target, otherMember, ""))
	require.Equal(t, http.StatusOK, other.status, "another origin is served: body %s", other.body)

	// A request that would queue behind the running one but whose deadline
	// has passed is a timeout (503), not a 429.
	expired, cancel := context.WithCancel(t.Context())
	cancel()
	late := serveRequest(h, historyRequest(expired, http.MethodGet, target, memberServer, ""))
	require.Equal(t, http.StatusServiceUnavailable, late.status, "body: %s", late.body)
	require.Equal(t, "M_UNKNOWN", late.errcode(t))

	close(gated.open)
	for range sent {
		resp := <-results
		require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	}
}

func TestRequestSizeCaps(t *testing.T) {
	room := twoServerRoom(t)
	store := load(t, room)
	m5 := room.ev(t, "m5")
	backfill := backfillURL(room.id, "3", m5)

	// ids returns n distinct IDs (unknown to the store: the caps are about
	// the size of the request, not what it names).
	ids := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = "$unknown" + strconv.Itoa(i)
		}
		return out
	}
	missingBody := func(earliest, latest []string) string {
		b, err := json.Marshal(map[string]any{"earliest_events": earliest, "latest_events": latest, "limit": 5})
		require.NoError(t, err)
		return string(b)
	}
	// padded is a valid body of exactly size bytes.
	padded := func(size int) string {
		body := missingBody(nil, []string{m5})
		require.LessOrEqual(t, len(body), size)
		return body + strings.Repeat(" ", size-len(body))
	}

	tests := []struct {
		name    string
		config  func(*fedhistory.Config)
		method  string
		target  string
		header  int // bytes of an extra header's value
		body    string
		status  int
		errcode string
	}{
		{"headers at the default cap's edge", nil, http.MethodGet, backfill, 12 << 10, "", 200, ""},
		{"headers over the default cap of 16 KiB", nil, http.MethodGet, backfill, 16 << 10, "", 431, "M_TOO_LARGE"},
		{"headers over a configured cap", func(c *fedhistory.Config) { c.MaxHeaderBytes = 1024 }, http.MethodGet, backfill, 1024, "", 431, "M_TOO_LARGE"},
		{"a long URI counts toward the header cap", func(c *fedhistory.Config) { c.MaxHeaderBytes = 1024 },
			http.MethodGet, backfillURL(room.id, "3", append(ids(80), m5)...), 0, "", 431, "M_TOO_LARGE"},

		{"a body at the configured cap", func(c *fedhistory.Config) { c.MaxRequestBodyBytes = 200 }, http.MethodPost, missingURL(room.id), 0, padded(200), 200, ""},
		{"a body over the configured cap", func(c *fedhistory.Config) { c.MaxRequestBodyBytes = 200 }, http.MethodPost, missingURL(room.id), 0, padded(201), 413, "M_TOO_LARGE"},
		{"a body over the default cap of 64 KiB", nil, http.MethodPost, missingURL(room.id), 0, padded(64<<10 + 1), 413, "M_TOO_LARGE"},

		{"v at the default cap of 100", nil, http.MethodGet, backfillURL(room.id, "3", append(ids(99), m5)...), 0, "", 200, ""},
		{"v over the default cap", nil, http.MethodGet, backfillURL(room.id, "3", append(ids(100), m5)...), 0, "", 400, "M_INVALID_PARAM"},
		{"v over a configured cap", func(c *fedhistory.Config) { c.MaxBackfillSeeds = 2 }, http.MethodGet, backfillURL(room.id, "3", append(ids(2), m5)...), 0, "", 400, "M_INVALID_PARAM"},
		{"comma-joined v values count one by one", func(c *fedhistory.Config) { c.MaxBackfillSeeds = 2 },
			http.MethodGet, backfillURL(room.id, "3", strings.Join(append(ids(2), m5), ",")), 0, "", 400, "M_INVALID_PARAM"},

		{"earliest_events at the default cap of 1000", nil, http.MethodPost, missingURL(room.id), 0, missingBody(ids(1000), []string{m5}), 200, ""},
		{"earliest_events over the default cap", nil, http.MethodPost, missingURL(room.id), 0, missingBody(ids(1001), []string{m5}), 400, "M_INVALID_PARAM"},
		{"latest_events over the default cap", nil, http.MethodPost, missingURL(room.id), 0, missingBody(nil, append(ids(1000), m5)), 400, "M_INVALID_PARAM"},
		{"earliest_events over a configured cap", func(c *fedhistory.Config) { c.MaxMissingEventIDs = 2 },
			http.MethodPost, missingURL(room.id), 0, missingBody(ids(3), []string{m5}), 400, "M_INVALID_PARAM"},
		{"latest_events over a configured cap", func(c *fedhistory.Config) { c.MaxMissingEventIDs = 2 },
			http.MethodPost, missingURL(room.id), 0, missingBody(nil, append(ids(2), m5)), 400, "M_INVALID_PARAM"},
		{"both lists at a configured cap", func(c *fedhistory.Config) { c.MaxMissingEventIDs = 2 },
			http.MethodPost, missingURL(room.id), 0, missingBody(ids(2), append(ids(1), m5)), 200, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mutate []func(*fedhistory.Config)
			if tc.config != nil {
				mutate = append(mutate, tc.config)
			}
			// The store counts its calls: a refused request must not
			// have cost any store work.
			faulty := faultstore.Wrap(store, faultstore.Faults{})
			h := newHandler(t, faulty, mutate...)
			req := historyRequest(t.Context(), tc.method, tc.target, memberServer, tc.body)
			if tc.header > 0 {
				req.Header.Set("X-Padding", strings.Repeat("p", tc.header))
			}
			resp := serveRequest(h, req)
			require.Equal(t, tc.status, resp.status, "body: %s", resp.body)
			if tc.errcode != "" {
				require.Equal(t, tc.errcode, resp.errcode(t))
				require.Empty(t, faulty.Calls(), "a refused request reached the store")
			}
		})
	}
}

// The context of a request reaches every store call: when the deadline
// passes or the client goes away, the store call in progress sees it.
func TestCancellationReachesTheStore(t *testing.T) {
	room := twoServerRoom(t)
	store := load(t, room)
	endpoints := []struct {
		name, method, target, body string
	}{
		{"backfill", http.MethodGet, backfillURL(room.id, "3", room.ev(t, "m5")), ""},
		{"get_missing_events", http.MethodPost, missingURL(room.id),
			`{"earliest_events":["` + room.ev(t, "m1") + `"],"latest_events":["` + room.ev(t, "m5") + `"],"limit":3}`},
	}
	// The store calls a request makes, in order: authorisation, the walk,
	// the visibility filter.
	methods := []string{"CurrentState", "Events", "Visibility"}

	for _, ep := range endpoints {
		for _, method := range methods {
			t.Run(ep.name+": the deadline passes during "+method, func(t *testing.T) {
				withGrowingDeadline(t, func(timeout time.Duration) bool {
					gated := newGatedStore(store, method, "")
					// The gate never opens: the store is slower than any
					// deadline, so the request can only end by its deadline.
					h := newHandler(t, gated, func(cfg *fedhistory.Config) { cfg.RequestTimeout = timeout })
					resp := serveRequest(h, historyRequest(t.Context(), ep.method, ep.target, memberServer, ep.body))
					select {
					case <-gated.entered:
					default:
						return false
					}
					require.ErrorIs(t, <-gated.cancelled, context.DeadlineExceeded)
					require.Equal(t, http.StatusServiceUnavailable, resp.status, "body: %s", resp.body)
					require.Equal(t, "M_UNKNOWN", resp.errcode(t))
					return true
				})
			})

			t.Run(ep.name+": the client goes away during "+method, func(t *testing.T) {
				gated := newGatedStore(store, method, "")
				h := newHandler(t, gated)
				ctx, cancel := context.WithCancel(t.Context())
				done := make(chan response, 1)
				go func() { done <- serveRequest(h, historyRequest(ctx, ep.method, ep.target, memberServer, ep.body)) }()
				<-gated.entered
				cancel()
				require.ErrorIs(t, <-gated.cancelled, context.Canceled)
				resp := <-done
				require.Equal(t, http.StatusServiceUnavailable, resp.status, "body: %s", resp.body)
			})
		}
	}

	t.Run("a client hanging up its connection cancels the walk", func(t *testing.T) {
		gated := newGatedStore(store, "Events", "")
		srv := httptest.NewServer(newHandler(t, gated))
		defer srv.Close()
		ctx, cancel := context.WithCancel(t.Context())
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+endpoints[0].target, nil)
		require.NoError(t, err)
		req.Header.Set(originHeader, memberServer)
		failed := make(chan error, 1)
		go func() {
			resp, err := srv.Client().Do(req)
			if err == nil {
				resp.Body.Close()
			}
			failed <- err
		}()
		<-gated.entered
		cancel() // closes the connection
		require.ErrorIs(t, <-failed, context.Canceled)
		require.ErrorIs(t, <-gated.cancelled, context.Canceled)
	})
}

// withGrowingDeadline calls attempt with request deadlines of 20ms, 40ms, …
// until it reports that its request got as far as the store call under
// test. A short deadline keeps the test quick, but a slow machine (the race
// detector, a loaded CI) can pass it before the request reaches that call,
// and then there is nothing to check: try again with more time. No attempt
// asserts anything about how long it took.
func withGrowingDeadline(t *testing.T, attempt func(timeout time.Duration) (reached bool)) {
	t.Helper()
	for timeout := 20 * time.Millisecond; timeout <= time.Minute; timeout *= 2 {
		if attempt(timeout) {
			return
		}
	}
	t.Fatal("no request reached the store call under test, even with a deadline of a minute")
}

// lockedBuffer collects log output written from the handler's goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// faultRoom is the room of the fault tests, in a store that also holds
// another room whose events must never be served for it.
type faultRoom struct {
	room, other *testRoom
	store       *memstore.Store
	// known maps each event ID of room to its stored JSON; otherKnown
	// those of other.
	known, otherKnown map[string]json.RawMessage
	// requests are valid requests of both endpoints that get events.
	requests []faultRequest
}

type faultRequest struct {
	name, method, target, body string
}

func newFaultRoom(t *testing.T) *faultRoom {
	t.Helper()
	room := linearAndForkedRoom(t, "10")
	other := newTestRoom(t, "10", 41)
	other.messages(t, "x", 3)
	store := load(t, room, other)
	known, otherKnown := map[string]json.RawMessage{}, map[string]json.RawMessage{}
	for _, ev := range room.b.Events() {
		known[ev.ID] = ev.JSON
	}
	for _, ev := range other.b.Events() {
		otherKnown[ev.ID] = ev.JSON
	}
	m7, m6, m2 := room.ev(t, "m7"), room.ev(t, "m6"), room.ev(t, "m2")
	return &faultRoom{
		room: room, other: other, store: store, known: known, otherKnown: otherKnown,
		requests: []faultRequest{
			{"backfill", http.MethodGet, backfillURL(room.id, "20", m7), ""},
			{"backfill from a fork", http.MethodGet, backfillURL(room.id, "5", room.ev(t, "a2"), room.ev(t, "b1")), ""},
			{"get_missing_events", http.MethodPost, missingURL(room.id),
				`{"earliest_events":["` + m2 + `"],"latest_events":["` + m7 + `"],"limit":20}`},
			{"get_missing_events from the middle", http.MethodPost, missingURL(room.id),
				`{"earliest_events":[],"latest_events":["` + m6 + `"],"limit":10,"min_depth":3}`},
		},
	}
}

// servedIDs checks that a 200 answer is a correct filtered response for
// fr.room, whatever the store did: a JSON object whose PDUs are all events of
// the room, each exactly as stored or redacted, none twice, none with a depth
// canonical JSON cannot hold. It returns the served IDs in order.
func (fr *faultRoom) servedIDs(t *testing.T, resp response) []string {
	t.Helper()
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	require.Equal(t, "application/json", resp.header.Get("Content-Type"))
	body := resp.json(t)
	var ids []string
	found := false
	for _, key := range []string{"pdus", "events", "auth_chain"} {
		if list, ok := body[key]; ok {
			ids = append(ids, fr.servedList(t, list)...)
			found = true
		}
	}
	require.True(t, found, "no pdus, events or auth_chain: %s", resp.body)
	return ids
}

// servedList checks one list of PDUs of a 200 answer (see servedIDs).
func (fr *faultRoom) servedList(t *testing.T, list json.RawMessage) []string {
	t.Helper()
	return fr.servedListOf(t, fr.room, fr.known, list)
}

// servedListOf checks one list of PDUs of room, whose stored events are
// known.
func (fr *faultRoom) servedListOf(t *testing.T, room *testRoom, known map[string]json.RawMessage, list json.RawMessage) []string {
	t.Helper()
	var pdus []json.RawMessage
	require.NoError(t, json.Unmarshal(list, &pdus))
	ids := make([]string, 0, len(pdus))
	seen := map[string]bool{}
	for _, pdu := range pdus {
		var fields struct {
			RoomID string `json:"room_id"`
			Depth  int64  `json:"depth"`
		}
		require.NoError(t, json.Unmarshal(pdu, &fields), "PDU: %s", pdu)
		require.Equal(t, room.id, fields.RoomID, "an event of another room was served: %s", pdu)
		require.LessOrEqual(t, fields.Depth, int64(dag.MaxCanonicalInt))
		require.GreaterOrEqual(t, fields.Depth, int64(dag.MinCanonicalInt))
		id := idOfPDU(t, room.version, pdu)
		stored, ok := known[id]
		require.True(t, ok, "served an event that is not in the room: %s", pdu)
		if !bytes.Equal(stored, pdu) {
			redacted, err := redactV10(stored)
			require.NoError(t, err)
			require.JSONEq(t, string(redacted), string(pdu), "served altered bytes for %s", id)
		}
		require.False(t, seen[id], "event %s served twice", id)
		seen[id] = true
		ids = append(ids, id)
	}
	return ids
}

// redactV10 redacts a room version 10 event, the version of faultRoom.
func redactV10(event json.RawMessage) ([]byte, error) {
	return redact.Event("10", event)
}

// requireSpecError checks a non-200 answer: a spec-form JSON error that
// carries no internal detail.
func requireSpecError(t *testing.T, resp response, status int, errcode string) {
	t.Helper()
	require.Equal(t, status, resp.status, "body: %s", resp.body)
	require.Equal(t, errcode, resp.errcode(t))
	for _, detail := range []string{"faultstore", "injected", "panic", "goroutine", ".go:"} {
		require.NotContains(t, string(resp.body), detail)
	}
}

func TestStoreErrorsAndPanics(t *testing.T) {
	fr := newFaultRoom(t)
	for _, req := range fr.requests {
		t.Run(req.name+": a failing store gives 500 M_UNKNOWN", func(t *testing.T) {
			logs := &lockedBuffer{}
			h := newHandler(t, faultstore.Wrap(fr.store, faultstore.Faults{ErrorRate: 1}), func(cfg *fedhistory.Config) {
				cfg.Logger = slog.New(slog.NewJSONHandler(logs, nil))
			})
			requireSpecError(t, serveRequest(h, historyRequest(t.Context(), req.method, req.target, memberServer, req.body)), 500, "M_UNKNOWN")
			// The detail goes to the log instead.
			require.Contains(t, logs.String(), faultstore.ErrInjected.Error())
		})

		t.Run(req.name+": a misaligned Visibility answer gives 500 M_UNKNOWN", func(t *testing.T) {
			logs := &lockedBuffer{}
			faulty := faultstore.Wrap(fr.store, faultstore.Faults{Garbage: faultstore.MisalignedVisibility})
			h := newHandler(t, faulty, func(cfg *fedhistory.Config) {
				cfg.Logger = slog.New(slog.NewJSONHandler(logs, nil))
			})
			requireSpecError(t, serveRequest(h, historyRequest(t.Context(), req.method, req.target, memberServer, req.body)), 500, "M_UNKNOWN")
			require.Equal(t, 1, faulty.Calls()["Visibility"])
			var line struct{ Level, Msg, Error string }
			require.NoError(t, json.Unmarshal([]byte(logs.String()), &line), "log: %s", logs.String())
			require.Equal(t, "ERROR", line.Level)
			require.Equal(t, "fedhistory: request failed", line.Msg)
			require.Contains(t, line.Error, "does not have one entry per event ID")
		})

		t.Run(req.name+": a panicking store gives 500 M_UNKNOWN and a logged stack", func(t *testing.T) {
			logs := &lockedBuffer{}
			h := newHandler(t, faultstore.Wrap(fr.store, faultstore.Faults{PanicRate: 1}), func(cfg *fedhistory.Config) {
				cfg.Logger = slog.New(slog.NewJSONHandler(logs, nil))
			})
			requireSpecError(t, serveRequest(h, historyRequest(t.Context(), req.method, req.target, memberServer, req.body)), 500, "M_UNKNOWN")

			var line struct {
				Level, Msg, Panic, Stack string
			}
			require.NoError(t, json.Unmarshal([]byte(logs.String()), &line), "log: %s", logs.String())
			require.Equal(t, "ERROR", line.Level)
			require.Contains(t, line.Msg, "panic")
			require.Contains(t, line.Panic, faultstore.ErrInjectedPanic.Error())
			require.Contains(t, line.Stack, "goroutine ")
			require.Contains(t, line.Stack, "faultstore.(*Store).begin", "the stack shows where the panic happened")
		})

		t.Run(req.name+": a slow store meets the deadline", func(t *testing.T) {
			withGrowingDeadline(t, func(timeout time.Duration) bool {
				faulty := faultstore.Wrap(fr.store, faultstore.Faults{Latency: time.Hour})
				h := newHandler(t, faulty, func(cfg *fedhistory.Config) { cfg.RequestTimeout = timeout })
				resp := serveRequest(h, historyRequest(t.Context(), req.method, req.target, memberServer, req.body))
				if len(faulty.Calls()) == 0 {
					return false
				}
				requireSpecError(t, resp, 503, "M_UNKNOWN")
				// The first call gave up on the deadline; nothing came
				// after it.
				require.Equal(t, map[string]int{"CurrentState": 1}, faulty.Calls())
				return true
			})
		})
	}
}

func TestStoreGarbage(t *testing.T) {
	fr := newFaultRoom(t)
	clean := newHandler(t, fr.store)

	tests := []struct {
		garbage faultstore.Garbage
		// sameAnswer: the garbage is recognisable and must change nothing
		// in an answer that is served.
		sameAnswer bool
		// nothingServed: every event is unusable, so nothing may be served.
		nothingServed bool
		// storeError: the garbage makes the request fail with the store
		// error answer (500 M_UNKNOWN) when it is picked, and at rate 0
		// always.
		storeError bool
	}{
		{faultstore.ForeignRoomEvents, true, false, false},
		{faultstore.DuplicateIDs, true, false, false},
		{faultstore.PrevEventCycles, false, false, false},
		{faultstore.MissingFields, false, false, false},
		{faultstore.DepthOutOfRange, false, true, false},
		{faultstore.MisalignedVisibility, true, false, true},
		{faultstore.AllGarbage, false, false, false},
	}
	for _, tc := range tests {
		for _, rate := range []float64{0, 0.3} { // 0: every event
			for _, req := range fr.requests {
				t.Run(fmt.Sprintf("%s at rate %v: %s", tc.garbage, rate, req.name), func(t *testing.T) {
					faulty := faultstore.Wrap(fr.store, faultstore.Faults{Garbage: tc.garbage, GarbageRate: rate, Seed: 7})
					h := newHandler(t, faulty)
					// Twice: PrevEventCycles links to events answered by
					// earlier calls, and the second request has some.
					for range 2 {
						resp := serveRequest(h, historyRequest(t.Context(), req.method, req.target, memberServer, req.body))
						if tc.storeError && rate == 0 {
							requireSpecError(t, resp, http.StatusInternalServerError, "M_UNKNOWN")
							continue
						}
						if tc.garbage&faultstore.MisalignedVisibility != 0 && resp.status == http.StatusInternalServerError {
							// Picked this time.
							requireSpecError(t, resp, http.StatusInternalServerError, "M_UNKNOWN")
							continue
						}
						got := fr.servedIDs(t, resp)
						switch {
						case tc.nothingServed && rate == 0:
							require.Empty(t, got)
						case tc.sameAnswer:
							want := fr.servedIDs(t, serveRequest(clean, historyRequest(t.Context(), req.method, req.target, memberServer, req.body)))
							require.Equal(t, want, got)
						}
					}
				})
			}
		}
	}
}

// TestRandomFaultsProperty sends random requests, valid and not, through
// stores with random faults (fixed seeds, so a failure reproduces). Whatever
// happens: no panic escapes the handler, every answer is spec-form JSON, and
// a 200 is a correct filtered response that holds no event of another room.
func TestRandomFaultsProperty(t *testing.T) {
	fr := newFaultRoom(t)
	roomIDs := make([]string, 0, len(fr.known))
	for id := range fr.known {
		roomIDs = append(roomIDs, id)
	}
	otherIDs := []string{fr.other.ev(t, "x1"), fr.other.ev(t, "x3"), "$unknown", "", "not an id", faultstore.ForeignRoomID}
	origins := []string{memberServer, memberServer, memberServer, "stranger.example"}
	garbageKinds := []faultstore.Garbage{0, faultstore.ForeignRoomEvents, faultstore.DuplicateIDs,
		faultstore.PrevEventCycles, faultstore.MissingFields, faultstore.DepthOutOfRange, faultstore.AllGarbage}

	const configs, requestsPerConfig = 40, 25
	statuses := map[int]int{}
	for seed := range uint64(configs) {
		rng := rand.New(rand.NewPCG(seed, 0xfa017))
		pick := func(from []string) string { return from[rng.IntN(len(from))] }
		someIDs := func() []string {
			ids := make([]string, rng.IntN(4))
			for i := range ids {
				if rng.IntN(4) == 0 {
					ids[i] = pick(otherIDs)
				} else {
					ids[i] = pick(roomIDs)
				}
			}
			return ids
		}
		faults := faultstore.Faults{
			ErrorRate:   []float64{0, 0, 0.05, 0.3}[rng.IntN(4)],
			PanicRate:   []float64{0, 0, 0.05, 0.3}[rng.IntN(4)],
			Garbage:     garbageKinds[rng.IntN(len(garbageKinds))] | garbageKinds[rng.IntN(len(garbageKinds))],
			GarbageRate: rng.Float64(),
			Seed:        int64(seed),
		}
		t.Run(fmt.Sprintf("seed %d: %+v", seed, faults), func(t *testing.T) {
			h := newHandler(t, faultstore.Wrap(fr.store, faults))
			for i := range requestsPerConfig {
				var req *http.Request
				origin, anyID := pick(origins), pick(append(someIDs(), pick(roomIDs)))
				switch rng.IntN(8) {
				case 0:
					req = historyRequest(t.Context(), http.MethodGet, stateURL(pick([]string{"state", "state_ids"}), fr.room.id, anyID), origin, "")
				case 1:
					req = historyRequest(t.Context(), http.MethodGet,
						fedhistory.Prefix+"/event_auth/"+url.PathEscape(fr.room.id)+"/"+url.PathEscape(anyID), origin, "")
				case 2:
					req = historyRequest(t.Context(), http.MethodGet, eventURL(anyID), origin, "")
				case 3:
					req = historyRequest(t.Context(), http.MethodGet, fedhistory.Prefix+"/timestamp_to_event/"+
						url.PathEscape(fr.room.id)+"?dir="+pick([]string{"f", "b", "x"})+
						"&ts="+strconv.FormatInt(roomgen.BaseTimestamp.UnixMilli()+int64(rng.IntN(100_000)), 10), origin, "")
				}
				switch {
				case req != nil:
				case rng.IntN(2) == 0:
					limit := pick([]string{"1", "5", "20", "100", "0", "-3", "x", ""})
					req = historyRequest(t.Context(), http.MethodGet, backfillURL(fr.room.id, limit, someIDs()...), pick(origins), "")
				default:
					body, err := json.Marshal(map[string]any{
						"earliest_events": someIDs(), "latest_events": someIDs(),
						"limit": rng.IntN(30) - 5, "min_depth": rng.IntN(12) - 2,
					})
					require.NoError(t, err)
					if rng.IntN(10) == 0 {
						body = body[:rng.IntN(len(body))]
					}
					req = historyRequest(t.Context(), http.MethodPost, missingURL(fr.room.id), pick(origins), string(body))
				}
				target := req.URL.String()
				resp := serveRequest(h, req)
				if resp.aborted {
					// A streamed answer that failed after its first byte:
					// the connection is dropped, never a short answer sent.
					statuses[-1]++
					continue
				}
				statuses[resp.status]++
				switch {
				case resp.status == http.StatusOK && strings.Contains(target, "/state_ids/"):
					body := resp.json(t)
					for _, key := range []string{"pdu_ids", "auth_chain_ids"} {
						var ids []string
						require.NoError(t, json.Unmarshal(body[key], &ids), "%s: %s", key, resp.body)
					}
				case resp.status == http.StatusOK && strings.Contains(target, "/timestamp_to_event/"):
					var answer struct {
						EventID        string `json:"event_id"`
						OriginServerTS int64  `json:"origin_server_ts"`
					}
					require.NoError(t, json.Unmarshal(resp.body, &answer))
					_, known := fr.known[answer.EventID]
					require.True(t, known, "the answer %q is an event of the room", answer.EventID)
				case resp.status == http.StatusOK && strings.Contains(target, "/event/"):
					// /event serves an event of whichever room the origin
					// may read: hs2 is in the other room too.
					var txn struct{ PDUs []json.RawMessage }
					require.NoError(t, json.Unmarshal(resp.body, &txn))
					require.Len(t, txn.PDUs, 1)
					var fields struct {
						RoomID string `json:"room_id"`
					}
					require.NoError(t, json.Unmarshal(txn.PDUs[0], &fields))
					if fields.RoomID == fr.other.id {
						fr.servedListOf(t, fr.other, fr.otherKnown, resp.json(t)["pdus"])
					} else {
						fr.servedIDs(t, resp)
					}
				case resp.status == http.StatusOK:
					fr.servedIDs(t, resp)
				case resp.status == http.StatusNotFound, resp.status == http.StatusBadRequest,
					resp.status == http.StatusForbidden, resp.status == http.StatusInternalServerError:
					resp.errcode(t)
				default:
					t.Fatalf("request %d (%s): unexpected status %d: %s", i, target, resp.status, resp.body)
				}
			}
		})
	}
	// The seeds do reach every outcome, served answers included.
	for _, status := range []int{200, 400, 403, 404, 500} {
		require.Positive(t, statuses[status], "no request answered %d: %v", status, statuses)
	}
	t.Logf("statuses: %v", statuses)
}

// keyServerFault is how a test key server misbehaves.
type keyServerFault int

const (
	keyServerHealthy      keyServerFault = iota
	keyServerSlow                        // answers nothing until the fetch gives up
	keyServerDown                        // 500 M_UNKNOWN
	keyServerBadSignature                // a key document whose self-signature does not verify
)

// TestKeyServerFaults puts the real X-Matrix verifier in front of the
// handler, with the origin's key server reachable only through Resolve. A
// key server that is slow, down or lying gets the request 401, and its
// failure is remembered: a second request within FailureCacheTTL, even one
// naming another key ID, does not ask it again.
func TestKeyServerFaults(t *testing.T) {
	room := twoServerRoom(t)
	store := load(t, room)
	target := backfillURL(room.id, "2", room.ev(t, "m5"))
	// The verifier's clock stands still: FailureCacheTTL cannot pass
	// between the two requests however slow the machine.
	now := time.Now()
	clock := func() time.Time { return now }

	tests := []struct {
		name   string
		fault  keyServerFault
		status int
	}{
		{"a healthy key server (control)", keyServerHealthy, http.StatusOK},
		{"a slow key server", keyServerSlow, http.StatusUnauthorized},
		{"a key server that is down", keyServerDown, http.StatusUnauthorized},
		{"a key server with a bad self-signature", keyServerBadSignature, http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key, err := sign.GenerateKey(nil)
			require.NoError(t, err)
			var hits atomic.Int64
			// released ends the slow key server's requests. Waiting for
			// their contexts is not enough: the verifier giving up is not
			// always seen by the server as a closed connection.
			released := make(chan struct{})
			keyServer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				switch tc.fault {
				case keyServerSlow:
					select {
					case <-r.Context().Done():
					case <-released:
					}
				case keyServerDown:
					http.Error(w, `{"errcode":"M_UNKNOWN","error":"down"}`, http.StatusInternalServerError)
				case keyServerBadSignature:
					w.Header().Set("Content-Type", "application/json")
					_, _ = w.Write(badlySelfSignedKeyDocument(t, memberServer, key, now.Add(time.Hour)))
				default:
					sign.KeyDocumentHandler(memberServer, []*sign.SigningKey{key}, time.Hour, clock).ServeHTTP(w, r)
				}
			}))
			defer keyServer.Close()
			defer close(released) // before Close, which waits for the handlers

			verifier, err := sign.NewVerifier(sign.VerifierConfig{
				ServerNames:     []string{ourServer},
				Resolve:         map[string]string{memberServer: keyServer.URL},
				KeyFetchTimeout: 200 * time.Millisecond,
				FailureCacheTTL: time.Minute,
				Now:             clock,
			})
			require.NoError(t, err)
			h := newHandler(t, store, func(cfg *fedhistory.Config) { cfg.Authenticator = verifier })

			send := func(signer *sign.SigningKey) response {
				req := historyRequest(t.Context(), http.MethodGet, target, "", "")
				require.NoError(t, signer.SignRequest(req, memberServer, ourServer))
				return serveRequest(h, req)
			}
			first := send(key)
			require.Equal(t, tc.status, first.status, "body: %s", first.body)
			if tc.status == http.StatusUnauthorized {
				require.Equal(t, "M_UNAUTHORIZED", first.errcode(t))
			}
			fetches := hits.Load()
			require.Positive(t, fetches)

			// Within FailureCacheTTL, neither the same key nor another key
			// ID of the same server makes us ask the key server again.
			second := send(key)
			require.Equal(t, tc.status, second.status, "body: %s", second.body)
			otherKey, err := sign.GenerateKey(nil)
			require.NoError(t, err)
			third := send(otherKey)
			require.Equal(t, http.StatusUnauthorized, third.status, "body: %s", third.body)
			require.Equal(t, fetches, hits.Load(), "the key server was asked again")
		})
	}
}

// badlySelfSignedKeyDocument is server's key document for key with one bit
// of its self-signature flipped.
func badlySelfSignedKeyDocument(t *testing.T, server string, key *sign.SigningKey, validUntil time.Time) []byte {
	t.Helper()
	doc, err := sign.KeyDocument(server, []*sign.SigningKey{key}, validUntil)
	require.NoError(t, err)
	var fields map[string]any
	require.NoError(t, json.Unmarshal(doc, &fields))
	signatures := fields["signatures"].(map[string]any)[server].(map[string]any)
	signature, err := base64.RawStdEncoding.DecodeString(signatures[key.ID].(string))
	require.NoError(t, err)
	signature[0] ^= 1
	signatures[key.ID] = base64.RawStdEncoding.EncodeToString(signature)
	out, err := json.Marshal(fields)
	require.NoError(t, err)
	return out
}
