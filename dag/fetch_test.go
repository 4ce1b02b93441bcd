package dag

import (
	"context"
	"slices"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"
)

// forkRoom is n blocks of a base event, three branches pointing at it and a
// merge pointing at the branches; each base points at the previous merge.
func forkRoom(n int) []Node {
	var nodes []Node
	prev := []string(nil)
	for b := range n {
		id := func(part string) string { return "$" + strconv.Itoa(b) + part }
		depth := int64(3 * b)
		nodes = append(nodes,
			ev(id("base"), depth+1, prev...),
			ev(id("x"), depth+2, id("base")),
			ev(id("y"), depth+2, id("base")),
			ev(id("z"), depth+2, id("base")),
			ev(id("merge"), depth+3, id("x"), id("y"), id("z")),
		)
		prev = []string{id("merge")}
	}
	return nodes
}

// TestWalksKeepFetchFuncContract checks what FetchFunc's documentation
// promises fetch: each call gets a fresh slice that fetch may keep, grow or
// overwrite without changing the walk, and the walk does not touch it once
// the call has returned.
func TestWalksKeepFetchFuncContract(t *testing.T) {
	nodes := append(chain("$c", 150), forkRoom(40)...)
	walks := []struct {
		name string
		walk func(FetchFunc) ([]string, error)
	}{
		{"backfill chain", func(f FetchFunc) ([]string, error) {
			return backfillIDs(context.Background(), BackfillRequest{RoomID: testRoom, From: []string{"$c150"}, Limit: 120}, f)
		}},
		{"backfill forks", func(f FetchFunc) ([]string, error) {
			return backfillIDs(context.Background(), BackfillRequest{RoomID: testRoom, From: []string{"$39merge", "$30x"}, Limit: 150}, f)
		}},
		{"missing events chain", func(f FetchFunc) ([]string, error) {
			return missingEventsIDs(context.Background(), MissingEventsRequest{RoomID: testRoom, Latest: []string{"$c150"}, Limit: 120}, f)
		}},
		{"missing events forks", func(f FetchFunc) ([]string, error) {
			return missingEventsIDs(context.Background(), MissingEventsRequest{
				RoomID: testRoom, Earliest: []string{"$2merge"}, Latest: []string{"$39merge", "$30x"}, Limit: 150,
			}, f)
		}},
	}
	for _, w := range walks {
		want, err := w.walk(newStore(nodes...).fetch)
		require.NoError(t, err)
		require.NotEmpty(t, want)

		t.Run(w.name+": fetch keeps and grows its slices", func(t *testing.T) {
			s := newStore(nodes...)
			var kept, snapshots [][]string
			got, err := w.walk(func(ctx context.Context, ids []string) ([]Node, error) {
				// Growing the slice must not reach what later calls get.
				grown := append(ids, "$grown")
				kept, snapshots = append(kept, grown), append(snapshots, slices.Clone(grown))
				return s.fetch(ctx, ids)
			})
			require.NoError(t, err)
			require.Equal(t, want, got)
			require.Equal(t, snapshots, kept, "the walk wrote to a slice fetch was handed")
		})
		t.Run(w.name+": fetch overwrites its slices", func(t *testing.T) {
			s := newStore(nodes...)
			got, err := w.walk(func(ctx context.Context, ids []string) ([]Node, error) {
				answer, err := s.fetch(ctx, ids)
				for i := range ids {
					ids[i] = "$scribbled" + strconv.Itoa(i)
				}
				return answer, err
			})
			require.NoError(t, err)
			require.Equal(t, want, got)
		})
		t.Run(w.name+": fetch reuses one answer slice", func(t *testing.T) {
			s := newStore(nodes...)
			var answer []Node
			got, err := w.walk(func(ctx context.Context, ids []string) ([]Node, error) {
				fresh, err := s.fetch(ctx, ids)
				clear(answer)
				answer = append(answer[:0], fresh...)
				return answer, err
			})
			require.NoError(t, err)
			require.Equal(t, want, got)
		})
	}
}
