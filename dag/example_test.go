package dag_test

import (
	"context"
	"fmt"

	"github.com/fedhistory/fedhistory/dag"
)

func ExampleBackfill() {
	// A room of four events in a chain: $1 ← $2 ← $3 ← $4.
	room := map[string]dag.Node{}
	for i, prev := range []string{"", "$1", "$2", "$3"} {
		n := dag.Node{ID: fmt.Sprintf("$%d", i+1), RoomID: "!r:example.org", Depth: int64(i + 1), Ref: i}
		if prev != "" {
			n.PrevEvents = []string{prev}
		}
		room[n.ID] = n
	}
	// The FetchFunc returns the nodes it holds; Ref is its own index.
	fetch := func(_ context.Context, ids []string) ([]dag.Node, error) {
		var nodes []dag.Node
		for _, id := range ids {
			if n, ok := room[id]; ok {
				nodes = append(nodes, n)
			}
		}
		return nodes, nil
	}

	res, err := dag.Backfill(context.Background(), dag.BackfillRequest{
		RoomID: "!r:example.org", From: []string{"$4"}, Limit: 3,
	}, fetch)
	if err != nil {
		panic(err)
	}
	fmt.Println(res.IDs, res.Refs, res.Visits, res.Exhausted)

	// A budget of 2 fetched IDs pays for $4 and $3 only.
	res, err = dag.Backfill(context.Background(), dag.BackfillRequest{
		RoomID: "!r:example.org", From: []string{"$4"}, Limit: 3, MaxVisits: 2,
	}, fetch)
	if err != nil {
		panic(err)
	}
	fmt.Println(res.IDs, res.Refs, res.Visits, res.Exhausted)
	// Output:
	// [$4 $3 $2] [3 2 1] 3 false
	// [$4 $3] [3 2] 2 true
}
