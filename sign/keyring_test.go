package sign

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// newTestKeyring is a keyring fetching with fetch, on clock.
func newTestKeyring(clock *fakeClock, maxServers int, fetch fetchFunc) *keyring {
	return &keyring{
		fetch:        fetch,
		timeout:      time.Minute,
		now:          clock.Now,
		logger:       slog.New(slog.DiscardHandler),
		maxPerOrigin: DefaultMaxPendingPerOrigin,
		maxPending:   DefaultMaxPendingKeyFetches,
		cache:        newKeyCache(maxServers, time.Second),
		flights:      map[string]*flight{},
	}
}

func TestConcurrentRequestsShareOneFetch(t *testing.T) {
	const requests = 20
	clock := newFakeClock()
	k := newKey(t)
	release := make(chan struct{})
	document := KeyDocumentHandler(remoteName, []*SigningKey{k}, time.Hour, clock.Now)
	ks := newKeyServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		document.ServeHTTP(w, r)
	}))
	v := fetchingVerifier(t, ks, clock, func(c *VerifierConfig) { c.MaxPendingPerOrigin = requests })

	codes := make(chan int, requests)
	var wg sync.WaitGroup
	for range requests {
		wg.Go(func() {
			w, _ := serve(v, &recordingHandler{}, signedRequest(t, k, http.MethodGet, backfillURI, nil))
			codes <- w.Code
		})
	}
	// Hold the key server until every request is waiting on the one fetch.
	for forServer, _ := v.keys.waiting(remoteName); forServer < requests; forServer, _ = v.keys.waiting(remoteName) {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	close(codes)
	for code := range codes {
		require.Equal(t, http.StatusOK, code)
	}
	require.EqualValues(t, 1, ks.hits.Load())
}

func TestKeyringSurvivesPanickingFetcher(t *testing.T) {
	clock := newFakeClock()
	keys := newTestKeyring(clock, 10, func(ctx context.Context, server, keyID string) (fetchResult, error) {
		panic("fetcher bug")
	})
	_, err := keys.publicKey(t.Context(), "a", "ed25519:k")
	require.ErrorIs(t, err, ErrKeyServerUnreachable)
	require.ErrorContains(t, err, "fetcher bug")
}

func TestWaiterGivesUpWithItsContext(t *testing.T) {
	clock := newFakeClock()
	var fetches atomic.Int32
	keys := newTestKeyring(clock, 10, func(ctx context.Context, server, keyID string) (fetchResult, error) {
		fetches.Add(1)
		return fetchResult{}, errors.New("too late")
	})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := keys.publicKey(ctx, "a", "ed25519:k")
	require.ErrorIs(t, err, ErrKeyServerUnreachable)
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, fetches.Load(), "no fetch for a request already gone")
	forServer, all := keys.waiting("a")
	require.Equal(t, -1, forServer)
	require.Zero(t, all)
}

// hangingKeyServer publishes key for any origin at /o/<origin>/…, but only
// once released; until then it holds every request.
type hangingKeyServer struct {
	*httptest.Server
	key       *SigningKey
	released  chan struct{}
	arrived   chan string // the origin of each request, on arrival
	abandoned chan string // the origin of each request the client gave up
	requests  atomic.Int32
	once      sync.Once
}

func newHangingKeyServer(t *testing.T, key *SigningKey) *hangingKeyServer {
	t.Helper()
	ks := &hangingKeyServer{key: key, released: make(chan struct{}), arrived: make(chan string, 1000), abandoned: make(chan string, 1000)}
	ks.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/o/"), "/")
		ks.requests.Add(1)
		ks.arrived <- origin
		select {
		case <-ks.released:
			KeyDocumentHandler(origin, []*SigningKey{ks.key}, time.Hour, nil).ServeHTTP(w, r)
		case <-r.Context().Done():
			ks.abandoned <- origin
		}
	}))
	t.Cleanup(ks.Close)
	t.Cleanup(ks.release) // runs first: Close waits for the handlers
	return ks
}

func (ks *hangingKeyServer) release() { ks.once.Do(func() { close(ks.released) }) }

// url is the base URL to Resolve origin to.
func (ks *hangingKeyServer) url(origin string) string { return ks.URL + "/o/" + origin }

// pendingRecorder is a VerifierTrace.Pending that passes each decision on.
type pendingRecorder struct{ decisions chan string }

func newPendingRecorder() *pendingRecorder {
	return &pendingRecorder{decisions: make(chan string, 1000)}
}

func (p *pendingRecorder) trace() *VerifierTrace {
	return &VerifierTrace{Pending: func(decision, origin string) { p.decisions <- decision + " " + origin }}
}

