package dag

import (
	"context"
	"errors"
	"math"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMissingEvents(t *testing.T) {
	// diamond: $m(5) → $l(4) and $r1(4) → $r2(3) ; $l → $base(2) ; $r2 → $base ; $base → $root(1)
	diamond := []Node{
		ev("$root", 1),
		ev("$base", 2, "$root"),
		ev("$r2", 3, "$base"),
		ev("$l", 4, "$base"),
		ev("$r1", 4, "$r2"),
		ev("$m", 5, "$l", "$r1"),
	}
	// wide: $top(10) → $w1(9), $w2(3), $w3(9), $w4(3) all at distance 1
	wide := []Node{
		ev("$w1", 9), ev("$w2", 3), ev("$w3", 9), ev("$w4", 3),
		ev("$top", 10, "$w4", "$w2", "$w3", "$w1"),
	}

	tests := []struct {
		name  string
		nodes []Node
		req   MissingEventsRequest
		want  []string
	}{
		{
			name:  "linear chain between earliest and latest, oldest first",
			nodes: chain("$c", 6),
			req:   MissingEventsRequest{Earliest: []string{"$c2"}, Latest: []string{"$c6"}, Limit: 10},
			want:  []string{"$c3", "$c4", "$c5"},
		},
		{
			name:  "no earliest walks to the room's start",
			nodes: chain("$c", 4),
			req:   MissingEventsRequest{Latest: []string{"$c4"}, Limit: 10},
			want:  []string{"$c1", "$c2", "$c3"},
		},
		{
			name:  "truncation keeps the events nearest to latest",
			nodes: chain("$c", 6),
			req:   MissingEventsRequest{Latest: []string{"$c6"}, Limit: 2},
			want:  []string{"$c4", "$c5"},
		},
		{
			name:  "breadth-first: distance decides, not depth",
			nodes: []Node{ev("$old", 1), ev("$c", 7), ev("$b", 8, "$c"), ev("$a", 9, "$b"), ev("$m", 10, "$a", "$old")},
			req:   MissingEventsRequest{Latest: []string{"$m"}, Limit: 2},
			want:  []string{"$old", "$a"},
		},
		{
			name:  "diamond truncated inside a level keeps the higher depth",
			nodes: diamond,
			req:   MissingEventsRequest{Latest: []string{"$m"}, Limit: 3},
			want:  []string{"$r2", "$l", "$r1"},
		},
		{
			name:  "diamond, whole walk, each event once",
			nodes: diamond,
			req:   MissingEventsRequest{Latest: []string{"$m"}, Limit: 10},
			want:  []string{"$root", "$base", "$r2", "$l", "$r1"},
		},
		{
			name:  "ties within a level: higher depth first, then event ID",
			nodes: wide,
			req:   MissingEventsRequest{Latest: []string{"$top"}, Limit: 3},
			want:  []string{"$w2", "$w1", "$w3"},
		},
		{
			name:  "min_depth: shallower events are neither returned nor walked past",
			nodes: chain("$c", 6),
			req:   MissingEventsRequest{Latest: []string{"$c6"}, Limit: 10, MinDepth: 3},
			want:  []string{"$c3", "$c4", "$c5"},
		},
		{
			name:  "latest below min_depth is not walked from",
			nodes: chain("$c", 6),
			req:   MissingEventsRequest{Latest: []string{"$c3"}, Limit: 10, MinDepth: 4},
			want:  []string{},
		},
		{
			name:  "latest events are never returned, even when reached",
			nodes: chain("$c", 6),
			req:   MissingEventsRequest{Latest: []string{"$c6", "$c4"}, Limit: 10, MinDepth: 2},
			want:  []string{"$c2", "$c3", "$c5"},
		},
		{
			name:  "duplicate latest events",
			nodes: chain("$c", 3),
			req:   MissingEventsRequest{Latest: []string{"$c3", "$c3"}, Limit: 10},
			want:  []string{"$c1", "$c2"},
		},
		{
			name: "latest unknown, outlier or of another room are ignored",
			nodes: append(chain("$c", 3),
				outlier(ev("$out", 9, "$c2")),
				inRoom("!other:example.org", ev("$foreign", 9, "$c2")),
			),
			req:  MissingEventsRequest{Latest: []string{"$gone", "$out", "$foreign"}, Limit: 10},
			want: []string{},
		},
		{
			name:  "an ID in earliest and latest counts as earliest",
			nodes: chain("$c", 3),
			req:   MissingEventsRequest{Earliest: []string{"$c3"}, Latest: []string{"$c3"}, Limit: 10},
			want:  []string{},
		},
		{
			name:  "rejected events are walked through, not returned, not counted",
			nodes: []Node{ev("$1", 1), ev("$2", 2, "$1"), rejected(ev("$3", 3, "$2")), rejected(ev("$4", 4, "$3")), ev("$5", 5, "$4")},
			req:   MissingEventsRequest{Latest: []string{"$5"}, Limit: 1},
			want:  []string{"$2"},
		},
		{
			name:  "rejected latest is walked from",
			nodes: []Node{ev("$1", 1), rejected(ev("$2", 2, "$1"))},
			req:   MissingEventsRequest{Latest: []string{"$2"}, Limit: 10},
			want:  []string{"$1"},
		},
		{
			name:  "outliers are neither entered nor returned",
			nodes: []Node{ev("$1", 1), outlier(ev("$2", 2, "$1")), ev("$3", 3, "$2")},
			req:   MissingEventsRequest{Latest: []string{"$3"}, Limit: 10},
			want:  []string{},
		},
		{
			name:  "events of another room are neither entered nor returned",
			nodes: []Node{ev("$1", 1), inRoom("!other:example.org", ev("$2", 2, "$1")), ev("$3", 3, "$2", "$1b"), ev("$1b", 1)},
			req:   MissingEventsRequest{Latest: []string{"$3"}, Limit: 10},
			want:  []string{"$1b"},
		},
		{
			name:  "unknown prev_events are ignored",
			nodes: []Node{ev("$1", 1, "$gone"), ev("$2", 2, "$nowhere", "$1")},
			req:   MissingEventsRequest{Latest: []string{"$2"}, Limit: 10},
			want:  []string{"$1"},
		},
		{
			name:  "cycles do not loop",
			nodes: []Node{ev("$a", 3, "$b"), ev("$b", 2, "$c"), ev("$c", 1, "$b", "$a")},
			req:   MissingEventsRequest{Latest: []string{"$a"}, Limit: 10},
			want:  []string{"$c", "$b"},
		},
		{
			name: "depth outside canonical JSON's range is treated like an outlier",
			nodes: []Node{
				ev("$1", 1),
				ev("$low", -(1 << 53), "$1"),
				ev("$high", 1<<53, "$1"),
				ev("$ok", 1<<53-1),
				ev("$top", 1<<53-1, "$low", "$high", "$ok"),
			},
			req:  MissingEventsRequest{Latest: []string{"$top"}, Limit: 10, MinDepth: -(1 << 62)},
			want: []string{"$ok"},
		},
		{
			name:  "huge limit",
			nodes: chain("$c", 3),
			req:   MissingEventsRequest{Latest: []string{"$c3"}, Limit: math.MaxInt},
			want:  []string{"$c1", "$c2"},
		},
		{
			name:  "limit 0 returns nothing",
			nodes: chain("$c", 3),
			req:   MissingEventsRequest{Latest: []string{"$c3"}},
			want:  []string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(tt.nodes...)
			tt.req.RoomID = testRoom
			got, err := missingEventsIDs(context.Background(), tt.req, s.fetch)
			require.NoError(t, err)
			require.ElementsMatch(t, tt.want, got)
			require.Equal(t, tt.want, append([]string{}, got...))
			require.Equal(t, tt.want, append([]string{}, referenceMissingEvents(t, tt.req, s.fetch)...),
				"reference walk disagrees with the table")
		})
	}
}

