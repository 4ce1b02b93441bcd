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

func TestBackfill(t *testing.T) {
	// fork: t(4) → b1…b3(3) → a(2) → root(1)
	fork := []Node{
		ev("$root", 1),
		ev("$a", 2, "$root"),
		ev("$b1", 3, "$a"), ev("$b2", 3, "$a"), ev("$b3", 3, "$a"),
		ev("$t", 4, "$b3", "$b1", "$b2"),
	}
	// $forged claims a depth above its child's. $other's prev_events are
	// fetched when it is taken, and $child's ahead with them (depth 5 is
	// within one of 6), so $forged is known early but must wait for $child.
	forged := []Node{
		ev("$child", 5, "$forged"), ev("$forged", 10, "$old"), ev("$old", 1),
		ev("$other", 6, "$o1"), ev("$o1", 1),
	}
	many := []Node{ev("$top", 2)}
	for i := range 25 {
		id := "$p" + strconv.Itoa(100+i)
		many = append(many, ev(id, 1))
		many[0].PrevEvents = append(many[0].PrevEvents, id)
	}

	tests := []struct {
		name  string
		nodes []Node
		req   BackfillRequest
		want  []string
	}{
		{
			name:  "linear chain, newest first, From included",
			nodes: chain("$c", 6),
			req:   BackfillRequest{From: []string{"$c5"}, Limit: 3},
			want:  []string{"$c5", "$c4", "$c3"},
		},
		{
			name:  "limit 1 returns From alone",
			nodes: chain("$c", 6),
			req:   BackfillRequest{From: []string{"$c5"}, Limit: 1},
			want:  []string{"$c5"},
		},
		{
			name:  "limit beyond the room returns the whole history",
			nodes: chain("$c", 3),
			req:   BackfillRequest{From: []string{"$c3"}, Limit: 100},
			want:  []string{"$c3", "$c2", "$c1"},
		},
		{
			name:  "fork and merge, ties by event ID",
			nodes: fork,
			req:   BackfillRequest{From: []string{"$t"}, Limit: 10},
			want:  []string{"$t", "$b1", "$b2", "$b3", "$a", "$root"},
		},
		{
			name:  "truncation inside a level keeps the lowest IDs",
			nodes: fork,
			req:   BackfillRequest{From: []string{"$t"}, Limit: 3},
			want:  []string{"$t", "$b1", "$b2"},
		},
		{
			name:  "several From, duplicated, interleave by depth",
			nodes: append(chain("$x", 4), chain("$y", 4)...),
			req:   BackfillRequest{From: []string{"$y3", "$x4", "$y3", "$x4"}, Limit: 4},
			want:  []string{"$x4", "$x3", "$y3", "$x2"},
		},
		{
			name:  "From reachable from another From is returned once",
			nodes: chain("$c", 4),
			req:   BackfillRequest{From: []string{"$c4", "$c3"}, Limit: 10},
			want:  []string{"$c4", "$c3", "$c2", "$c1"},
		},
		{
			name:  "rejected events are walked through, not returned, not counted",
			nodes: []Node{ev("$1", 1), rejected(ev("$2", 2, "$1")), rejected(ev("$3", 3, "$2")), ev("$4", 4, "$3")},
			req:   BackfillRequest{From: []string{"$4"}, Limit: 2},
			want:  []string{"$4", "$1"},
		},
		{
			name:  "rejected From is walked from",
			nodes: []Node{ev("$1", 1), rejected(ev("$2", 2, "$1"))},
			req:   BackfillRequest{From: []string{"$2"}, Limit: 5},
			want:  []string{"$1"},
		},
		{
			name:  "outliers are neither entered nor returned",
			nodes: []Node{ev("$1", 1), outlier(ev("$2", 2, "$1")), ev("$3", 3, "$2")},
			req:   BackfillRequest{From: []string{"$3"}, Limit: 5},
			want:  []string{"$3"},
		},
		{
			name:  "outlier From yields nothing",
			nodes: []Node{ev("$1", 1), outlier(ev("$2", 2, "$1"))},
			req:   BackfillRequest{From: []string{"$2"}, Limit: 5},
			want:  []string{},
		},
		{
			name:  "an outlier skipped on one path is reached on another",
			nodes: []Node{ev("$1", 1), outlier(ev("$2", 2, "$1")), ev("$2b", 2, "$1"), ev("$3", 3, "$2", "$2b")},
			req:   BackfillRequest{From: []string{"$3"}, Limit: 5},
			want:  []string{"$3", "$2b", "$1"},
		},
		{
			name:  "events of another room are neither followed nor returned",
			nodes: []Node{ev("$1", 1), inRoom("!other:example.org", ev("$2", 2, "$1")), ev("$3", 3, "$2")},
			req:   BackfillRequest{From: []string{"$3"}, Limit: 5},
			want:  []string{"$3"},
		},
		{
			name:  "From in another room yields nothing",
			nodes: []Node{inRoom("!other:example.org", ev("$1", 1))},
			req:   BackfillRequest{From: []string{"$1"}, Limit: 5},
			want:  []string{},
		},
		{
			name:  "unknown prev_events and From are ignored",
			nodes: []Node{ev("$1", 1, "$gone"), ev("$2", 2, "$1", "$nowhere")},
			req:   BackfillRequest{From: []string{"$unknown", "$2"}, Limit: 5},
			want:  []string{"$2", "$1"},
		},
		{
			name:  "cycles do not loop",
			nodes: []Node{ev("$a", 2, "$b"), ev("$b", 1, "$a", "$b")},
			req:   BackfillRequest{From: []string{"$a"}, Limit: 5},
			want:  []string{"$a", "$b"},
		},
		{
			name: "depth outside canonical JSON's range is treated like an outlier",
			nodes: []Node{
				ev("$1", 1),
				ev("$low", -(1 << 53), "$1"),
				ev("$high", 1<<53, "$1"),
				ev("$max", 1<<53-1, "$low", "$high"),
			},
			req:  BackfillRequest{From: []string{"$max"}, Limit: 5},
			want: []string{"$max"},
		},
		{
			name:  "lowest canonical depth is accepted",
			nodes: []Node{ev("$min", -(1<<53)+1), ev("$2", 2, "$min")},
			req:   BackfillRequest{From: []string{"$2"}, Limit: 5},
			want:  []string{"$2", "$min"},
		},
		{
			name:  "forged depth: a prev event is not taken before its child",
			nodes: forged,
			req:   BackfillRequest{From: []string{"$child", "$other"}, Limit: 2},
			want:  []string{"$other", "$child"},
		},
		{
			name:  "forged depth: the result is sorted by depth, not by walk order",
			nodes: forged,
			req:   BackfillRequest{From: []string{"$child", "$other"}, Limit: 3},
			want:  []string{"$forged", "$other", "$child"},
		},
		{
			name:  "only the first 20 prev_events are followed",
			nodes: many,
			req:   BackfillRequest{From: []string{"$top"}, Limit: 100},
			want: func() []string {
				want := []string{"$top"}
				for i := range 20 {
					want = append(want, "$p"+strconv.Itoa(100+i))
				}
				return want
			}(),
		},
		{
			name:  "huge limit",
			nodes: chain("$c", 3),
			req:   BackfillRequest{From: []string{"$c3"}, Limit: math.MaxInt},
			want:  []string{"$c3", "$c2", "$c1"},
		},
		{
			name:  "limit 0 returns nothing",
			nodes: chain("$c", 3),
			req:   BackfillRequest{From: []string{"$c3"}, Limit: 0},
			want:  []string{},
		},
		{
			name:  "negative limit returns nothing",
			nodes: chain("$c", 3),
			req:   BackfillRequest{From: []string{"$c3"}, Limit: -1},
			want:  []string{},
		},
		{
			name:  "no From returns nothing",
			nodes: chain("$c", 3),
			req:   BackfillRequest{Limit: 5},
			want:  []string{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(tt.nodes...)
			tt.req.RoomID = testRoom
			got, err := backfillIDs(context.Background(), tt.req, s.fetch)
			require.NoError(t, err)
			requireNoRepeats(t, s.fetched())
			require.ElementsMatch(t, tt.want, got) // nicer diff first
			require.Equal(t, tt.want, append([]string{}, got...))
			require.Equal(t, tt.want, append([]string{}, referenceBackfill(t, tt.req, s.fetch)...),
				"reference walk disagrees with the table")
		})
	}
}

