package fedhistory_test

import (
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/fedhistory/fedhistory/memstore"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/golden")

// The servers of the test rooms.
const (
	ourServer    = "hs1.example"
	memberServer = "hs2.example" // has a joined user in every test room
)

// fixedNow is the clock of every test handler, so golden files are stable.
var fixedNow = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// originHeader names the origin in tests that exercise the handler without
// signatures: testAuth trusts it. The sign package's verifier is tested in
// sign/ and end to end in e2e_test.go.
const originHeader = "X-Test-Origin"

var testAuth = fedhistory.AuthenticatorFunc(func(r *http.Request) (string, error) {
	if origin := r.Header.Get(originHeader); origin != "" {
		return origin, nil
	}
	return "", errors.New("no test origin")
})

// testRoom is a room built with roomgen, with its events named.
type testRoom struct {
	id, version string
	b           *roomgen.Builder
	ids         map[string]string // name → event ID
}

func newTestRoom(t testing.TB, version string, seed int64) *testRoom {
	t.Helper()
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: version, ServerName: ourServer, Seed: seed})
	require.NoError(t, err)
	require.NoError(t, b.StandardSetup())
	room := &testRoom{id: b.RoomID(), version: version, b: b, ids: map[string]string{}}
	room.name("create", b.Events()[0])
	room.name("bob_join", must(t)(b.Join("@bob:"+memberServer)))
	return room
}

func must(t testing.TB) func(roomgen.Event, error) roomgen.Event {
	return func(ev roomgen.Event, err error) roomgen.Event {
		t.Helper()
		require.NoError(t, err)
		return ev
	}
}

func (r *testRoom) name(name string, ev roomgen.Event) string {
	r.ids[name] = ev.ID
	return ev.ID
}

func (r *testRoom) ev(t testing.TB, name string) string {
	t.Helper()
	id, ok := r.ids[name]
	require.True(t, ok, "no event named %q", name)
	return id
}

// messages appends n messages named prefix1 … prefixN.
func (r *testRoom) messages(t testing.TB, prefix string, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		r.name(prefix+itoa(i), must(t)(r.b.Message("@alice:"+ourServer, prefix+itoa(i))))
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// load adds every event of the rooms to a new in-memory store.
func load(t testing.TB, rooms ...*testRoom) *memstore.Store {
	t.Helper()
	store := memstore.New()
	for _, room := range rooms {
		for _, ev := range room.b.Events() {
			_, err := store.Add(room.version, ev.JSON, fedhistory.AddOptions{Rejected: ev.Rejected, Outlier: ev.Outlier})
			require.NoError(t, err)
		}
	}
	return store
}

// storeView is one way the handler can read a memstore.
type storeView struct {
	name  string
	store fedhistory.EventStore
}

// withoutWalkers hides a store's walker capabilities (BackfillWalker,
// MissingEventsWalker), so that the handler runs the dag walks over its
// batched Events calls, as it does for every store that cannot walk itself.
type withoutWalkers struct{ fedhistory.ErasureStore }

// storeViews returns store as the handler sees it (memstore walks itself)
// and with its walkers hidden, so a test of the walks covers both paths.
func storeViews(store *memstore.Store) []storeView {
	return []storeView{
		{"store walks", store},
		{"dag walks over Events", withoutWalkers{store}},
	}
}

func newHandler(t testing.TB, store fedhistory.EventStore, mutate ...func(*fedhistory.Config)) *fedhistory.Handler {
	t.Helper()
	cfg := fedhistory.Config{
		ServerName:    ourServer,
		Store:         store,
		Authenticator: testAuth,
		Logger:        slog.New(slog.DiscardHandler),
		Now:           func() time.Time { return fixedNow },
	}
	for _, m := range mutate {
		m(&cfg)
	}
	h, err := fedhistory.New(cfg)
	require.NoError(t, err)
	return h
}

// response is a decoded answer.
type response struct {
	status int
	header http.Header
	body   []byte
	// aborted marks a streamed answer dropped after its first byte.
	aborted bool
}

func (r response) json(t testing.TB) map[string]json.RawMessage {
	t.Helper()
	var out map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(r.body, &out), "body: %s", r.body)
	return out
}

// errcode asserts a spec-form error and returns its errcode.
func (r response) errcode(t testing.TB) string {
	t.Helper()
	require.Equal(t, "application/json", r.header.Get("Content-Type"))
	var e struct {
		ErrCode string `json:"errcode"`
		Error   string `json:"error"`
	}
	require.NoError(t, json.Unmarshal(r.body, &e), "body: %s", r.body)
	require.NotEmpty(t, e.Error, "error text")
	return e.ErrCode
}

// eventIDs returns the IDs of the PDUs under key ("pdus" or "events"), in
// order, as the store knows them (v3+ PDUs carry no event_id).
func (r response) eventIDs(t testing.TB, key, version string) []string {
	t.Helper()
	var pdus []json.RawMessage
	require.NoError(t, json.Unmarshal(r.json(t)[key], &pdus))
	ids := make([]string, 0, len(pdus))
	for _, pdu := range pdus {
		ids = append(ids, idOfPDU(t, version, pdu))
	}
	return ids
}

// idOfPDU computes the ID of a served PDU: event_id for room versions 1
// and 2, the reference hash from 3 on (which redaction does not change).
func idOfPDU(t testing.TB, version string, pdu json.RawMessage) string {
	t.Helper()
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	require.NoError(t, err)
	ev, err := verImpl.NewEventFromTrustedJSON(pdu, false)
	require.NoError(t, err, "PDU: %s", pdu)
	return ev.EventID()
}

func do(t testing.TB, h http.Handler, method, target, origin string, body string) response {
	t.Helper()
	var reader io.Reader
	if body != "" {
		reader = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, target, reader)
	if origin != "" {
		req.Header.Set(originHeader, origin)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return response{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
}

func backfillURL(roomID string, limit string, v ...string) string {
	q := url.Values{}
	for _, id := range v {
		q.Add("v", id)
	}
	if limit != "" {
		q.Set("limit", limit)
	}
	return "/_matrix/federation/v1/backfill/" + url.PathEscape(roomID) + "?" + q.Encode()
}

func missingURL(roomID string) string {
	return "/_matrix/federation/v1/get_missing_events/" + url.PathEscape(roomID)
}

// golden compares got with testdata/golden/name, rewriting it under -update.
func golden(t testing.TB, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", "golden", name)
	var pretty = indent(t, got)
	if *update {
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, pretty, 0o644))
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "golden file missing: run go test -run %s -update", t.Name())
	require.Equal(t, string(want), string(pretty))
}

func indent(t testing.TB, b []byte) []byte {
	var v any
	require.NoError(t, json.Unmarshal(b, &v))
	out, err := json.MarshalIndent(v, "", "  ")
	require.NoError(t, err)
	return append(out, '\n')
}
