package sqlstore

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/dag"
)

// The walks run package dag's algorithms unchanged, so they return exactly
// what dag.Backfill and dag.MissingEvents return over Events. What changes is
// where the walk metadata comes from: instead of one FetchFunc call (one
// query) per step, a single recursive query over the edges table loads the
// metadata (no JSON) of the walk's candidates, the events reachable from the
// seeds along the edges the walk may follow, up to a row budget; the dag
// walk then runs in memory over those rows, and one more query reads the
// JSON of the events it returns.
//
// The first query's row budget is sized to the limit, not to the walk's
// visit budget (10*limit + seeds, as in package dag): firstBatch rows, about
// 2*limit per seed (plus seeds and a constant slack). The walk visits about
// limit events plus the rejected and outlier ones among them plus the width
// of the forks it crosses, and in a room whose depths grow along its edges
// (every honest room) the recursive query, which proceeds breadth first,
// reaches the IDs the walk will request before any others; so the first
// batch holds the whole walk in practice (TestWalksMatchPackageDag and
// TestWalksOverRealRooms hold honest rooms to 2 queries). Exactness never
// rests on that, though: when the query stopped at its row budget
// and the walk asks for an ID it did not load, the walk's FetchFunc runs
// the query again from the missing IDs, this time with the whole visit
// budget, so a fork- or rejected-heavy walk costs one more query. Only a
// DAG built to defeat breadth-first order (many prev_events to deep, old
// events) costs more, never more than the one-query-per-step walk would.

const (
	// maxWalkRows caps one candidate query's rows, whatever the limit the
	// caller passes.
	maxWalkRows = 100_000
)

// firstBatch returns the row budget of a walk's first candidate query:
// about twice the limit per seed, plus the seeds and a little slack for the
// forks of small walks, never more than the walk's visit budget. Per seed,
// because the query proceeds breadth first from all the seeds at once
// while the walk may take all its events below one of them.
func firstBatch(limit, seeds, budget int) int {
	if seeds <= 0 || limit > (budget-seeds)/(2*seeds) {
		return budget
	}
	return min(2*limit*seeds+seeds+firstBatchSlack, budget)
}

// firstBatchSlack is the first batch's allowance beyond 2*limit + seeds: a
// fork or a run of rejected events costs the same few extra rows whatever
// the limit, which matters for small limits.
// In the random honest rooms of TestWalksMatchPackageDag (one event in 6
// rejected, one in 15 an outlier, forks of up to 3, one prev_event in 8 to
// an arbitrary older event) a slack of 8 left 7 of 600 backfills needing a
// follow-up query, 16 left 1, 32 none.
const firstBatchSlack = 32

// The candidate query follows exactly the edges the dag walks follow: it
// uses the walks' own rules (dag.MaxPrevEvents, dag.MinCanonicalInt,
// dag.MaxCanonicalInt, dag.VisitBudget) rather than copies of them.

// WalkBackfill returns exactly what dag.Backfill returns over this store's
// events for the same request (default visit budget), with the events' JSON,
// newest first. It costs two queries for any limit in any room whose depths
// are consistent (see the comment on the walks).
func (s *Store) WalkBackfill(ctx context.Context, req dag.BackfillRequest) (fedhistory.WalkResult, error) {
	roomID, from, limit := req.RoomID, req.From, req.Limit
	if limit <= 0 || !s.storable(roomID) {
		return fedhistory.WalkResult{}, nil
	}
	budget := dag.VisitBudget(req.MaxVisits, limit, len(dedupe(from)))
	c := s.newCandidates(roomID, budget, firstBatch(limit, len(dedupe(from)), budget), nil, dag.MinCanonicalInt)
	res, err := dag.Backfill(ctx, req, c.fetch)
	if err != nil {
		return fedhistory.WalkResult{}, fmt.Errorf("sqlstore: backfill of %s: %w", roomID, err)
	}
	events, err := s.walkResult(ctx, roomID, res.IDs)
	return fedhistory.WalkResult{Events: events, Visits: res.Visits, Exhausted: res.Exhausted}, err
}

