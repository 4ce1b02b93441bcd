package sqlstore

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/synthroom"
)

// growingTables are the tables whose size grows with a room's history: no
// statement the store issues to serve a request may scan one of them.
var growingTables = []string{"events", "state_group_entries", "state_groups", "prev_edges", "auth_links"}

// planRoomOptions is TestQueryPlans' room: 10^5 events (the size the SQL
// performance issue asks the plans to be checked at), every tenth a join
// (10^4 members of 1000 servers), a history visibility change or ACL every
// 50, so that the state tables too are large enough for a planner to
// prefer an index where one applies.
func planRoomOptions() synthroom.Options {
	opts := handlerRoomOptions()
	opts.MessageBytes = 200
	opts.JoinEvery = 10
	opts.StateEvery = 50
	return opts
}

const planRoomEvents = 100_000

// stateHeavyRoomOptions is a room heavy in state for its length, for the
// handler benchmarks: every other event a join (10^4 members of 1000
// servers at 2×10^4 events, about 10^6 state entries in snapshots and
// deltas), and a history visibility change or ACL every 50 events.
func stateHeavyRoomOptions() synthroom.Options {
	opts := planRoomOptions()
	opts.JoinEvery = 2
	return opts
}

const stateHeavyRoomEvents = 20_000

// TestQueryPlans serves a backfill, a get_missing_events and event lookups
// through the handler, records every statement the store issues (through
// its observe hook, so that no statement is forgotten), and asks the
// database for each one's plan: none may read a table that grows with the
// room sequentially. PostgreSQL's plans are those of a room analysed as it
// would be in production; SQLite's planner uses no statistics here, so its
// plan shows whether the text lets it use an index at all.
func TestQueryPlans(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a room of 10^5 events with 10^4 members")
	}
	for _, d := range dialects {
		t.Run(d, func(t *testing.T) {
			s, room := benchDatabase(t, d, planRoomOptions(), planRoomEvents)
			t.Cleanup(func() { s.Close() })
			statements := append(recordRequests(t, s, room), recordImport(t, s)...)
			require.NotEmpty(t, statements)
			for _, st := range statements {
				scans := sequentialScans(t, s, st)
				require.Empty(t, scans, "statement:\n%s\nargs: %v", st.query, st.args)
			}
		})
	}
}

// recordedStatement is one statement the store issued.
type recordedStatement struct {
	query string
	args  []any
}

// recordRequests serves the requests and returns the distinct statements
// (by text) the store issued for them.
func recordRequests(t *testing.T, s *Store, room benchRoomInfo) []recordedStatement {
	t.Helper()
	var (
		mu         sync.Mutex
		statements []recordedStatement
		seen       = map[string]bool{}
	)
	s.observe = func(query string, args []any) {
		mu.Lock()
		defer mu.Unlock()
		if !seen[query] {
			seen[query] = true
			statements = append(statements, recordedStatement{query: query, args: args})
		}
	}
	t.Cleanup(func() { s.observe = nil })

	f := newBenchFixture(t, s, room, 0)
	origins, handler := f.origins, f.handler
	serve := func(req *http.Request) {
		require.NoError(t, origins.Sign(req, handlerOrigins[0], benchDestination))
		rec := httptest.NewRecorder()
		handler.ServeHTTP(rec, req)
		require.Equal(t, http.StatusOK, rec.Code, "%s: %s", req.URL, rec.Body.Bytes())
	}
	ids := room.IDs
	roomPath := url.PathEscape(room.RoomID)
	q := url.Values{"v": {ids[len(ids)-1]}, "limit": {"100"}}
	serve(httptest.NewRequest(http.MethodGet, "/_matrix/federation/v1/backfill/"+roomPath+"?"+q.Encode(), nil))
	body, err := json.Marshal(map[string]any{
		"limit": 20, "min_depth": 0,
		"earliest_events": []string{ids[len(ids)-1000]}, "latest_events": []string{ids[len(ids)-1]},
	})
	require.NoError(t, err)
	serve(httptest.NewRequest(http.MethodPost, "/_matrix/federation/v1/get_missing_events/"+roomPath, bytes.NewReader(body)))

	// The lookups the handler makes through other paths, called directly.
	ctx := context.Background()
	_, err = s.Events(ctx, room.RoomID, ids[len(ids)/2:len(ids)/2+1])
	require.NoError(t, err)
	_, err = s.RoomVersion(ctx, room.RoomID)
	require.NoError(t, err)
	_, err = s.ErasedUsers(ctx, []string{"@bob:" + handlerOrigins[0]})
	require.NoError(t, err)
	_, err = s.Visibility(ctx, room.RoomID, handlerOrigins[1], ids[len(ids)-300:])
	require.NoError(t, err)
	_, err = s.CurrentState(ctx, room.RoomID, "joiner7.example")
	require.NoError(t, err)
	mu.Lock()
	defer mu.Unlock()
	return statements
}

