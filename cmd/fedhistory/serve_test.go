package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/roomdump"
	"github.com/fedhistory/fedhistory/sign"
)

// The requesting server of these tests. gen puts one user of it, @bob, in
// every room it makes.
const asker = "hs2.example"

// dumpEvent is what the tests need of one event of a dump.
type dumpEvent struct {
	ID         string
	JSON       json.RawMessage
	Depth      int64
	PrevEvents []string
}

// dumpRoom is one generated room dump.
type dumpRoom struct {
	Path   string
	RoomID string
	Events []dumpEvent // in the dump's (topological) order
	byID   map[string]dumpEvent
}

// generate runs "fedhistory gen" and reads back the dump it wrote.
func generate(t *testing.T, dir, name string, args ...string) *dumpRoom {
	t.Helper()
	path := filepath.Join(dir, name)
	res := mustRun(t, dir, append([]string{"gen", "--out", path}, args...)...)
	require.Contains(t, res.stderr, "wrote room")

	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	records, err := roomdump.Read(f)
	require.NoError(t, err)
	room := &dumpRoom{Path: path, byID: map[string]dumpEvent{}}
	for _, rec := range records {
		var fields struct {
			Depth      int64    `json:"depth"`
			PrevEvents []string `json:"prev_events"`
		}
		require.NoError(t, json.Unmarshal(rec.Event, &fields))
		ev := dumpEvent{ID: rec.EventID, JSON: rec.Event, Depth: fields.Depth, PrevEvents: fields.PrevEvents}
		room.RoomID = rec.RoomID
		room.Events = append(room.Events, ev)
		room.byID[ev.ID] = ev
	}
	return room
}

// expectedBackfill is what the spec's backfill walk returns for a DAG
// whose depths are consistent: the limit highest-depth events among from
// and their ancestors, ties by event ID, newest first.
func (r *dumpRoom) expectedBackfill(from string, limit int) []string {
	ancestors := map[string]bool{}
	queue := []string{from}
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		if ancestors[id] {
			continue
		}
		ancestors[id] = true
		queue = append(queue, r.byID[id].PrevEvents...)
	}
	ids := make([]string, 0, len(ancestors))
	for id := range ancestors {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b string) int {
		return cmp.Or(cmp.Compare(r.byID[b].Depth, r.byID[a].Depth), strings.Compare(a, b))
	})
	return ids[:min(limit, len(ids))]
}

// pduIDs maps PDUs of an answer back to the dump's events, requiring each
// to be served byte for byte as stored (the asker may see everything in
// these rooms: their history is shared and it is joined).
func (r *dumpRoom) pduIDs(t *testing.T, pdus []json.RawMessage) []string {
	t.Helper()
	byJSON := make(map[string]string, len(r.Events))
	for _, ev := range r.Events {
		byJSON[string(ev.JSON)] = ev.ID
	}
	ids := make([]string, len(pdus))
	for i, pdu := range pdus {
		id, ok := byJSON[string(pdu)]
		require.True(t, ok, "PDU %d is not an event of the dump, byte for byte: %s", i, pdu)
		ids[i] = id
	}
	return ids
}

func (r *dumpRoom) last() dumpEvent { return r.Events[len(r.Events)-1] }

// federation is a test world: two room dumps served by one "fedhistory
// serve", and the asker's signing key, pinned with --trust.
type federation struct {
	dir    string
	forked *dumpRoom // forks every 7 messages
	linear *dumpRoom // no forks
	key    *sign.SigningKey
	server *server
}

func newFederation(t *testing.T) *federation {
	t.Helper()
	dir := t.TempDir()
	f := &federation{dir: dir}
	f.forked = generate(t, dir, "forked.jsonl", "--events", "60", "--fork-every", "7", "--seed", "3")
	f.linear = generate(t, dir, "linear.jsonl", "--events", "40", "--seed", "4", "--room-version", "11")
	require.NotEqual(t, f.forked.RoomID, f.linear.RoomID)

	trust := strings.TrimSpace(mustRun(t, dir, "keygen", "--out", "hs2.key").stdout)
	var err error
	f.key, err = sign.ReadKeyFile(filepath.Join(dir, "hs2.key"))
	require.NoError(t, err)
	f.server = startServer(t, dir, "--server-name", "hs1.test",
		"--room", f.forked.Path, "--room", f.linear.Path, "--trust", asker+"="+trust)
	require.Equal(t, "hs1.test", f.server.Name)
	return f
}

