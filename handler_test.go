package fedhistory_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gorilla/mux"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/dag"
	"github.com/fedhistory/fedhistory/memstore"
)

func TestNewRequiresTheEssentials(t *testing.T) {
	store := load(t)
	tests := []struct {
		name string
		cfg  fedhistory.Config
	}{
		{"no server name", fedhistory.Config{Store: store, Authenticator: testAuth}},
		{"no store", fedhistory.Config{ServerName: ourServer, Authenticator: testAuth}},
		{"no authenticator: there is no unauthenticated mode", fedhistory.Config{ServerName: ourServer, Store: store}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := fedhistory.New(tc.cfg)
			require.Error(t, err)
		})
	}
}

func TestRouting(t *testing.T) {
	room := newTestRoom(t, "10", 6)
	room.messages(t, "m", 2)
	store := load(t, room)
	m2 := room.ev(t, "m2")
	h := newHandler(t, store)
	rawRoomPath := "/_matrix/federation/v1/backfill/" + room.id + "?v=" + m2 + "&limit=1"

	tests := []struct {
		name    string
		method  string
		target  string
		status  int
		errcode string
	}{
		{"room ID sent raw, as gomatrixserverlib's client does", http.MethodGet, rawRoomPath, 200, ""},
		{"room ID percent-encoded", http.MethodGet, backfillURL(room.id, "1", m2), 200, ""},
		{"wrong method on backfill", http.MethodPost, rawRoomPath, 405, "M_UNRECOGNIZED"},
		{"wrong method on get_missing_events", http.MethodGet, missingURL(room.id), 405, "M_UNRECOGNIZED"},
		{"unknown path under the prefix", http.MethodGet, "/_matrix/federation/v1/send/" + room.id, 404, "M_UNRECOGNIZED"},
		{"a known route with too many segments", http.MethodGet, "/_matrix/federation/v1/event/$a/b", 404, "M_UNRECOGNIZED"},
		{"no room ID", http.MethodGet, "/_matrix/federation/v1/backfill/", 404, "M_UNRECOGNIZED"},
		{"not a room ID", http.MethodGet, "/_matrix/federation/v1/backfill/%24notaroom?v=" + m2 + "&limit=1", 400, "M_INVALID_PARAM"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp := do(t, h, tc.method, tc.target, memberServer, "")
			require.Equal(t, tc.status, resp.status, "body: %s", resp.body)
			if tc.errcode != "" {
				require.Equal(t, tc.errcode, resp.errcode(t))
			}
		})
	}
}

func TestMounting(t *testing.T) {
	room := newTestRoom(t, "10", 7)
	room.messages(t, "m", 2)
	store := load(t, room)
	m2 := room.ev(t, "m2")
	target := backfillURL(room.id, "1", m2)

	t.Run("behind http.StripPrefix", func(t *testing.T) {
		mux := http.NewServeMux()
		mux.Handle(fedhistory.Prefix+"/", http.StripPrefix(fedhistory.Prefix, newHandler(t, store)))
		resp := do(t, mux, http.MethodGet, target, memberServer, "")
		require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
		require.Equal(t, []string{m2}, resp.eventIDs(t, "pdus", room.version))
	})
	t.Run("on an existing gorilla/mux router", func(t *testing.T) {
		router := mux.NewRouter()
		router.HandleFunc("/_matrix/federation/v1/version", func(w http.ResponseWriter, r *http.Request) {})
		_, err := fedhistory.Register(router, fedhistory.Config{
			ServerName: ourServer, Store: store, Authenticator: testAuth,
		})
		require.NoError(t, err)
		resp := do(t, router, http.MethodGet, target, memberServer, "")
		require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
		require.Equal(t, []string{m2}, resp.eventIDs(t, "pdus", room.version))
		resp = do(t, router, http.MethodGet, target+"/", memberServer, "")
		require.Equal(t, http.StatusOK, resp.status, "the trailing-slash form")
		// Only the prefixed routes: nothing at the root of the host's router.
		resp = do(t, router, http.MethodGet, strings.TrimPrefix(target, fedhistory.Prefix), memberServer, "")
		require.Equal(t, http.StatusNotFound, resp.status)
	})
	t.Run("on http.ServeMux, one pattern per route", func(t *testing.T) {
		h := newHandler(t, store)
		mux := http.NewServeMux()
		mux.HandleFunc("GET /_matrix/federation/v1/version", func(w http.ResponseWriter, r *http.Request) {})
		for _, route := range h.Routes() {
			mux.Handle(route.Pattern, route.Handler)
		}
		resp := do(t, mux, http.MethodGet, target, memberServer, "")
		require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
		require.Equal(t, []string{m2}, resp.eventIDs(t, "pdus", room.version))
		resp = do(t, mux, http.MethodGet, target+"/", memberServer, "")
		require.Equal(t, http.StatusOK, resp.status, "the trailing-slash form")
		// A room ID with an encoded slash stays one segment.
		resp = do(t, mux, http.MethodGet, backfillURL("!a/b:hs1.example", "1", m2), memberServer, "")
		require.Equal(t, http.StatusForbidden, resp.status, "body: %s", resp.body)
	})
}