// next returns the next n decisions, counted by kind.
func (p *pendingRecorder) next(t *testing.T, n int) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for range n {
		decision := <-p.decisions
		kind, _, _ := strings.Cut(decision, " ")
		counts[kind]++
	}
	return counts
}

func (p *pendingRecorder) none(t *testing.T) {
	t.Helper()
	select {
	case d := <-p.decisions:
		t.Fatalf("unexpected limiter decision %q", d)
	default:
	}
}

// signedBy is a GET signed by key as origin.
func signedBy(t *testing.T, key *SigningKey, origin string) *http.Request {
	t.Helper()
	r := newRequest(http.MethodGet, backfillURI, nil)
	require.NoError(t, key.SignRequest(r, origin, ourName))
	return r
}

// requireServedWithoutWaiting sends n requests of origin, each signed by key, and
// requires them all to authenticate without a key fetch decision.
func requireServedWithoutWaiting(t *testing.T, v *Verifier, p *pendingRecorder, key *SigningKey, origin string, n int) {
	t.Helper()
	for range n {
		got, err := v.Authenticate(signedBy(t, key, origin))
		require.NoError(t, err)
		require.Equal(t, origin, got)
	}
	p.none(t)
}

// authenticateAsync authenticates r on its own goroutine and sends the
// error to results.
func authenticateAsync(v *Verifier, r *http.Request, results chan<- error) {
	go func() {
		_, err := v.Authenticate(r)
		results <- err
	}()
}

func TestPendingKeyFetchesAreBoundedPerOrigin(t *testing.T) {
	const (
		slow         = "slow.example.org"
		fast         = "fast.example.org"
		cached       = "cached.example.org"
		pinned       = "pinned.example.org"
		maxPerOrigin = 4
		requests     = 10
	)
	k := newKey(t)
	hanging := newHangingKeyServer(t, k)
	working := newKeyServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/o/"), "/")
		KeyDocumentHandler(origin, []*SigningKey{k}, time.Hour, nil).ServeHTTP(w, r)
	}))
	recorder := newPendingRecorder()
	v, err := NewVerifier(VerifierConfig{
		ServerNames: []string{ourName},
		StaticKeys:  map[string]map[string]ed25519.PublicKey{pinned: {k.ID: k.Public()}},
		Resolve: map[string]string{
			slow:   hanging.url(slow),
			fast:   working.URL + "/o/" + fast,
			cached: working.URL + "/o/" + cached,
		},
		MaxPendingPerOrigin: maxPerOrigin,
		Trace:               recorder.trace(),
	})
	require.NoError(t, err)

	_, err = v.Authenticate(signedBy(t, k, cached))
	require.NoError(t, err)
	require.Equal(t, map[string]int{"admitted": 1}, recorder.next(t, 1))

	results := make(chan error, requests)
	for range requests {
		authenticateAsync(v, signedBy(t, k, slow), results)
	}
	require.Equal(t, map[string]int{"admitted": maxPerOrigin, "rejected_origin": requests - maxPerOrigin}, recorder.next(t, requests))
	for range requests - maxPerOrigin {
		require.ErrorIs(t, <-results, ErrTooManyPendingKeyFetches)
	}
	require.Equal(t, slow, <-hanging.arrived, "the waiting requests share one fetch")

	// Meanwhile, the pinned and the cached origin are served as ever,
	// and another origin's fetch is not held up by the slow one.
	requireServedWithoutWaiting(t, v, recorder, k, pinned, 50)
	requireServedWithoutWaiting(t, v, recorder, k, cached, 50)
	require.EqualValues(t, 1, working.hits.Load())
	_, err = v.Authenticate(signedBy(t, k, fast))
	require.NoError(t, err)
	require.Equal(t, map[string]int{"admitted": 1}, recorder.next(t, 1))

	hanging.release()
	for range maxPerOrigin {
		require.NoError(t, <-results)
	}
	require.EqualValues(t, 1, hanging.requests.Load())
	forServer, all := v.keys.waiting(slow)
	require.Equal(t, -1, forServer)
	require.Zero(t, all)
}