// client runs a client subcommand against the server as the asker.
func (f *federation) client(t *testing.T, subcommand string, args ...string) result {
	t.Helper()
	base := []string{subcommand, "--server", f.server.URL, "--destination", "hs1.test",
		"--origin", asker, "--signing-key", "hs2.key"}
	return runCommand(t, f.dir, append(base, args...)...)
}

// federationRequest signs a request with gomatrixserverlib and aims it at
// the server's URL.
func (f *federation) federationRequest(t *testing.T, method, uri string, content any) *http.Request {
	t.Helper()
	req := fclient.NewFederationRequest(method, asker, "hs1.test", uri)
	if content != nil {
		require.NoError(t, req.SetContent(content))
	}
	require.NoError(t, req.Sign(asker, gomatrixserverlib.KeyID(f.key.ID), f.key.Private))
	httpReq, err := req.HTTPRequest()
	require.NoError(t, err)
	target, err := url.Parse(f.server.URL)
	require.NoError(t, err)
	httpReq.URL.Scheme, httpReq.URL.Host, httpReq.Host = target.Scheme, target.Host, target.Host
	return httpReq
}

type backfillAnswer struct {
	Origin         string            `json:"origin"`
	OriginServerTS int64             `json:"origin_server_ts"`
	PDUs           []json.RawMessage `json:"pdus"`
}

func TestServeAnswersBackfillFromTheClientSubcommand(t *testing.T) {
	f := newFederation(t)
	room := f.forked
	tests := []struct {
		name  string
		from  []string
		limit int
	}{
		{"from the newest event", []string{room.last().ID}, 5},
		{"across several forks", []string{room.last().ID}, 25},
		{"from two events", []string{room.Events[30].ID, room.Events[45].ID}, 8},
		{"the whole room", []string{room.last().ID}, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"--room", room.RoomID, "--limit", strconv.Itoa(tt.limit), "--raw"}
			for _, id := range tt.from {
				args = append(args, "--v", id)
			}
			res := f.client(t, "backfill", args...)
			require.Equal(t, exitOK, res.code, res.stderr)

			var answer backfillAnswer
			require.NoError(t, json.Unmarshal([]byte(res.stdout), &answer))
			require.Equal(t, "hs1.test", answer.Origin, "a backfill transaction comes from the server asked")
			require.Positive(t, answer.OriginServerTS)

			var want []string
			for _, from := range tt.from {
				want = append(want, room.expectedBackfill(from, tt.limit)...)
			}
			slices.SortFunc(want, func(a, b string) int {
				return cmp.Or(cmp.Compare(room.byID[b].Depth, room.byID[a].Depth), strings.Compare(a, b))
			})
			want = slices.Compact(want)
			want = want[:min(tt.limit, len(want))]
			require.Equal(t, want, room.pduIDs(t, answer.PDUs))
		})
	}
}

