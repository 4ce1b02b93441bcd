// Package obstest drives a fedhistory handler through every outcome that
// the observability adapters (prom, otel) tell apart, for their tests: a
// generated room in a memstore, an Authenticator that takes the origin
// from a header, and one request of each kind.
package obstest

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/faultstore"
	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/fedhistory/fedhistory/sign"
)

// The servers of the world: Member has a user joined to the room; Stranger
// has none; Creator is the room's.
const (
	Creator  = "hs1.example"
	Member   = "hs2.example"
	Stranger = "stranger.example"
)

// OriginHeader names the header the World's Authenticator takes the origin
// from; a request without it is answered 401.
const OriginHeader = "X-Test-Origin"

// World is a room served by handlers that share one Trace.
type World struct {
	Room  *roomgen.Room
	Store *memstore.Store
	trace *fedhistory.Trace
	// Handler serves the room with the default limits.
	Handler *fedhistory.Handler
}

// NewWorld builds a room in which Member's user has joined, and a handler
// serving it with trace. Of its newest events, Member's messages are
// served whole; the creator's are served redacted (the creator is
// erased); and a redaction of an event the store does not hold is
// withheld.
func NewWorld(tb testing.TB, trace *fedhistory.Trace) *World {
	tb.Helper()
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{ServerName: Creator, Seed: 7})
	require.NoError(tb, err)
	require.NoError(tb, b.StandardSetup())
	bob := "@bob:" + Member
	_, err = b.Join(bob)
	require.NoError(tb, err)
	for i := range 30 {
		sender := b.Creator()
		if i%2 == 1 {
			sender = bob
		}
		_, err := b.Message(sender, "message "+strconv.Itoa(i))
		require.NoError(tb, err)
		if i%10 == 5 {
			_, err = b.Redact(b.Creator(), "$not-held-"+strconv.Itoa(i))
			require.NoError(tb, err)
		}
	}
	room := b.Room()
	store := memstore.New()
	for _, ev := range room.Events {
		_, err := store.Add(room.Version, ev.JSON, fedhistory.AddOptions{Rejected: ev.Rejected, Outlier: ev.Outlier})
		require.NoError(tb, err)
	}
	store.EraseUser(b.Creator())
	w := &World{Room: room, Store: store, trace: trace}
	w.Handler = w.NewHandler(tb, store, nil)
	return w
}

// NewHandler returns a handler over store with the World's trace and
// Authenticator, configured further by configure when not nil.
func (w *World) NewHandler(tb testing.TB, store fedhistory.EventStore, configure func(*fedhistory.Config)) *fedhistory.Handler {
	tb.Helper()
	cfg := fedhistory.Config{
		ServerName:    Creator,
		Store:         store,
		Authenticator: fedhistory.AuthenticatorFunc(authenticate),
		Trace:         w.trace,
		Logger:        slog.New(slog.DiscardHandler),
	}
	if configure != nil {
		configure(&cfg)
	}
	h, err := fedhistory.New(cfg)
	require.NoError(tb, err)
	return h
}

var errNoOrigin = errors.New("obstest: no " + OriginHeader + " header")

func authenticate(r *http.Request) (string, error) {
	if origin := r.Header.Get(OriginHeader); origin != "" {
		return origin, nil
	}
	return "", errNoOrigin
}

// Newest is the ID of the room's newest event.
func (w *World) Newest() string { return w.Room.Events[len(w.Room.Events)-1].ID }

// BackfillRequest is origin's GET /backfill of limit events from the newest
// event ("" origin: unauthenticated).
func (w *World) BackfillRequest(origin string, limit int) *http.Request {
	return w.backfillQuery(origin, "v="+url.QueryEscape(w.Newest())+"&limit="+strconv.Itoa(limit))
}

// backfillQuery is origin's GET /backfill with query.
func (w *World) backfillQuery(origin, query string) *http.Request {
	req := httptest.NewRequest(http.MethodGet, fedhistory.Prefix+"/backfill/"+url.PathEscape(w.Room.ID)+"?"+query, nil)
	if origin != "" {
		req.Header.Set(OriginHeader, origin)
	}
	return req
}

// MissingEventsRequest is origin's POST /get_missing_events from the newest
// event back to the room's first.
func (w *World) MissingEventsRequest(origin string) *http.Request {
	body := `{"limit":5,"earliest_events":["` + w.Room.Events[0].ID + `"],"latest_events":["` + w.Newest() + `"]}`
	req := httptest.NewRequest(http.MethodPost, fedhistory.Prefix+"/get_missing_events/"+url.PathEscape(w.Room.ID),
		bytes.NewReader([]byte(body)))
	req.Header.Set(OriginHeader, origin)
	return req
}

// Serve runs req through h and returns the answer.
func Serve(h http.Handler, req *http.Request) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// Outcome is one request of EachOutcome and the status it got.
type Outcome struct {
	Name     string
	Endpoint string
	Status   int
}