// WalkMissingEvents returns exactly what dag.MissingEvents returns over this
// store's events for the same request (default visit budget), with the
// events' JSON, oldest first. It costs two queries like WalkBackfill.
func (s *Store) WalkMissingEvents(ctx context.Context, req dag.MissingEventsRequest) (fedhistory.WalkResult, error) {
	roomID, earliest, latest, limit, minDepth := req.RoomID, req.Earliest, req.Latest, req.Limit, req.MinDepth
	if limit <= 0 || !s.storable(roomID) {
		return fedhistory.WalkResult{}, nil
	}
	// The visit budget's seeds are the Latest IDs not in Earliest.
	isEarliest := make(map[string]bool, len(earliest))
	for _, id := range earliest {
		isEarliest[id] = true
	}
	seeds := 0
	for _, id := range dedupe(latest) {
		if !isEarliest[id] {
			seeds++
		}
	}
	budget := dag.VisitBudget(req.MaxVisits, limit, seeds)
	c := s.newCandidates(roomID, budget, firstBatch(limit, seeds, budget), earliest, max(minDepth, dag.MinCanonicalInt))
	res, err := dag.MissingEvents(ctx, req, c.fetch)
	if err != nil {
		return fedhistory.WalkResult{}, fmt.Errorf("sqlstore: get_missing_events of %s: %w", roomID, err)
	}
	events, err := s.walkResult(ctx, roomID, res.IDs)
	return fedhistory.WalkResult{Events: events, Visits: res.Visits, Exhausted: res.Exhausted}, err
}

// walkResult reads the events of ids, in that order.
func (s *Store) walkResult(ctx context.Context, roomID string, ids []string) ([]*fedhistory.Event, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	events, err := s.Events(ctx, roomID, ids)
	if err != nil {
		return nil, err
	}
	if len(events) != len(ids) {
		// Stored events are never deleted, so this is a broken database.
		return nil, fmt.Errorf("sqlstore: %d of the %d events a walk of %s found have vanished", len(ids)-len(events), len(ids), roomID)
	}
	return events, nil
}