func TestServeAnswersGetMissingEventsFromTheClientSubcommand(t *testing.T) {
	f := newFederation(t)
	room := f.linear
	n := len(room.Events)
	latest, earliest := room.Events[n-1], room.Events[n-8]
	ids := func(events []dumpEvent) []string {
		out := make([]string, len(events))
		for i, ev := range events {
			out[i] = ev.ID
		}
		return out
	}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"the events between earliest and latest, oldest first", nil, ids(room.Events[n-7 : n-1])},
		{"limit keeps the newest", []string{"--limit", "3"}, ids(room.Events[n-4 : n-1])},
		{"min_depth cuts the walk", []string{"--min-depth", strconv.FormatInt(latest.Depth-2, 10)}, ids(room.Events[n-3 : n-1])},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--room", room.RoomID, "--latest", latest.ID, "--earliest", earliest.ID, "--raw"}, tt.args...)
			res := f.client(t, "missing", args...)
			require.Equal(t, exitOK, res.code, res.stderr)
			var answer struct {
				Events []json.RawMessage `json:"events"`
			}
			require.NoError(t, json.Unmarshal([]byte(res.stdout), &answer))
			require.Equal(t, tt.want, room.pduIDs(t, answer.Events))
		})
	}

	t.Run("pretty output is the same JSON, indented", func(t *testing.T) {
		res := f.client(t, "missing", "--room", room.RoomID, "--latest", latest.ID, "--earliest", earliest.ID, "--limit", "2")
		require.Equal(t, exitOK, res.code, res.stderr)
		require.True(t, strings.HasPrefix(res.stdout, "{\n  \"events\": ["), res.stdout)
		var answer struct {
			Events []json.RawMessage `json:"events"`
		}
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &answer))
		require.Len(t, answer.Events, 2)
	})
}

func TestClientSubcommandsReportErrorAnswers(t *testing.T) {
	f := newFederation(t)
	other := mustRun(t, f.dir, "keygen", "--out", "untrusted.key")
	require.NotEmpty(t, other.stdout)

	tests := []struct {
		name       string
		subcommand string
		args       []string
		want       string
	}{
		{"a key the server does not trust", "backfill",
			[]string{"--signing-key", "untrusted.key", "--room", f.forked.RoomID, "--v", f.forked.last().ID},
			"HTTP 401: M_UNAUTHORIZED: "},
		{"a room the server does not hold", "missing",
			[]string{"--room", "!nowhere:hs1.test", "--latest", f.forked.last().ID},
			"HTTP 403: M_FORBIDDEN: server is not in the room"},
		{"a destination that is not the server", "backfill",
			[]string{"--destination", "someone-else.test", "--room", f.forked.RoomID, "--v", f.forked.last().ID},
			"HTTP 401: M_UNAUTHORIZED: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Later flags win, so tt.args override the defaults of f.client.
			res := f.client(t, tt.subcommand, tt.args...)
			require.Equal(t, exitFailure, res.code)
			requireOneLine(t, res.stderr)
			require.Contains(t, res.stderr, tt.want)
			require.Empty(t, res.stdout)
		})
	}
}

func TestServeAnswersGomatrixserverlibRequests(t *testing.T) {
	f := newFederation(t)
	room := f.forked

	t.Run("a request signed by fclient.FederationRequest", func(t *testing.T) {
		uri := "/_matrix/federation/v1/backfill/" + url.PathEscape(room.RoomID) + "?" +
			url.Values{"v": {room.last().ID}, "limit": {"4"}}.Encode()
		resp, err := http.DefaultClient.Do(f.federationRequest(t, http.MethodGet, uri, nil))
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var txn gomatrixserverlib.Transaction
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&txn))
		require.Equal(t, spec.ServerName("hs1.test"), txn.Origin)
		require.Equal(t, room.expectedBackfill(room.last().ID, 4), room.pduIDs(t, txn.PDUs))
	})

	t.Run("an unsigned request", func(t *testing.T) {
		resp, err := http.Post(f.server.URL+"/_matrix/federation/v1/get_missing_events/"+url.PathEscape(room.RoomID),
			"application/json", strings.NewReader(`{"earliest_events":[],"latest_events":["`+room.last().ID+`"]}`))
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
		var body matrixError
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&body))
		require.Equal(t, "M_UNAUTHORIZED", body.ErrCode)
	})

	// fclient's FederationClient, with a transport that sends its
	// matrix:// requests to the server's loopback URL instead of resolving
	// "hs1.test".
	target, err := url.Parse(f.server.URL)
	require.NoError(t, err)
	client := fclient.NewFederationClient(
		[]*fclient.SigningIdentity{{ServerName: asker, KeyID: gomatrixserverlib.KeyID(f.key.ID), PrivateKey: f.key.Private}},
		fclient.WithTransport(loopbackTransport{target: target}),
	)
	ctx := context.Background()

	t.Run("FederationClient.Backfill", func(t *testing.T) {
		txn, err := client.Backfill(ctx, asker, "hs1.test", room.RoomID, 6, []string{room.last().ID})
		require.NoError(t, err)
		require.Equal(t, room.expectedBackfill(room.last().ID, 6), room.pduIDs(t, txn.PDUs))
	})

	t.Run("FederationClient.LookupMissingEvents", func(t *testing.T) {
		linear := f.linear
		n := len(linear.Events)
		resp, err := client.LookupMissingEvents(ctx, asker, "hs1.test", linear.RoomID, fclient.MissingEvents{
			Limit: 10, EarliestEvents: []string{linear.Events[n-4].ID}, LatestEvents: []string{linear.Events[n-1].ID},
		}, "11")
		require.NoError(t, err)
		pdus := make([]json.RawMessage, len(resp.Events))
		for i, ev := range resp.Events {
			pdus[i] = json.RawMessage(ev)
		}
		require.Equal(t, []string{linear.Events[n-3].ID, linear.Events[n-2].ID}, linear.pduIDs(t, pdus))
	})

	t.Run("FederationClient sees the refusal of a room it is not in", func(t *testing.T) {
		_, err := client.Backfill(ctx, asker, "hs1.test", "!elsewhere:hs1.test", 6, []string{room.last().ID})
		require.ErrorContains(t, err, "M_FORBIDDEN")
	})
}