func TestBackfillLimitZeroDoesNotFetch(t *testing.T) {
	s := newStore(chain("$c", 3)...)
	got, err := backfillIDs(context.Background(), BackfillRequest{RoomID: testRoom, From: []string{"$c3"}}, s.fetch)
	require.NoError(t, err)
	require.Empty(t, got)
	require.Empty(t, s.calls)
}

func TestBackfillBatchesLevels(t *testing.T) {
	// $t → five parents $b1…$b5 → each its own $r1…$r5 → $root
	nodes := []Node{ev("$root", 1), ev("$t", 4)}
	for i := 1; i <= 5; i++ {
		b, r := "$b"+strconv.Itoa(i), "$r"+strconv.Itoa(i)
		nodes = append(nodes, ev(b, 3, r), ev(r, 2, "$root"))
		nodes[1].PrevEvents = append(nodes[1].PrevEvents, b)
	}
	s := newStore(nodes...)
	got, err := backfillIDs(context.Background(), BackfillRequest{RoomID: testRoom, From: []string{"$t"}, Limit: 100}, s.fetch)
	require.NoError(t, err)
	require.Equal(t, []string{"$t", "$b1", "$b2", "$b3", "$b4", "$b5", "$r1", "$r2", "$r3", "$r4", "$r5", "$root"}, got)
	require.Equal(t, [][]string{
		{"$t"},
		{"$b1", "$b2", "$b3", "$b4", "$b5"},
		{"$r1", "$r2", "$r3", "$r4", "$r5"},
		{"$root"},
	}, s.calls, "one fetch call per level of the fork")
}