// dedupe returns ids without repeats, keeping first occurrences in order.
func dedupe(ids []string) []string {
	seen := make(map[string]bool, len(ids))
	out := make([]string, 0, len(ids))
	for _, id := range ids {
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// candidates is the walk metadata loaded for one walk, served to the dag
// walk as its FetchFunc.
type candidates struct {
	s        *Store
	roomID   string
	rowLimit int    // the follow-up queries' row budget
	first    int    // the first query's row budget
	earliest string // JSON list: IDs the query must not enter
	minDepth int64  // the query does not follow the edges of shallower events

	nodes map[string]dag.Node
	// absent holds IDs a query was seeded with and did not find.
	absent map[string]bool
	// closed: every query so far returned the whole set of events reachable
	// from its seeds, so an ID the walk requests that is not in nodes is not
	// in the store (see fetch).
	closed  bool
	queried bool
}

func (s *Store) newCandidates(roomID string, budget, first int, earliest []string, minDepth int64) *candidates {
	return &candidates{
		s:        s,
		roomID:   roomID,
		rowLimit: min(budget, s.walkRowLimit),
		first:    min(first, budget, s.walkRowLimit),
		earliest: s.idList(earliest),
		minDepth: minDepth,
		nodes:    make(map[string]dag.Node),
		absent:   make(map[string]bool),
		closed:   true,
	}
}

// fetch is the walk's dag.FetchFunc. Every ID the walk requests is a seed
// or a followed prev_event of an event it entered, which a query loaded, and
// every query follows exactly the edges the walk follows. So when the
// queries were closed, an ID not loaded is unknown; otherwise fetch runs the
// query again from the IDs it lacks.
func (c *candidates) fetch(ctx context.Context, ids []string) ([]dag.Node, error) {
	var missing []string
	for _, id := range ids {
		if _, ok := c.nodes[id]; !ok && !c.absent[id] {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 && (!c.queried || !c.closed) {
		if err := c.load(ctx, missing); err != nil {
			return nil, err
		}
	}
	nodes := make([]dag.Node, 0, len(ids))
	for _, id := range ids {
		if n, ok := c.nodes[id]; ok {
			nodes = append(nodes, n)
		}
	}
	return nodes, nil
}

// load runs the candidate query from seeds.
func (c *candidates) load(ctx context.Context, seeds []string) error {
	// Both databases return the seeds' own rows first, so a row budget of
	// len(seeds) plus the walk's budget always answers every seed: a seed
	// missing from the result is not in the store.
	rowLimit := len(seeds) + c.rowLimit
	if !c.queried {
		rowLimit = len(seeds) + c.first
	}
	limitClause := ""
	if c.s.dialect == sqlite {
		// SQLite applies a LIMIT on the recursive select to the recursion
		// itself; PostgreSQL forbids it there but stops evaluating a
		// recursive query once the outer LIMIT is satisfied.
		limitClause = "LIMIT $7"
	}
	rows, err := c.s.query(ctx, c.s.db, `
WITH RECURSIVE walk (event_nid, event_id, room_id, depth, prev_events, rejected, outlier) AS (
	SELECT event_nid, event_id, room_id, depth, prev_events, rejected, outlier
	FROM events WHERE event_id IN (IDS($1))
	UNION
	SELECT ev.event_nid, ev.event_id, ev.room_id, ev.depth, ev.prev_events, ev.rejected, ev.outlier
	FROM walk w
	JOIN prev_edges ed ON ed.event_nid = w.event_nid
	JOIN events ev ON ev.event_id = ed.prev_event_id
	WHERE w.room_id = $2 AND NOT w.outlier AND w.depth >= $3 AND w.depth <= $4
		AND ed.ord < $5 AND ed.prev_event_id NOT IN (IDS($6))
	`+limitClause+`
)
SELECT event_id, room_id, depth, prev_events, rejected, outlier FROM walk LIMIT $7`,
		c.s.idList(seeds), c.roomID, c.minDepth, int64(dag.MaxCanonicalInt), dag.MaxPrevEvents, c.earliest, rowLimit+1)
	if err != nil {
		return fmt.Errorf("loading walk candidates: %w", err)
	}
	defer rows.Close()
	count := 0
	// The room and prev_events columns are read as raw bytes: the room ID
	// is nearly always the walk's own, whose string is reused, and
	// prev_events is decoded straight from the driver's buffer by
	// decodeIDList (no reflection; fuzzed against encoding/json). Reading
	// the prev_events from the edges table instead (a LEFT JOIN of the
	// candidates with edges, one row per edge) was measured and is slower
	// where it matters: BenchmarkSQLBackfill (10^5 events, limit 100,
	// 5 paired runs) PostgreSQL 2.49 → 3.06 ms (+23%), SQLite 2.26 → 2.16
	// ms (not significant), 4% fewer allocations but 5% more bytes.
	var room, prevs sql.RawBytes
	for rows.Next() {
		var n dag.Node
		if err := rows.Scan(&n.ID, &room, &n.Depth, &prevs, &n.Rejected, &n.Outlier); err != nil {
			return fmt.Errorf("loading walk candidates: %w", err)
		}
		if string(room) == c.roomID {
			n.RoomID = c.roomID
		} else {
			n.RoomID = string(room)
		}
		if n.PrevEvents, err = decodeIDList(prevs); err != nil {
			return fmt.Errorf("loading walk candidates: event %s: prev_events: %w", n.ID, err)
		}
		c.nodes[n.ID] = n
		count++
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("loading walk candidates: %w", err)
	}
	c.queried = true
	if count > rowLimit {
		c.closed = false
	}
	for _, id := range seeds {
		if _, ok := c.nodes[id]; !ok {
			c.absent[id] = true
		}
	}
	return nil
}