// brokenStore fails or panics in every method but RoomVersion.
type brokenStore struct {
	fedhistory.EventStore
	panics bool
}

func (s brokenStore) Events(ctx context.Context, roomID string, ids []string) ([]*fedhistory.Event, error) {
	if s.panics {
		panic("store exploded")
	}
	return nil, errors.New("connection to db-7.internal refused")
}

func TestStoreFailures(t *testing.T) {
	room := newTestRoom(t, "10", 8)
	room.messages(t, "m", 2)
	store := load(t, room)
	for _, panics := range []bool{false, true} {
		name := map[bool]string{false: "store error", true: "store panic"}[panics]
		t.Run(name, func(t *testing.T) {
			h := newHandler(t, brokenStore{EventStore: store, panics: panics})
			resp := do(t, h, http.MethodGet, backfillURL(room.id, "5", room.ev(t, "m2")), memberServer, "")
			require.Equal(t, http.StatusInternalServerError, resp.status)
			require.Equal(t, "M_UNKNOWN", resp.errcode(t))
			// No internal detail reaches the requester.
			require.NotContains(t, string(resp.body), "db-7")
			require.NotContains(t, string(resp.body), "exploded")
		})
	}
}

func TestUnauthenticatedRequestsNeverReachTheStore(t *testing.T) {
	room := newTestRoom(t, "10", 9)
	store := load(t, room)
	h := newHandler(t, brokenStore{EventStore: store, panics: true})
	req := httptest.NewRequest(http.MethodGet, backfillURL(room.id, "5", "$x"), nil)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	require.Equal(t, http.StatusUnauthorized, rec.Code)
	require.False(t, strings.Contains(rec.Body.String(), "pdus"))
}

// lyingWalker is a store whose own backfill walker returns, besides the
// real events, a copy of one with a depth canonical JSON cannot carry.
type lyingWalker struct {
	*memstore.Store
	bad *fedhistory.Event
}

func (s lyingWalker) WalkBackfill(ctx context.Context, req dag.BackfillRequest) (fedhistory.WalkResult, error) {
	evs, err := s.Events(ctx, req.RoomID, req.From)
	return fedhistory.WalkResult{Events: append(evs, s.bad)}, err
}

func TestStoreWalkersCannotServeOutOfRangeDepths(t *testing.T) {
	room := newTestRoom(t, "10", 12)
	room.messages(t, "m", 2)
	store := load(t, room)
	evs, err := store.Events(t.Context(), room.id, []string{room.ev(t, "m1")})
	require.NoError(t, err)
	bad := *evs[0]
	bad.Depth = dag.MaxCanonicalInt + 1
	h := newHandler(t, lyingWalker{Store: store, bad: &bad})
	resp := do(t, h, http.MethodGet, backfillURL(room.id, "5", room.ev(t, "m2")), memberServer, "")
	require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
	require.Equal(t, []string{room.ev(t, "m2")}, resp.eventIDs(t, "pdus", room.version))
}

// TestMaxWalkVisitsBoundsTheWalk: a configured visit budget is honoured on
// both endpoints, also by a store that walks itself (the walker interfaces
// take the budget with the request). What
// a cut-short walk returns is the start of the unbounded answer (dag's
// documented guarantee).
func TestMaxWalkVisitsBoundsTheWalk(t *testing.T) {
	room := newTestRoom(t, "10", 1)
	room.messages(t, "m", 30)
	store := load(t, room)
	const budget = 5
	newest := room.ev(t, "m30")
	missingBody := `{"limit":20,"earliest_events":[],"latest_events":["` + newest + `"]}`

	for _, view := range storeViews(store) {
		t.Run(view.name, func(t *testing.T) {
			unbounded := newHandler(t, view.store)
			bounded := newHandler(t, view.store, func(cfg *fedhistory.Config) { cfg.MaxWalkVisits = budget })

			all := do(t, unbounded, http.MethodGet, backfillURL(room.id, "30", newest), memberServer, "").eventIDs(t, "pdus", room.version)
			require.Len(t, all, 30)
			cut := do(t, bounded, http.MethodGet, backfillURL(room.id, "30", newest), memberServer, "").eventIDs(t, "pdus", room.version)
			require.NotEmpty(t, cut)
			require.LessOrEqual(t, len(cut), budget, "backfill fetched more than the budget allows")
			require.Equal(t, all[:len(cut)], cut)

			all = do(t, unbounded, http.MethodPost, missingURL(room.id), memberServer, missingBody).eventIDs(t, "events", room.version)
			require.Len(t, all, 20)
			cut = do(t, bounded, http.MethodPost, missingURL(room.id), memberServer, missingBody).eventIDs(t, "events", room.version)
			require.NotEmpty(t, cut)
			require.Less(t, len(cut), budget, "get_missing_events fetched more than the budget allows")
			// Oldest first: the cut walk has the newest of the unbounded answer.
			require.Equal(t, all[len(all)-len(cut):], cut)
		})
	}
}