func TestBackfillLookaheadStaysNearTheTop(t *testing.T) {
	// Each chain event also points at an ancient event with a wide fan-out.
	// Best-first never takes the ancient events within the limit, so their
	// own prev_events must not be fetched ahead.
	var nodes []Node
	for i := 1; i <= 5; i++ {
		ancient := "$ancient" + strconv.Itoa(i)
		var fan []string
		for j := range 20 {
			fan = append(fan, ancient+"-"+strconv.Itoa(j))
		}
		nodes = append(nodes, ev(ancient, 1, fan...))
		prevs := []string{ancient}
		if i > 1 {
			prevs = append(prevs, "$c"+strconv.Itoa(i-1))
		}
		nodes = append(nodes, ev("$c"+strconv.Itoa(i), int64(100+i), prevs...))
	}
	s := newStore(nodes...)
	got, err := backfillIDs(context.Background(), BackfillRequest{RoomID: testRoom, From: []string{"$c5"}, Limit: 5}, s.fetch)
	require.NoError(t, err)
	require.Equal(t, []string{"$c5", "$c4", "$c3", "$c2", "$c1"}, got)
	for _, id := range s.fetched() {
		require.NotContains(t, id, "-", "fetched a prev event of an ancient event: %s", id)
	}
}

func TestBackfillUntrustedFetch(t *testing.T) {
	tests := []struct {
		name  string
		extra func(ids []string) []Node
		want  []string
	}{
		{
			name: "unrequested nodes are ignored",
			extra: func([]string) []Node {
				return []Node{ev("$intruder", 100, "$c1"), ev("$c2-fake", 3)}
			},
			want: []string{"$c3", "$c2", "$c1"},
		},
		{
			name: "a repeated answer does not override the first",
			extra: func(ids []string) []Node {
				var out []Node
				for _, id := range ids {
					out = append(out, ev(id, 50, "$intruder"), outlier(ev(id, 1)))
				}
				return out
			},
			want: []string{"$c3", "$c2", "$c1"},
		},
		{
			name: "answers for IDs requested in an earlier call are ignored",
			extra: func(ids []string) []Node {
				return []Node{ev("$c3", 99, "$intruder"), outlier(ev("$c2", 2))}
			},
			want: []string{"$c3", "$c2", "$c1"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(chain("$c", 3)...)
			s.extra = tt.extra
			got, err := backfillIDs(context.Background(), BackfillRequest{RoomID: testRoom, From: []string{"$c3"}, Limit: 10}, s.fetch)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestBackfillVisitBudget(t *testing.T) {
	const roomSize = 10_000
	// A chain of rejected events with one good event at the bottom.
	chainRoom := []Node{ev("$e0", 1)}
	for i := 1; i < roomSize; i++ {
		chainRoom = append(chainRoom, rejected(ev("$e"+strconv.Itoa(i), int64(i+1), "$e"+strconv.Itoa(i-1))))
	}
	// A tree of rejected events, each pointing at 20 fresh ones.
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
		from      string
		limit     int
		maxVisits int
		budget    int
	}{
		{"rejected chain, default budget", chainRoom, "$e" + strconv.Itoa(roomSize-1), 10, 0, 10*10 + 1},
		{"rejected chain, explicit budget", chainRoom, "$e" + strconv.Itoa(roomSize-1), 10, 50, 50},
		{"rejected fan-out, default budget", treeRoom, "$t0", 10, 0, 10*10 + 1},
		{"rejected fan-out, explicit budget", treeRoom, "$t0", 100, 333, 333},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(tt.nodes...)
			res, err := Backfill(context.Background(), BackfillRequest{
				RoomID: testRoom, From: []string{tt.from}, Limit: tt.limit, MaxVisits: tt.maxVisits,
			}, s.fetch)
			require.NoError(t, err, "running out of budget is not an error")
			require.Empty(t, res.IDs)
			require.True(t, res.Exhausted)
			require.Equal(t, len(s.fetched()), res.Visits)
			require.LessOrEqual(t, len(s.fetched()), tt.budget)
			require.Greater(t, len(s.fetched()), tt.budget/2, "the budget should be mostly spent, not skipped")
		})
	}
}

func TestBackfillBudgetSmallerThanFrom(t *testing.T) {
	s := newStore(chain("$c", 3)...)
	res, err := Backfill(context.Background(), BackfillRequest{
		RoomID: testRoom, From: []string{"$c3", "$c2"}, Limit: 5, MaxVisits: 1,
	}, s.fetch)
	require.NoError(t, err)
	require.Equal(t, Result{Exhausted: true}, res)
	require.Empty(t, s.calls)
}

func TestBackfillContextCancelled(t *testing.T) {
	s := newStore(chain("$c", 10)...)
	ctx, cancel := context.WithCancel(context.Background())
	fetch := func(ctx context.Context, ids []string) ([]Node, error) {
		cancel() // the store answers, but the request is gone meanwhile
		return s.fetch(ctx, ids)
	}
	got, err := backfillIDs(ctx, BackfillRequest{RoomID: testRoom, From: []string{"$c10"}, Limit: 5}, fetch)
	require.ErrorIs(t, err, context.Canceled)
	require.Nil(t, got)
	require.Len(t, s.calls, 1, "no fetch after cancellation")

	s = newStore(chain("$c", 10)...)
	_, err = backfillIDs(ctx, BackfillRequest{RoomID: testRoom, From: []string{"$c10"}, Limit: 5}, s.fetch)
	require.ErrorIs(t, err, context.Canceled)
	require.Empty(t, s.calls)
}

func TestBackfillFetchError(t *testing.T) {
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
			got, err := backfillIDs(context.Background(), BackfillRequest{RoomID: testRoom, From: []string{"$c10"}, Limit: 5}, fetch)
			require.ErrorIs(t, err, errStore)
			require.ErrorContains(t, err, "dag: backfill walk")
			require.Nil(t, got)
		})
	}
}

