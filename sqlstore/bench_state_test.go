package sqlstore

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/synthroom"
)

// benchDialects are the dialects a benchmark runs on: both when
// FEDHISTORY_TEST_POSTGRES is set, else SQLite.
func benchDialects(b *testing.B, run func(b *testing.B, s *Store)) {
	for _, d := range dialects {
		b.Run(d, func(b *testing.B) { run(b, openTestStore(b, d)) })
	}
}

// requireIndexedPlan fails b when PostgreSQL, with the statistics of the
// benchmark's large room, would read any table of query by a sequential
// scan: the cost of every lookup must follow its answer, not the room.
// (TestLookupPlansUseIndexes checks SQLite's plans, which need no data.)
func requireIndexedPlan(b *testing.B, s *Store, query string, args ...any) {
	b.Helper()
	if s.dialect != postgres {
		return
	}
	rows, err := s.db.QueryContext(context.Background(), "EXPLAIN "+s.dialect.rebind(query), args...)
	require.NoError(b, err)
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var line string
		require.NoError(b, rows.Scan(&line))
		// Literal parameters (a state's IDs) can make a line huge.
		plan = append(plan, line[:min(len(line), 160)])
	}
	require.NoError(b, rows.Err())
	joined := strings.Join(plan, "\n")
	for _, table := range []string{"events", "auth_links", "state_groups", "state_group_entries", "rooms"} {
		assert.NotContains(b, joined, "Seq Scan on "+table+" ", "plan:\n%s", joined)
	}
}

// BenchmarkSQLStateIDs measures what GET /state_ids asks of the store at
// the newest event of a room whose state holds 10^4 joined members (10^5
// with FEDHISTORY_BENCH_LARGE=1): StateIDs, the state before the event and
// its auth chain. It reports statements per request (stmts/op) and the size of the
// answer (ids/op).
func BenchmarkSQLStateIDs(b *testing.B) {
	members := 10_000
	if os.Getenv(largeBenchEnv) == "1" {
		members = 100_000
	}
	benchDialects(b, func(b *testing.B, s *Store) {
		ctx := context.Background()
		g := joinedRoom(b, s, members)
		newest := g.Newest()

		state, err := s.StateBefore(ctx, g.RoomID(), newest)
		require.NoError(b, err)
		require.Greater(b, len(state), members-1)
		requireIndexedPlan(b, s, stateBeforeQueries[postgres], g.RoomID(), newest)
		requireIndexedPlan(b, s, authChainQueries[postgres], g.RoomID(), jsonList(state))
		requireIndexedPlan(b, s, stateIDsQueries[postgres], g.RoomID(), newest)
		_, direct, err := s.stateBefore(ctx, g.RoomID(), newest, true)
		require.NoError(b, err)
		require.NotNil(b, direct, "every group of the state's chain has its auth counts")
		requireIndexedPlan(b, s, authClosureQueries[postgres], jsonList(direct))
		b.Run("members="+strconv.Itoa(members), func(b *testing.B) {
			benchStateIDs(b, s, g.RoomID(), newest)
		})
	})
}

// joinedRoom builds in s a room of members joins and nothing else, every
// join a state change.
func joinedRoom(b *testing.B, s *Store, members int) *synthroom.Generator {
	ctx := context.Background()
	g, err := synthroom.New(synthroom.Options{Shape: synthroom.Linear, MessageBytes: 300, JoinEvery: 1,
		Members: []string{"@bob:" + handlerOrigins[0]}})
	require.NoError(b, err)
	var batch []Pending
	for _, ev := range g.Setup() {
		batch = append(batch, Pending{RoomVersion: synthroom.Version, PDU: ev.JSON})
	}
	for i := range members {
		_, pdu := g.Next(nil)
		batch = append(batch, Pending{RoomVersion: synthroom.Version, PDU: pdu})
		if len(batch) == 10_000 || i == members-1 {
			require.NoError(b, s.AddBatch(ctx, batch))
			batch = batch[:0]
		}
	}
	if s.dialect == postgres {
		// Fresh statistics, as autovacuum would gather on a real server.
		_, err := s.db.ExecContext(ctx, `ANALYZE`)
		require.NoError(b, err)
	}
	return g
}

// benchStateIDs measures StateIDs at eventID, reporting statements per
// request (stmts/op) and the size of the answer (ids/op).
func benchStateIDs(b *testing.B, s *Store, roomID, eventID string) {
	ctx := context.Background()
	before := s.Queries()
	ids := 0
	b.ReportAllocs()
	for b.Loop() {
		state, chain, err := s.StateIDs(ctx, roomID, eventID)
		if err != nil {
			b.Fatal(err)
		}
		ids = len(state) + len(chain)
	}
	b.ReportMetric(float64(s.Queries()-before)/float64(b.N), "stmts/op")
	b.ReportMetric(float64(ids), "ids/op")
}