// loopbackTransport sends every request to target, keeping the request URI.
type loopbackTransport struct{ target *url.URL }

func (t loopbackTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host, out.Host = t.target.Scheme, t.target.Host, t.target.Host
	return http.DefaultTransport.RoundTrip(out)
}

// TestServeFetchesKeysAndServesTheDemoRoom runs serve without --room (the
// demo room) and without --trust: it must fetch the asker's key from the key
// server that --resolve names, and answer under its default server name.
func TestServeFetchesKeysAndServesTheDemoRoom(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, dir, "keygen", "--out", "hs2.key")
	askerKey, err := sign.ReadKeyFile(filepath.Join(dir, "hs2.key"))
	require.NoError(t, err)
	keyServer := httptest.NewServer(sign.KeyDocumentHandler(asker, []*sign.SigningKey{askerKey}, time.Hour, nil))
	t.Cleanup(keyServer.Close)

	srv := startServer(t, dir, "--resolve", asker+"="+strings.TrimPrefix(keyServer.URL, "http://"),
		"--signing-key", "hs1.key")
	require.Equal(t, strings.TrimPrefix(srv.URL, "http://"), srv.Name, "port 0 names the server after the bound port")

	t.Run("the signing key file was created, private", func(t *testing.T) {
		info, err := os.Stat(filepath.Join(dir, "hs1.key"))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
	})

	t.Run("our key document carries that key", func(t *testing.T) {
		key, err := sign.ReadKeyFile(filepath.Join(dir, "hs1.key"))
		require.NoError(t, err)
		resp, err := http.Get(srv.URL + keyDocumentPath)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var doc struct {
			ServerName string                       `json:"server_name"`
			VerifyKeys map[string]map[string]string `json:"verify_keys"`
		}
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&doc))
		require.Equal(t, srv.Name, doc.ServerName)
		require.Equal(t, encodePublicKey(key), doc.VerifyKeys[key.ID]["key"])
	})

	// serve logs the demo room's ID and newest event before it is ready.
	logged := srv.waitStderr(t, regexp.MustCompile(`msg="generated the demo room" room_id=(\S+) .*latest_event=(\S+)`))
	roomID, latest := logged[1], logged[2]

	res := mustRun(t, dir, "backfill", "--server", srv.URL, "--origin", asker, "--signing-key", "hs2.key",
		"--room", roomID, "--v", latest, "--limit", "3")
	var answer backfillAnswer
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &answer))
	require.Equal(t, srv.Name, answer.Origin)
	require.Len(t, answer.PDUs, 3)

	// The request's line is logged after its answer is sent.
	srv.waitStderr(t, regexp.MustCompile(`msg=request method=GET path=/_matrix/federation/v1/backfill/\S+ status=200 duration=\S+ origin=hs2.example`))
}

