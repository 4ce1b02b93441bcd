package dag

import (
	"context"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestVisitBudget(t *testing.T) {
	tests := []struct {
		name                    string
		maxVisits, limit, seeds int
		want                    int
	}{
		{"explicit", 7, 100, 3, 7},
		{"default", 0, 100, 3, DefaultVisitsPerResult*100 + 3},
		{"negative means default", -1, 5, 1, DefaultVisitsPerResult*5 + 1},
		{"saturates", 0, math.MaxInt / 2, 1, math.MaxInt},
		{"largest unsaturated", 0, (math.MaxInt - 3) / DefaultVisitsPerResult, 3, (math.MaxInt-3)/DefaultVisitsPerResult*DefaultVisitsPerResult + 3},
		{"saturates just past it", 0, (math.MaxInt-3)/DefaultVisitsPerResult + 1, 3, math.MaxInt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, VisitBudget(tt.maxVisits, tt.limit, tt.seeds))
		})
	}
}

func TestResult(t *testing.T) {
	nodes := chain("$c", 5)
	for i := range nodes {
		nodes[i].Ref = 100 + i
	}
	ctx := context.Background()
	tests := []struct {
		name string
		walk func(FetchFunc) (Result, error)
		want Result
	}{
		{
			"backfill stops at its limit",
			func(f FetchFunc) (Result, error) {
				return Backfill(ctx, BackfillRequest{RoomID: testRoom, From: []string{"$c5"}, Limit: 3}, f)
			},
			Result{IDs: []string{"$c5", "$c4", "$c3"}, Refs: []int{104, 103, 102}, Visits: 3},
		},
		{
			"backfill reaches the room's first event",
			func(f FetchFunc) (Result, error) {
				return Backfill(ctx, BackfillRequest{RoomID: testRoom, From: []string{"$c5"}, Limit: 10}, f)
			},
			Result{IDs: []string{"$c5", "$c4", "$c3", "$c2", "$c1"}, Refs: []int{104, 103, 102, 101, 100}, Visits: 5},
		},
		{
			"backfill runs out of budget",
			func(f FetchFunc) (Result, error) {
				return Backfill(ctx, BackfillRequest{RoomID: testRoom, From: []string{"$c5"}, Limit: 10, MaxVisits: 2}, f)
			},
			Result{IDs: []string{"$c5", "$c4"}, Refs: []int{104, 103}, Visits: 2, Exhausted: true},
		},
		{
			"missing events stops at its limit",
			func(f FetchFunc) (Result, error) {
				return MissingEvents(ctx, MissingEventsRequest{RoomID: testRoom, Latest: []string{"$c5"}, Limit: 2}, f)
			},
			Result{IDs: []string{"$c3", "$c4"}, Refs: []int{102, 103}, Visits: 3},
		},
		{
			"missing events runs out of budget",
			func(f FetchFunc) (Result, error) {
				return MissingEvents(ctx, MissingEventsRequest{RoomID: testRoom, Latest: []string{"$c5"}, Limit: 10, MaxVisits: 2}, f)
			},
			Result{IDs: []string{"$c4"}, Refs: []int{103}, Visits: 2, Exhausted: true},
		},
		{
			"missing events finds nothing to return",
			func(f FetchFunc) (Result, error) {
				return MissingEvents(ctx, MissingEventsRequest{RoomID: testRoom, Latest: []string{"$c1"}, Limit: 10}, f)
			},
			Result{IDs: []string{}, Refs: []int{}, Visits: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(nodes...)
			got, err := tt.walk(s.fetch)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			require.Len(t, s.fetched(), got.Visits)
		})
	}
}