// EachOutcome sends one request of each kind the adapters tell apart, and
// checks each got the status it should:
//
//   - a backfill answered 200, with events served whole, redacted and
//     withheld;
//   - a get_missing_events answered 200;
//   - a backfill whose walk ran out of its visit budget (200);
//   - a backfill from an event the store does not hold (200, empty);
//   - 400 (a bad limit), 401 (no origin), 403 (an origin not in the room);
//   - 429, the origin's slot and queue held by requests blocked in the
//     store, with limiter decisions admitted, queued and rejected;
//   - 500, every store call failing.
func (w *World) EachOutcome(tb testing.TB) []Outcome {
	tb.Helper()
	var outcomes []Outcome
	check := func(name, endpoint string, h http.Handler, req *http.Request, want int) {
		tb.Helper()
		rec := Serve(h, req)
		require.Equal(tb, want, rec.Code, "%s: body %s", name, rec.Body.Bytes())
		outcomes = append(outcomes, Outcome{name, endpoint, rec.Code})
	}
	check("served", "backfill", w.Handler, w.BackfillRequest(Member, 20), http.StatusOK)
	check("missing events", "get_missing_events", w.Handler, w.MissingEventsRequest(Member), http.StatusOK)
	tight := w.NewHandler(tb, w.Store, func(cfg *fedhistory.Config) { cfg.MaxWalkVisits = 2 })
	check("walk budget exhausted", "backfill", tight, w.BackfillRequest(Member, 20), http.StatusOK)
	check("bad limit", "backfill", w.Handler,
		w.backfillQuery(Member, "v="+url.QueryEscape(w.Newest())+"&limit=many"), http.StatusBadRequest)
	check("unauthenticated", "backfill", w.Handler, w.BackfillRequest("", 20), http.StatusUnauthorized)
	check("not in the room", "backfill", w.Handler, w.BackfillRequest(Stranger, 20), http.StatusForbidden)
	// A seed the store does not hold is no error: the walk starts from
	// nothing.
	check("unknown event", "backfill", w.Handler,
		w.backfillQuery(Member, "v="+url.QueryEscape("$unknown:"+Creator)+"&limit=5"), http.StatusOK)
	failing := w.NewHandler(tb, faultstore.Wrap(w.Store, faultstore.Faults{ErrorRate: 1}), nil)
	check("store failing", "backfill", failing, w.BackfillRequest(Member, 20), http.StatusInternalServerError)
	outcomes = append(outcomes, w.rejected(tb))
	return outcomes
}

// rejected gets a 429: with one slot and one place in the queue per
// origin, a request blocked in the store holds the slot, and of two more,
// one waits in the queue and the other is turned away.
func (w *World) rejected(tb testing.TB) Outcome {
	tb.Helper()
	blocking := &blockingStore{EventStore: w.Store, entered: make(chan struct{}, 1), release: make(chan struct{})}
	h := w.NewHandler(tb, blocking, func(cfg *fedhistory.Config) {
		cfg.MaxConcurrentPerOrigin, cfg.MaxQueuedPerOrigin = 1, 1
	})
	var wg sync.WaitGroup
	statuses := make(chan int, 3)
	send := func() {
		wg.Go(func() { statuses <- Serve(h, w.BackfillRequest(Member, 5)).Code })
	}
	send()
	<-blocking.entered // the first holds the origin's slot
	send()
	send()
	first := <-statuses // one of the two others, turned away
	blocking.once.Do(func() { close(blocking.release) })
	wg.Wait()
	close(statuses)
	require.Equal(tb, http.StatusTooManyRequests, first)
	for status := range statuses {
		require.Equal(tb, http.StatusOK, status)
	}
	return Outcome{"origin over its limit", "backfill", first}
}

// blockingStore blocks every call until release is closed, saying so on
// entered the first time.
type blockingStore struct {
	fedhistory.EventStore
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (s *blockingStore) wait(ctx context.Context) error {
	select {
	case s.entered <- struct{}{}:
	default:
	}
	select {
	case <-s.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *blockingStore) CurrentState(ctx context.Context, roomID, server string) (*fedhistory.CurrentState, error) {
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	return s.EventStore.CurrentState(ctx, roomID, server)
}

// Unreachable is a server whose key server does not answer.
const Unreachable = "unreachable.example"

// SignedOutcomes serves requests through a sign.Verifier reporting to
// vtrace, which fetches Member's key from a key server on loopback: one
// whose key is fetched (source "direct", 200), one whose key is then
// cached ("cache", 200), and one from a server whose key server refuses
// connections (401).
func (w *World) SignedOutcomes(tb testing.TB, vtrace *sign.VerifierTrace) []Outcome {
	tb.Helper()
	key, err := sign.GenerateKey(nil)
	require.NoError(tb, err)
	keyServer := httptest.NewServer(sign.KeyDocumentHandler(Member, []*sign.SigningKey{key}, 0, nil))
	defer keyServer.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close() // its port now refuses connections
	verifier, err := sign.NewVerifier(sign.VerifierConfig{
		ServerNames: []string{Creator},
		Resolve:     map[string]string{Member: keyServer.URL, Unreachable: closed.URL},
		Trace:       vtrace,
		Logger:      slog.New(slog.DiscardHandler),
	})
	require.NoError(tb, err)
	h := w.NewHandler(tb, w.Store, func(cfg *fedhistory.Config) { cfg.Authenticator = verifier })
	signed := func(origin string) *http.Request {
		req := w.BackfillRequest("", 5)
		require.NoError(tb, key.SignRequest(req, origin, Creator))
		return req
	}
	var outcomes []Outcome
	for _, c := range []struct {
		name, origin string
		want         int
	}{
		{"key fetched", Member, http.StatusOK},
		{"key cached", Member, http.StatusOK},
		{"key server unreachable", Unreachable, http.StatusUnauthorized},
	} {
		rec := Serve(h, signed(c.origin))
		require.Equal(tb, c.want, rec.Code, "%s: body %s", c.name, rec.Body.Bytes())
		outcomes = append(outcomes, Outcome{c.name, "backfill", rec.Code})
	}
	return outcomes
}