func requireNoRepeats(t *testing.T, ids []string) {
	t.Helper()
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		require.False(t, seen[id], "%s fetched twice", id)
		seen[id] = true
	}
}

func TestBackfillIgnoresLateAnswers(t *testing.T) {
	// $late is requested with $c2 and not answered; a later call's answer
	// for it must not resurrect it, although $c2 points at it too.
	s := newStore(ev("$c1", 1), ev("$c2", 2, "$c1", "$late"), ev("$c3", 3, "$c2", "$late"))
	s.extra = func(ids []string) []Node {
		if slices.Contains(ids, "$late") {
			return nil
		}
		return []Node{ev("$late", 2)}
	}
	got, err := backfillIDs(context.Background(), BackfillRequest{RoomID: testRoom, From: []string{"$c3"}, Limit: 10}, s.fetch)
	require.NoError(t, err)
	require.Equal(t, []string{"$c3", "$c2", "$c1"}, got)
	require.Equal(t, [][]string{{"$c3"}, {"$c2", "$late"}, {"$c1"}}, s.calls)
}

func TestBackfillUnaffordableLookaheadIsUndone(t *testing.T) {
	// Taking $a fetches $c and looks ahead at $b, whose new prev events
	// $y and $z the budget cannot pay for. $c's forged depth puts it before
	// $b, and $c needs only $y, which the budget can pay for: $y must not
	// count as requested just because the lookahead considered it.
	s := newStore(
		ev("$t", 10, "$a", "$b"),
		ev("$a", 9, "$c"),
		ev("$b", 9, "$y", "$z"),
		ev("$c", 50, "$y"),
		ev("$y", 20),
		ev("$z", 1),
	)
	req := BackfillRequest{RoomID: testRoom, From: []string{"$t"}, Limit: 10, MaxVisits: 5}
	got, err := backfillIDs(context.Background(), req, s.fetch)
	require.NoError(t, err)
	require.Equal(t, []string{"$c", "$y", "$t", "$a", "$b"}, got)
	require.Equal(t, [][]string{{"$t"}, {"$a", "$b"}, {"$c"}, {"$y"}}, s.calls)
	req.Limit = len(got)
	require.Equal(t, got, referenceBackfill(t, req, s.fetch), "the walk stops where it is still exact")
}
