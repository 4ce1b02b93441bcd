package memstore

// pmap is a persistent (immutable) ordered map: a path-copying AVL tree.
//
// Every update returns a new map and leaves the receiver untouched; the two
// share every node off the updated path. That is what lets the store keep the
// state before and after each of millions of events: a message event's state
// is the same pmap as its predecessor's, and a state event costs O(log n)
// new nodes rather than a copy of the room state.
//
// The zero value is the empty map. A pmap is a single pointer, safe to copy
// and to read from any number of goroutines without locking, because no node
// is ever modified after it has been built.
type pmap[K ordered[K], V any] struct {
	root *pnode[K, V]
}

// ordered is implemented by keys that define their own total order.
type ordered[K any] interface {
	// Compare returns a negative number when the receiver sorts before other,
	// zero when they are equal and a positive number otherwise.
	Compare(other K) int
}

type pnode[K ordered[K], V any] struct {
	key         K
	val         V
	left, right *pnode[K, V]
	// height of the subtree (a leaf is 1) and its number of entries. int32
	// keeps the two in one word: a room never holds 2^31 state entries.
	height int32
	size   int32
}

func (n *pnode[K, V]) h() int32 {
	if n == nil {
		return 0
	}
	return n.height
}

func (n *pnode[K, V]) count() int32 {
	if n == nil {
		return 0
	}
	return n.size
}

// mk builds a node from parts that are already balanced relative to each other.
func mk[K ordered[K], V any](key K, val V, left, right *pnode[K, V]) *pnode[K, V] {
	return &pnode[K, V]{
		key:    key,
		val:    val,
		left:   left,
		right:  right,
		height: 1 + max(left.h(), right.h()),
		size:   1 + left.count() + right.count(),
	}
}

// balance builds a node whose subtrees differ in height by at most two and
// restores the AVL invariant with one or two rotations. The rotations build
// new nodes instead of relinking the old ones, because those may be shared
// with other versions of the map.
func balance[K ordered[K], V any](key K, val V, left, right *pnode[K, V]) *pnode[K, V] {
	hl, hr := left.h(), right.h()
	switch {
	case hl > hr+1:
		if left.left.h() >= left.right.h() {
			return mk(left.key, left.val, left.left, mk(key, val, left.right, right))
		}
		lr := left.right
		return mk(lr.key, lr.val, mk(left.key, left.val, left.left, lr.left), mk(key, val, lr.right, right))
	case hr > hl+1:
		if right.right.h() >= right.left.h() {
			return mk(right.key, right.val, mk(key, val, left, right.left), right.right)
		}
		rl := right.left
		return mk(rl.key, rl.val, mk(key, val, left, rl.left), mk(right.key, right.val, rl.right, right.right))
	default:
		return mk(key, val, left, right)
	}
}

// Len returns the number of entries.
func (m pmap[K, V]) Len() int { return int(m.root.count()) }

// Get returns the value stored under key.
func (m pmap[K, V]) Get(key K) (V, bool) {
	n := m.root
	for n != nil {
		c := key.Compare(n.key)
		switch {
		case c < 0:
			n = n.left
		case c > 0:
			n = n.right
		default:
			return n.val, true
		}
	}
	var zero V
	return zero, false
}

// Set returns a map in which key maps to val.
func (m pmap[K, V]) Set(key K, val V) pmap[K, V] {
	return pmap[K, V]{root: insert(m.root, key, val)}
}

func insert[K ordered[K], V any](n *pnode[K, V], key K, val V) *pnode[K, V] {
	if n == nil {
		return mk[K, V](key, val, nil, nil)
	}
	c := key.Compare(n.key)
	switch {
	case c < 0:
		return balance(n.key, n.val, insert(n.left, key, val), n.right)
	case c > 0:
		return balance(n.key, n.val, n.left, insert(n.right, key, val))
	default:
		return mk(key, val, n.left, n.right)
	}
}

// Delete returns a map without key. When key is absent the result is m
// itself (same root), so callers can detect a no-op by identity.
func (m pmap[K, V]) Delete(key K) pmap[K, V] {
	root, _ := remove(m.root, key)
	return pmap[K, V]{root: root}
}

func remove[K ordered[K], V any](n *pnode[K, V], key K) (*pnode[K, V], bool) {
	if n == nil {
		return nil, false
	}
	c := key.Compare(n.key)
	switch {
	case c < 0:
		left, found := remove(n.left, key)
		if !found {
			return n, false
		}
		return balance(n.key, n.val, left, n.right), true
	case c > 0:
		right, found := remove(n.right, key)
		if !found {
			return n, false
		}
		return balance(n.key, n.val, n.left, right), true
	}
	switch {
	case n.left == nil:
		return n.right, true
	case n.right == nil:
		return n.left, true
	}
	right, successor := removeMin(n.right)
	return balance(successor.key, successor.val, n.left, right), true
}

// removeMin returns n without its smallest entry, and that entry's node.
func removeMin[K ordered[K], V any](n *pnode[K, V]) (rest, minNode *pnode[K, V]) {
	if n.left == nil {
		return n.right, n
	}
	left, minNode := removeMin(n.left)
	return balance(n.key, n.val, left, n.right), minNode
}

// Same reports whether m and other are the same version of a map (not merely
// equal contents). It is how the store notices that two events share a state.
func (m pmap[K, V]) Same(other pmap[K, V]) bool { return m.root == other.root }

// Ascend calls fn for every entry whose key is >= from, in ascending key
// order, until fn returns false.
func (m pmap[K, V]) Ascend(from K, fn func(K, V) bool) {
	ascend(m.root, from, fn)
}

func ascend[K ordered[K], V any](n *pnode[K, V], from K, fn func(K, V) bool) bool {
	for n != nil {
		if from.Compare(n.key) > 0 {
			// The whole left subtree and n are below from.
			n = n.right
			continue
		}
		if !ascend(n.left, from, fn) || !fn(n.key, n.val) {
			return false
		}
		return all(n.right, fn)
	}
	return true
}

// All calls fn for every entry in ascending key order until fn returns false.
func (m pmap[K, V]) All(fn func(K, V) bool) {
	all(m.root, fn)
}

func all[K ordered[K], V any](n *pnode[K, V], fn func(K, V) bool) bool {
	for n != nil {
		if !all(n.left, fn) || !fn(n.key, n.val) {
			return false
		}
		n = n.right
	}
	return true
}

// pmapFromSorted returns the map of keys[i] → vals[i], keys being sorted
// and distinct. It builds the balanced tree directly, in O(n) and with
// exactly n nodes, where n calls of Set would cost O(n log n) and leave
// garbage on every path.
func pmapFromSorted[K ordered[K], V any](keys []K, vals []V) pmap[K, V] {
	var build func(lo, hi int) *pnode[K, V]
	build = func(lo, hi int) *pnode[K, V] {
		if lo >= hi {
			return nil
		}
		// The halves differ in size by at most one, so in height by at most
		// one: an AVL tree.
		mid := int(uint(lo+hi) >> 1)
		return mk(keys[mid], vals[mid], build(lo, mid), build(mid+1, hi))
	}
	return pmap[K, V]{root: build(0, len(keys))}
}
