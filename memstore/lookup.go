package memstore

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/fedhistory/fedhistory"
)

// EventByID returns the event eventID, whatever its room, outliers and
// rejected events included (their flags say so), or an error wrapping
// fedhistory.ErrEventNotFound.
func (s *Store) EventByID(_ context.Context, eventID string) (*fedhistory.Event, error) {
	s.mu.RLock()
	rec, ok := s.events.get(eventID)
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("memstore: event %q: %w", eventID, fedhistory.ErrEventNotFound)
	}
	return rec.event(), nil
}

// EventAtTimestamp returns, among the events of roomID that are neither
// rejected nor outliers, the greatest by (OriginServerTS, Depth, ID) with
// OriginServerTS <= ts (Backward), or the least with OriginServerTS >= ts
// (Forward). It fails with an error wrapping fedhistory.ErrEventNotFound
// when there is none, and fedhistory.ErrRoomNotFound for a room the store
// does not hold. It costs O(log n) in the room's size (see timeIndex).
func (s *Store) EventAtTimestamp(_ context.Context, roomID string, ts int64, dir fedhistory.Direction) (*fedhistory.Event, error) {
	if dir != fedhistory.Forward && dir != fedhistory.Backward {
		return nil, fmt.Errorf("memstore: direction %q is neither %q nor %q", dir, fedhistory.Forward, fedhistory.Backward)
	}
	s.mu.RLock()
	rm := s.rooms[roomID]
	var rec *record
	switch {
	case rm == nil:
	case dir == fedhistory.Backward:
		rec = rm.byTime.atOrBefore(ts)
	default:
		rec = rm.byTime.atOrAfter(ts)
	}
	s.mu.RUnlock()
	switch {
	case rm == nil:
		return nil, fmt.Errorf("memstore: room %q: %w", roomID, fedhistory.ErrRoomNotFound)
	case rec == nil:
		return nil, fmt.Errorf("memstore: no event of %s at %d in direction %c: %w", roomID, ts, dir, fedhistory.ErrEventNotFound)
	}
	return rec.event(), nil
}

// timeIndex orders records by (OriginServerTS, Depth, ID), IDs compared as
// byte strings: the order of EventAtTimestamp's tie-breaks. It is a B-tree
// of record pointers, so that a lookup or an insert costs O(log n) and the
// index about one pointer per event. The zero value is empty. Store.mu
// guards it: inserts hold it, lookups hold it for reading.
type timeIndex struct {
	root *timeNode
}

// timeNodeMax is the most records a node holds.
const timeNodeMax = 64

// timeNode is a node of a timeIndex: sorted records and, in an inner node,
// len(items)+1 children, children[i] holding the records between
// items[i-1] and items[i]. The store never deletes, so nodes are never
// merged.
type timeNode struct {
	items    []*record
	children []*timeNode // nil in a leaf
}

func compareTime(a, b *record) int {
	return cmp.Or(
		cmp.Compare(a.OriginServerTS, b.OriginServerTS),
		cmp.Compare(a.Depth, b.Depth),
		strings.Compare(a.ID, b.ID),
	)
}

// insert adds rec, which the index does not hold. Full nodes are split on
// the way down, so that there is always room for the one record a split
// moves up.
func (x *timeIndex) insert(rec *record) {
	if x.root == nil {
		x.root = &timeNode{items: make([]*record, 0, timeNodeMax)}
	}
	if len(x.root.items) == timeNodeMax {
		old := x.root
		x.root = &timeNode{items: make([]*record, 0, timeNodeMax), children: make([]*timeNode, 1, timeNodeMax+1)}
		x.root.children[0] = old
		x.root.splitChild(0, rec)
	}
	n := x.root
	for {
		i := sort.Search(len(n.items), func(i int) bool { return compareTime(n.items[i], rec) > 0 })
		if n.children == nil {
			n.items = slices.Insert(n.items, i, rec)
			return
		}
		if len(n.children[i].items) == timeNodeMax {
			n.splitChild(i, rec)
			if compareTime(rec, n.items[i]) > 0 {
				i++
			}
		}
		n = n.children[i]
	}
}

// splitChild splits n's full child i in two around one record, which moves
// up into n (not full) between them. rec is the record being inserted.
func (n *timeNode) splitChild(i int, rec *record) {
	child := n.children[i]
	mid := len(child.items) / 2
	if child.children == nil && compareTime(rec, child.items[len(child.items)-1]) > 0 {
		// rec goes past the leaf's last record, the usual case in a room
		// whose events come in time order: leave the leaf nearly full and
		// start an empty one, so that leaves filled in order stay full
		// rather than half empty.
		mid = len(child.items) - 1
	}
	up := child.items[mid]
	right := &timeNode{items: make([]*record, len(child.items)-mid-1, timeNodeMax)}
	copy(right.items, child.items[mid+1:])
	clear(child.items[mid:])
	child.items = child.items[:mid]
	if child.children != nil {
		right.children = make([]*timeNode, len(child.children)-mid-1, timeNodeMax+1)
		copy(right.children, child.children[mid+1:])
		clear(child.children[mid+1:])
		child.children = child.children[:mid+1]
	}
	n.items = slices.Insert(n.items, i, up)
	n.children = slices.Insert(n.children, i+1, right)
}

// atOrBefore returns the greatest record with OriginServerTS <= ts, or nil.
func (x *timeIndex) atOrBefore(ts int64) *record {
	var found *record
	for n := x.root; n != nil; {
		// items[:i] are at or before ts; children[i] holds the records
		// between items[i-1] and items[i], greater than the candidate.
		i := sort.Search(len(n.items), func(i int) bool { return n.items[i].OriginServerTS > ts })
		if i > 0 {
			found = n.items[i-1]
		}
		if n.children == nil {
			break
		}
		n = n.children[i]
	}
	return found
}

// atOrAfter returns the least record with OriginServerTS >= ts, or nil.
func (x *timeIndex) atOrAfter(ts int64) *record {
	var found *record
	for n := x.root; n != nil; {
		i := sort.Search(len(n.items), func(i int) bool { return n.items[i].OriginServerTS >= ts })
		if i < len(n.items) {
			found = n.items[i]
		}
		if n.children == nil {
			break
		}
		n = n.children[i]
	}
	return found
}