func TestMissingEventsFetches(t *testing.T) {
	// $t → $b1…$b5 → $r1…$r5 → $root
	nodes := []Node{ev("$root", 1), ev("$t", 4)}
	for i := 1; i <= 5; i++ {
		b, r := "$b"+strconv.Itoa(i), "$r"+strconv.Itoa(i)
		nodes = append(nodes, ev(b, 3, r), ev(r, 2, "$root"))
		nodes[1].PrevEvents = append(nodes[1].PrevEvents, b)
	}

	tests := []struct {
		name      string
		req       MissingEventsRequest
		want      []string
		wantCalls [][]string
	}{
		{
			name: "one call per level",
			req:  MissingEventsRequest{Latest: []string{"$t"}, Limit: 100},
			want: []string{"$root", "$r1", "$r2", "$r3", "$r4", "$r5", "$b1", "$b2", "$b3", "$b4", "$b5"},
			wantCalls: [][]string{
				{"$t"},
				{"$b1", "$b2", "$b3", "$b4", "$b5"},
				{"$r1", "$r2", "$r3", "$r4", "$r5"},
				{"$root"},
			},
		},
		{
			name:      "earliest events are never fetched",
			req:       MissingEventsRequest{Latest: []string{"$t"}, Earliest: []string{"$b2", "$r1"}, Limit: 100},
			want:      []string{"$root", "$r3", "$r4", "$r5", "$b1", "$b3", "$b4", "$b5"},
			wantCalls: [][]string{{"$t"}, {"$b1", "$b3", "$b4", "$b5"}, {"$r3", "$r4", "$r5"}, {"$root"}},
		},
		{
			name:      "the walk stops once the limit is reached",
			req:       MissingEventsRequest{Latest: []string{"$t"}, Limit: 5},
			want:      []string{"$b1", "$b2", "$b3", "$b4", "$b5"},
			wantCalls: [][]string{{"$t"}, {"$b1", "$b2", "$b3", "$b4", "$b5"}},
		},
		{
			name:      "min_depth: a too shallow event is fetched but not walked past",
			req:       MissingEventsRequest{Latest: []string{"$t"}, Limit: 100, MinDepth: 3},
			want:      []string{"$b1", "$b2", "$b3", "$b4", "$b5"},
			wantCalls: [][]string{{"$t"}, {"$b1", "$b2", "$b3", "$b4", "$b5"}, {"$r1", "$r2", "$r3", "$r4", "$r5"}},
		},
		{
			name:      "limit 0 fetches nothing",
			req:       MissingEventsRequest{Latest: []string{"$t"}},
			wantCalls: nil,
		},
		{
			name:      "a level the budget cannot pay for is not fetched",
			req:       MissingEventsRequest{Latest: []string{"$t"}, Limit: 100, MaxVisits: 10},
			want:      []string{"$b1", "$b2", "$b3", "$b4", "$b5"},
			wantCalls: [][]string{{"$t"}, {"$b1", "$b2", "$b3", "$b4", "$b5"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(nodes...)
			tt.req.RoomID = testRoom
			got, err := missingEventsIDs(context.Background(), tt.req, s.fetch)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			require.Equal(t, tt.wantCalls, s.calls)
		})
	}
}

func TestMissingEventsUntrustedFetch(t *testing.T) {
	tests := []struct {
		name  string
		extra func(ids []string) []Node
	}{
		{
			name: "unrequested nodes are ignored",
			extra: func([]string) []Node {
				return []Node{ev("$intruder", 3, "$c1"), ev("$c9", 2)}
			},
		},
		{
			name: "a repeated answer does not override the first",
			extra: func(ids []string) []Node {
				var out []Node
				for _, id := range ids {
					out = append(out, ev(id, 50, "$intruder"), rejected(ev(id, 1)))
				}
				return out
			},
		},
		{
			name: "answers for IDs of earlier levels, earliest and latest are ignored",
			extra: func([]string) []Node {
				return []Node{ev("$c4", 44, "$c5"), ev("$c1", 1), ev("$c5", 5)}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(chain("$c", 5)...)
			s.extra = tt.extra
			got, err := missingEventsIDs(context.Background(), MissingEventsRequest{
				RoomID: testRoom, Earliest: []string{"$c1"}, Latest: []string{"$c5"}, Limit: 10,
			}, s.fetch)
			require.NoError(t, err)
			require.Equal(t, []string{"$c2", "$c3", "$c4"}, got)
		})
	}
}

func TestMissingEventsVisitBudget(t *testing.T) {
	const roomSize = 10_000
	chainRoom := []Node{ev("$e0", 1)}
	for i := 1; i < roomSize; i++ {
		chainRoom = append(chainRoom, rejected(ev("$e"+strconv.Itoa(i), int64(i+1), "$e"+strconv.Itoa(i-1))))
	}
	treeRoom := []Node{rejected(ev("$t0", roomSize))}
	for parent := 0; len(treeRoom) < roomSize; parent++ {
		for range 20 {
			id := "$t" + strconv.Itoa(len(treeRoom))
			treeRoom = append(treeRoom, rejected(ev(id, roomSize-int64(parent)-1)))
			treeRoom[parent].PrevEvents = append(treeRoom[parent].PrevEvents, id)
		}
	}

	tests := []struct {
		name      string
		nodes     []Node
		latest    string
		limit     int
		maxVisits int
		budget    int
	}{
		{"rejected chain, default budget", chainRoom, "$e" + strconv.Itoa(roomSize-1), 10, 0, 10*10 + 1},
		{"rejected chain, explicit budget", chainRoom, "$e" + strconv.Itoa(roomSize-1), 10, 50, 50},
		{"rejected fan-out, default budget", treeRoom, "$t0", 10, 0, 10*10 + 1},
		{"rejected fan-out, explicit budget", treeRoom, "$t0", 100, 5000, 5000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(tt.nodes...)
			res, err := MissingEvents(context.Background(), MissingEventsRequest{
				RoomID: testRoom, Latest: []string{tt.latest}, Limit: tt.limit, MaxVisits: tt.maxVisits,
			}, s.fetch)
			require.NoError(t, err, "running out of budget is not an error")
			require.Empty(t, res.IDs)
			require.True(t, res.Exhausted)
			require.Equal(t, len(s.fetched()), res.Visits)
			require.LessOrEqual(t, len(s.fetched()), tt.budget)
			requireNoRepeats(t, s.fetched())
		})
	}
}