func TestServeCapsTheLimits(t *testing.T) {
	dir := t.TempDir()
	room := generate(t, dir, "room.jsonl", "--events", "30", "--seed", "10")
	trust := strings.TrimSpace(mustRun(t, dir, "keygen", "--out", "hs2.key").stdout)
	srv := startServer(t, dir, "--room", room.Path, "--trust", asker+"="+trust, "--max-backfill", "3", "--max-missing", "2")
	common := []string{"--server", srv.URL, "--origin", asker, "--signing-key", "hs2.key", "--room", room.RoomID, "--raw"}

	res := mustRun(t, dir, append([]string{"backfill", "--v", room.last().ID, "--limit", "10"}, common...)...)
	var txn backfillAnswer
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &txn))
	require.Equal(t, room.expectedBackfill(room.last().ID, 3), room.pduIDs(t, txn.PDUs), "--max-backfill lowers the limit")

	res = mustRun(t, dir, append([]string{"missing", "--latest", room.last().ID, "--earliest", room.Events[0].ID, "--limit", "10"}, common...)...)
	var missing struct {
		Events []json.RawMessage `json:"events"`
	}
	require.NoError(t, json.Unmarshal([]byte(res.stdout), &missing))
	require.Len(t, missing.Events, 2, "--max-missing lowers the limit")
}

func TestServeRefusesADumpWithABadLine(t *testing.T) {
	dir := t.TempDir()
	room := generate(t, dir, "room.jsonl", "--events", "10", "--seed", "5")
	good, err := os.ReadFile(room.Path)
	require.NoError(t, err)
	lines := bytes.SplitAfter(good, []byte("\n"))
	bad := bytes.Join([][]byte{lines[0], lines[1], []byte("{\"room_version\": \"10\", \"event\": {\"type\": 5}}\n"), lines[2]}, nil)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "bad.jsonl"), bad, 0o644))

	res := runCommand(t, dir, "serve", "--listen", "127.0.0.1:0", "--room", room.Path, "--room", "bad.jsonl")
	require.Equal(t, exitFailure, res.code)
	require.Empty(t, res.stdout, "a server that failed to load serves nothing")
	require.Contains(t, res.stderr, "fedhistory serve: loading room dump bad.jsonl: roomdump: line 3:")
	require.True(t, strings.HasSuffix(res.stderr, "\n"))
}

func TestServeShutsDownCleanlyOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	room := generate(t, dir, "room.jsonl", "--events", "10", "--seed", "6")
	srv := startServer(t, dir, "--room", room.Path)
	require.Equal(t, exitOK, srv.stop(t), srv.stderr.String())
	require.Contains(t, srv.stderr.String(), "shutting down")
}

func TestServeShutsDownCleanlyOnSIGINT(t *testing.T) {
	dir := t.TempDir()
	room := generate(t, dir, "room.jsonl", "--events", "10", "--seed", "7")
	srv := startServer(t, dir, "--room", room.Path)
	require.NoError(t, srv.cmd.Process.Signal(syscall.SIGINT))
	<-srv.exited
	require.Equal(t, exitOK, srv.cmd.ProcessState.ExitCode(), srv.stderr.String())
}

func TestGenIsDeterministic(t *testing.T) {
	dir := t.TempDir()
	a := generate(t, dir, "a.jsonl", "--events", "30", "--fork-every", "5", "--seed", "9")
	b := generate(t, dir, "b.jsonl", "--events", "30", "--fork-every", "5", "--seed", "9")
	first, err := os.ReadFile(a.Path)
	require.NoError(t, err)
	second, err := os.ReadFile(b.Path)
	require.NoError(t, err)
	require.Equal(t, first, second)
	require.Len(t, a.Events, 30)
	require.Greater(t, len(slices.DeleteFunc(slices.Clone(a.Events), func(ev dumpEvent) bool { return len(ev.PrevEvents) < 2 })), 0,
		"--fork-every makes merge events")
}