// recordImport adds the room's next 1500 events in one AddBatch that fails
// on a duplicate after its first chunk is written (so the database is left
// as it was), and returns the distinct statements the store issued: an
// import must not scan a growing table either, or it becomes quadratic.
// (PostgreSQL's COPY is not a statement the observe hook sees; it reads
// nothing.)
func recordImport(t *testing.T, s *Store) []recordedStatement {
	t.Helper()
	// Chunks of 1000, so that the batch is two: the second chunk's
	// prefetch reads what the first wrote.
	defer func(chunk int) { s.addChunk = chunk }(s.addChunk)
	s.addChunk = 1000
	g, err := synthroom.New(planRoomOptions())
	require.NoError(t, err)
	for range planRoomEvents {
		g.Next(nil)
	}
	var batch []Pending
	for range 1500 {
		_, pdu := g.Next(nil)
		batch = append(batch, Pending{RoomVersion: synthroom.Version, PDU: pdu})
	}
	batch = append(batch, batch[0])

	var (
		statements []recordedStatement
		seen       = map[string]bool{}
	)
	s.observe = func(query string, args []any) {
		if !seen[query] {
			seen[query] = true
			statements = append(statements, recordedStatement{query: query, args: args})
		}
	}
	defer func() { s.observe = nil }()
	require.ErrorIs(t, s.AddBatch(context.Background(), batch), fedhistory.ErrDuplicateEvent)
	return statements
}

// sqliteScan matches a step of SQLite's EXPLAIN QUERY PLAN that reads a
// whole table or index ("SCAN e" or "SCAN e USING INDEX …", as opposed to
// "SEARCH e USING INDEX … (group_id=?)"). The plan names tables by their
// alias in the statement, so the scans allowed are those of the statements'
// CTEs, their aliases, and json_each (the IDS macro).
var sqliteScan = regexp.MustCompile(`^SCAN (\w+)`)

var sqliteScansAllowed = map[string]bool{
	"json_each": true, "targets": true, "roots": true, "chain": true, "links": true, "groups": true,
	"walk": true, "c": true, "t": true, "w": true, "CONSTANT": true, // "SCAN CONSTANT ROW": a VALUES or SELECT without FROM
}

// sequentialScans returns the growing tables st reads sequentially.
func sequentialScans(t *testing.T, s *Store, st recordedStatement) []string {
	t.Helper()
	ctx := context.Background()
	growing := map[string]bool{}
	for _, table := range growingTables {
		growing[table] = true
	}
	var scans []string
	if s.dialect == postgres {
		var plan string
		require.NoError(t, s.db.QueryRowContext(ctx, "EXPLAIN (FORMAT JSON) "+st.query, st.args...).Scan(&plan))
		var nodes []map[string]any
		require.NoError(t, json.Unmarshal([]byte(plan), &nodes))
		var walk func(node map[string]any)
		walk = func(node map[string]any) {
			if node["Node Type"] == "Seq Scan" {
				if relation, _ := node["Relation Name"].(string); growing[relation] {
					scans = append(scans, relation)
				}
			}
			children, _ := node["Plans"].([]any)
			for _, child := range children {
				if c, ok := child.(map[string]any); ok {
					walk(c)
				}
			}
		}
		for _, n := range nodes {
			if root, ok := n["Plan"].(map[string]any); ok {
				walk(root)
			}
		}
		return scans
	}
	if strings.HasPrefix(st.query, "INSERT ") && strings.Contains(st.query, " VALUES (") {
		// The plan of a multi-row INSERT into a table other tables refer to
		// lists scans of those tables: the search for rows that violate a
		// foreign key, which SQLite runs only while a violation is pending
		// (OP_FkIfZero), never in a consistent database.
		return nil
	}
	rows, err := s.db.QueryContext(ctx, "EXPLAIN QUERY PLAN "+st.query, st.args...)
	require.NoError(t, err)
	defer rows.Close()
	for rows.Next() {
		var (
			id, parent, unused int
			detail             string
		)
		require.NoError(t, rows.Scan(&id, &parent, &unused, &detail))
		if m := sqliteScan.FindStringSubmatch(strings.TrimSpace(detail)); m != nil && !sqliteScansAllowed[m[1]] {
			scans = append(scans, detail)
		}
	}
	require.NoError(t, rows.Err())
	return scans
}