func TestMissingEventsContextCancelled(t *testing.T) {
	s := newStore(chain("$c", 10)...)
	ctx, cancel := context.WithCancel(context.Background())
	fetch := func(ctx context.Context, ids []string) ([]Node, error) {
		cancel()
		return s.fetch(ctx, ids)
	}
	got, err := missingEventsIDs(ctx, MissingEventsRequest{RoomID: testRoom, Latest: []string{"$c10"}, Limit: 5}, fetch)
	require.ErrorIs(t, err, context.Canceled)
	require.Nil(t, got)
	require.Len(t, s.calls, 1, "no fetch after cancellation")
}

func TestMissingEventsFetchError(t *testing.T) {
	errStore := errors.New("store unavailable")
	for _, failAt := range []int{1, 2} {
		t.Run("call "+strconv.Itoa(failAt), func(t *testing.T) {
			s := newStore(chain("$c", 10)...)
			calls := 0
			fetch := func(ctx context.Context, ids []string) ([]Node, error) {
				calls++
				if calls == failAt {
					return nil, errStore
				}
				return s.fetch(ctx, ids)
			}
			got, err := missingEventsIDs(context.Background(), MissingEventsRequest{RoomID: testRoom, Latest: []string{"$c10"}, Limit: 5}, fetch)
			require.ErrorIs(t, err, errStore)
			require.ErrorContains(t, err, "dag: get_missing_events walk")
			require.Nil(t, got)
		})
	}
}

func TestMissingEventsIgnoresLateAnswers(t *testing.T) {
	// $late is requested in the second level and not answered; the third
	// level's answer for it must not resurrect it.
	s := newStore(ev("$c1", 1), ev("$c2", 2, "$c1"), ev("$c3", 3, "$c2", "$late"), ev("$c4", 4, "$c3", "$late"))
	s.extra = func(ids []string) []Node {
		if slices.Contains(ids, "$late") {
			return nil
		}
		return []Node{ev("$late", 3, "$c1")}
	}
	got, err := missingEventsIDs(context.Background(), MissingEventsRequest{RoomID: testRoom, Latest: []string{"$c4"}, Limit: 10}, s.fetch)
	require.NoError(t, err)
	require.Equal(t, []string{"$c1", "$c2", "$c3"}, got)
	require.Equal(t, [][]string{{"$c4"}, {"$c3", "$late"}, {"$c2"}, {"$c1"}}, s.calls)
}