// BenchmarkSQLStateIDsHistory measures StateIDs at the newest event of two
// rooms whose state holds about 10^4 members: one of about 10^4 events,
// every one a join, and, with FEDHISTORY_BENCH_LARGE=1, the handler
// benchmarks' room of 10^6 events (a join every 100 events, and messages).
// The cost should follow the state, not the history behind it.
func BenchmarkSQLStateIDsHistory(b *testing.B) {
	for _, d := range dialects {
		b.Run(d, func(b *testing.B) {
			b.Run("events=1e4", func(b *testing.B) {
				s := openTestStore(b, d)
				g := joinedRoom(b, s, 10_000)
				benchStateIDs(b, s, g.RoomID(), g.Newest())
			})
			b.Run("events=1e6", func(b *testing.B) {
				if os.Getenv(largeBenchEnv) != "1" {
					b.Skip(largeBenchEnv + "=1 builds the 10^6-event rooms")
				}
				f := handlerFixture(b, d, "events=1e6", handlerRoomOptions(), 1_000_000)
				benchStateIDs(b, f.store, f.room.RoomID, f.room.IDs[len(f.room.IDs)-1])
			})
		})
	}
}

// BenchmarkSQLEventAtTimestamp measures EventAtTimestamp into the middle of
// rooms of 10^3 and 10^5 events (timestamps a second apart, between two
// events, both directions): one descent of the timestamp index, so the two
// sizes should cost about the same.
func BenchmarkSQLEventAtTimestamp(b *testing.B) {
	benchDialects(b, func(b *testing.B, s *Store) {
		ctx := context.Background()
		for _, n := range []int{1_000, 100_000} {
			events := benchRoom(n)
			// benchRoom's rooms are all one room: rename it per size.
			roomID := "!bench" + strconv.Itoa(n) + ":hs1.example"
			for i := range events {
				events[i].RoomID = roomID
				events[i].ID += "-" + strconv.Itoa(n)
				for j := range events[i].PrevEvents {
					events[i].PrevEvents[j] += "-" + strconv.Itoa(n)
				}
			}
			_, err := s.db.ExecContext(ctx, s.dialect.rebind(`INSERT INTO rooms (room_id, room_version) VALUES ($1, '10')`), roomID)
			require.NoError(b, err)
			insertSynthetic(b, s, events)
			_, err = s.db.ExecContext(ctx, s.dialect.rebind(`UPDATE events SET origin_server_ts = depth * 1000 WHERE room_id = $1`), roomID)
			require.NoError(b, err)
			if s.dialect == postgres {
				_, err := s.db.ExecContext(ctx, `ANALYZE events`)
				require.NoError(b, err)
			}
			middle := int64(n/2)*1000 + 500
			requireIndexedPlan(b, s, timestampQueries[postgres].atOrBefore, roomID, middle)
			requireIndexedPlan(b, s, timestampQueries[postgres].atOrAfter, roomID, middle)
			for _, dir := range []fedhistory.Direction{fedhistory.Backward, fedhistory.Forward} {
				b.Run("events="+strconv.Itoa(n)+"/dir="+string(dir), func(b *testing.B) {
					before := s.Queries()
					b.ReportAllocs()
					for b.Loop() {
						if _, err := s.EventAtTimestamp(ctx, roomID, middle, dir); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(s.Queries()-before)/float64(b.N), "stmts/op")
				})
			}
		}
	})
}

// BenchmarkSQLStateIDsHandler is a full signed GET /state_ids at the newest
// event of a room whose state holds 10^4 joined members (10^5 with
// FEDHISTORY_BENCH_LARGE=1), through fedhistory.New with the real verifier
// and an answer cache too small to keep the answer, so that every request
// asks the store; it reports p50 and p99.
func BenchmarkSQLStateIDsHandler(b *testing.B) {
	members := 10_000
	if os.Getenv(largeBenchEnv) == "1" {
		members = 100_000
	}
	for _, d := range dialects {
		b.Run(d+"/members="+strconv.Itoa(members), func(b *testing.B) {
			s := openTestStore(b, d)
			g := joinedRoom(b, s, members)
			f := newBenchFixture(b, s, benchRoomInfo{RoomID: g.RoomID()}, 1)
			target := "/_matrix/federation/v1/state_ids/" + url.PathEscape(g.RoomID()) + "?event_id=" + url.QueryEscape(g.Newest())
			req := httptest.NewRequest(http.MethodGet, target, nil)
			require.NoError(b, f.origins.Sign(req, handlerOrigins[0], benchDestination))
			serveTimed(b, f, func() *http.Request { return req }, func(rec *httptest.ResponseRecorder) {
				var answer struct {
					PDUIDs []string `json:"pdu_ids"`
				}
				require.NoError(b, json.Unmarshal(rec.Body.Bytes(), &answer))
				require.Greater(b, len(answer.PDUIDs), members)
			})
		})
	}
}
