// Package dag walks a room's event graph for the two federation history
// endpoints: Backfill (GET /_matrix/federation/v1/backfill) and MissingEvents
// (POST /_matrix/federation/v1/get_missing_events).
//
// The walks are pure functions of their request and a FetchFunc, which
// supplies the walk metadata of events (a Node each); they know nothing about
// HTTP or storage. Each returns a Result: the IDs of the events found, in the
// walk's order, the caller's Ref of each, and what the walk cost.
//
// Everything a FetchFunc returns is treated as untrusted: events of other
// rooms, events nobody asked for, duplicates, cycles in prev_events and
// forged depths cannot make a walk loop, return a foreign event or cost more
// than its visit budget.
//
// # Visit budget
//
// Both walks count every event ID they pass to the FetchFunc (Result.Visits).
// The total never exceeds the budget VisitBudget computes: the request's
// MaxVisits, or by default DefaultVisitsPerResult*Limit plus the number of
// distinct seed IDs. A room's size therefore never decides a walk's cost: a
// room of ten thousand rejected events, or events that each point at twenty
// others, costs at most the budget in fetched IDs and memory in proportion.
// Running out of budget is not an error: the walk stops at the last point
// where its answer was still exact, returns what it has and sets
// Result.Exhausted (see Backfill and MissingEvents for what exactly). Callers
// must clamp Limit themselves (Synapse clamps backfill to 100), since the
// default budget grows with it. A store that walks itself rather than serve
// a FetchFunc should spend VisitBudget too.
//
// # What a walk enters
//
// A walk follows at most the first MaxPrevEvents entries of an event's
// prev_events, and never enters an event of another room, an outlier, or an
// event whose depth lies outside [MinCanonicalInt, MaxCanonicalInt].
package dag

import (
	"context"
	"math"
	"strings"
)

// Node is the walk metadata of one event.
type Node struct {
	ID         string
	RoomID     string
	Depth      int64
	PrevEvents []string
	Rejected   bool // walked through, never returned, does not count toward the limit
	Outlier    bool // never walked into, never returned
	// Ref is the caller's own reference to the event (an index into its
	// own list of fetched events, say). The walks never look at it; they
	// return it in Result.Refs, so that the caller need not look the
	// returned IDs up again.
	Ref int
}

// Result is what a walk found and what it cost.
type Result struct {
	// IDs are the events found, in the walk's order, and Refs[i] is the
	// Ref of the node fetch returned for IDs[i].
	IDs  []string
	Refs []int
	// Visits is the number of event IDs the walk passed to fetch: never
	// more than its visit budget.
	Visits int
	// Exhausted is true when the visit budget ran out before the walk was
	// done: IDs may then be shorter than what a larger budget would find.
	Exhausted bool
}

// newResult returns a Result with room for n events.
func newResult(n, visits int, exhausted bool) Result {
	return Result{IDs: make([]string, 0, n), Refs: make([]int, 0, n), Visits: visits, Exhausted: exhausted}
}

// FetchFunc returns the events among ids that the caller holds. It may return
// fewer (unknown IDs), extra or duplicate nodes, or nodes of other rooms: the
// walks must treat its answers as untrusted.
//
// The walks hand each call a fresh slice and do not read it afterwards. They
// copy what they keep of the answer, and read the returned slice only until
// they call fetch again, so fetch may reuse one slice for all its answers.
// When fetch answers one requested ID with several nodes, the first one
// counts.
type FetchFunc func(ctx context.Context, ids []string) ([]Node, error)

// The rules below are the walks' own, exported so that a store that walks
// itself (a single database query, say) applies exactly the same ones.
const (
	// MaxPrevEvents is the number of an event's prev_events a walk follows:
	// the first 20, ignoring the rest. The PDU format caps prev_events at 20
	// ("Must contain less than or equal to 20 events") and Synapse rejects
	// incoming PDUs with more, so only events accepted before that rule
	// existed have more; the cap keeps a single event from spending a
	// walk's whole budget.
	MaxPrevEvents = 20

	// MinCanonicalInt and MaxCanonicalInt bound the integers canonical JSON
	// can represent, ±(2^53-1) (appendices, "Canonical JSON"). An event
	// whose depth lies outside cannot be valid: a walk never enters it and
	// never returns it, as if it were an outlier.
	MinCanonicalInt = -(1<<53 - 1)
	MaxCanonicalInt = 1<<53 - 1

	// DefaultVisitsPerResult scales the default visit budget with the
	// request's Limit; see VisitBudget.
	DefaultVisitsPerResult = 10
)

// VisitBudget returns the number of event IDs a walk may pass to its
// FetchFunc: maxVisits when positive, else DefaultVisitsPerResult*limit +
// seeds, saturating at the largest int. seeds is the number of distinct
// seed IDs: From for Backfill, Latest not in Earliest for MissingEvents.
// The walks call it with the request's MaxVisits and Limit (Limit > 0).
func VisitBudget(maxVisits, limit, seeds int) int {
	if maxVisits > 0 {
		return maxVisits
	}
	if limit > (math.MaxInt-seeds)/DefaultVisitsPerResult {
		return math.MaxInt
	}
	return DefaultVisitsPerResult*limit + seeds
}

// maxPrealloc caps capacities derived from caller-supplied sizes, so a
// huge Limit does not allocate up front.
const maxPrealloc = 1024

// enterable reports whether a walk of roomID may enter node at all: it must
// be in the room, not an outlier, and have a depth canonical JSON can carry.
func enterable(n *Node, roomID string) bool {
	return n.RoomID == roomID && !n.Outlier &&
		n.Depth >= MinCanonicalInt && n.Depth <= MaxCanonicalInt
}

// followedPrevEvents returns the prev_events a walk follows from n.
func followedPrevEvents(n *Node) []string {
	if len(n.PrevEvents) > MaxPrevEvents {
		return n.PrevEvents[:MaxPrevEvents]
	}
	return n.PrevEvents
}

// compareNewerFirst orders nodes newest first: by depth descending, ties
// broken by event ID ascending in byte order. It is the order in which
// Backfill takes events and returns them (backfillWalk.compareNewerFirst),
// and the order MissingEvents uses to pick among events at the same distance
// from latest_events.
func compareNewerFirst(a, b *Node) int {
	if a.Depth != b.Depth {
		if a.Depth > b.Depth {
			return -1
		}
		return 1
	}
	return strings.Compare(a.ID, b.ID)
}