func TestPendingKeyFetchesAreBoundedInTotal(t *testing.T) {
	const (
		origins = 300
		cached  = "cached.example.org"
		pinned  = "pinned.example.org"
	)
	k := newKey(t)
	hanging := newHangingKeyServer(t, k)
	working := newKeyServer(t, KeyDocumentHandler(cached, []*SigningKey{k}, time.Hour, nil))
	resolve := map[string]string{cached: working.URL}
	for i := range origins {
		origin := fmt.Sprintf("o%d.example.org", i)
		resolve[origin] = hanging.url(origin)
	}
	recorder := newPendingRecorder()
	v, err := NewVerifier(VerifierConfig{ // the default limits
		ServerNames: []string{ourName},
		StaticKeys:  map[string]map[string]ed25519.PublicKey{pinned: {k.ID: k.Public()}},
		Resolve:     resolve,
		Trace:       recorder.trace(),
	})
	require.NoError(t, err)
	_, err = v.Authenticate(signedBy(t, k, cached))
	require.NoError(t, err)
	recorder.next(t, 1)

	results := make(chan error, origins)
	for i := range origins {
		authenticateAsync(v, signedBy(t, k, fmt.Sprintf("o%d.example.org", i)), results)
	}
	rejected := origins - DefaultMaxPendingKeyFetches
	require.Equal(t, map[string]int{"admitted": DefaultMaxPendingKeyFetches, "rejected_total": rejected}, recorder.next(t, origins))
	for range rejected {
		require.ErrorIs(t, <-results, ErrTooManyPendingKeyFetches)
	}
	arrived := map[string]bool{}
	for range DefaultMaxPendingKeyFetches {
		arrived[<-hanging.arrived] = true
	}
	require.Len(t, arrived, DefaultMaxPendingKeyFetches, "one fetch per admitted origin")

	requireServedWithoutWaiting(t, v, recorder, k, pinned, 50)
	requireServedWithoutWaiting(t, v, recorder, k, cached, 50)
	require.EqualValues(t, 1, working.hits.Load())

	hanging.release()
	for range DefaultMaxPendingKeyFetches {
		require.NoError(t, <-results)
	}
	require.EqualValues(t, DefaultMaxPendingKeyFetches, hanging.requests.Load())
	_, all := v.keys.waiting("")
	require.Zero(t, all)
}

func TestWaitingRequestLeavesWithItsContext(t *testing.T) {
	const slow = "slow.example.org"
	k := newKey(t)
	hanging := newHangingKeyServer(t, k)
	recorder := newPendingRecorder()
	v, err := NewVerifier(VerifierConfig{
		ServerNames: []string{ourName},
		Resolve:     map[string]string{slow: hanging.url(slow)},
		Trace:       recorder.trace(),
	})
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	results := make(chan error, 1)
	authenticateAsync(v, signedBy(t, k, slow).WithContext(ctx), results)
	require.Equal(t, map[string]int{"admitted": 1}, recorder.next(t, 1))
	<-hanging.arrived
	cancel()
	err = <-results
	require.ErrorIs(t, err, ErrKeyServerUnreachable)
	require.ErrorIs(t, err, context.Canceled)

	// Nobody waits any more: the fetch is cancelled, not left running.
	require.Equal(t, slow, <-hanging.abandoned)
	forServer, all := v.keys.waiting(slow)
	require.Equal(t, -1, forServer)
	require.Zero(t, all)

	// Its failure was ours, not the server's: the next request fetches
	// afresh.
	hanging.release()
	_, err = v.Authenticate(signedBy(t, k, slow))
	require.NoError(t, err)
	require.EqualValues(t, 2, hanging.requests.Load())
}

func TestSharedFetchOutlivesARequesterWhoLeaves(t *testing.T) {
	const slow = "slow.example.org"
	k := newKey(t)
	hanging := newHangingKeyServer(t, k)
	recorder := newPendingRecorder()
	v, err := NewVerifier(VerifierConfig{
		ServerNames: []string{ourName},
		Resolve:     map[string]string{slow: hanging.url(slow)},
		Trace:       recorder.trace(),
	})
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	first, second := make(chan error, 1), make(chan error, 1)
	authenticateAsync(v, signedBy(t, k, slow).WithContext(ctx), first)
	authenticateAsync(v, signedBy(t, k, slow), second)
	require.Equal(t, map[string]int{"admitted": 2}, recorder.next(t, 2))
	<-hanging.arrived
	cancel()
	require.ErrorIs(t, <-first, context.Canceled)

	hanging.release()
	require.NoError(t, <-second)
	require.EqualValues(t, 1, hanging.requests.Load())
	require.Empty(t, hanging.abandoned)
}

// waiting reports how many requests wait for a fetch of server's keys
// (-1: no fetch running), and how many wait for any.
func (k *keyring) waiting(server string) (forServer, all int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	forServer = -1
	if f, ok := k.flights[server]; ok {
		forServer = f.waiters
	}
	return forServer, k.pending
}
