package sqlstore

import (
	"container/list"
	"sync"
	"time"
)

// lru is a cache bounded by the bytes its entries hold (as their owners
// estimate them), evicting the least recently used. Every entry records when
// it was stored, for the caches whose answers may go stale (see Options).
type lru[K comparable, V any] struct {
	mu     sync.Mutex
	budget int
	used   int
	order  *list.List // front: most recently used
	items  map[K]*list.Element
}

type lruEntry[K comparable, V any] struct {
	key    K
	value  V
	size   int
	stored time.Time
}

func newLRU[K comparable, V any](budget int) *lru[K, V] {
	return &lru[K, V]{budget: budget, order: list.New(), items: make(map[K]*list.Element)}
}

// get returns the value of key and when it was stored.
func (c *lru[K, V]) get(key K) (value V, stored time.Time, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if !ok {
		return value, stored, false
	}
	c.order.MoveToFront(el)
	e := el.Value.(*lruEntry[K, V])
	return e.value, e.stored, true
}

// put stores value under key, size bytes; a value larger than the whole
// budget is not stored.
func (c *lru[K, V]) put(key K, value V, size int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.used -= el.Value.(*lruEntry[K, V]).size
		c.order.Remove(el)
		delete(c.items, key)
	}
	if size > c.budget {
		return
	}
	c.items[key] = c.order.PushFront(&lruEntry[K, V]{key: key, value: value, size: size, stored: time.Now()})
	c.used += size
	for c.used > c.budget {
		oldest := c.order.Back()
		e := oldest.Value.(*lruEntry[K, V])
		c.order.Remove(oldest)
		delete(c.items, e.key)
		c.used -= e.size
	}
}

// clear drops every entry.
func (c *lru[K, V]) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.order.Init()
	clear(c.items)
	c.used = 0
}

// entryOverhead approximates the bytes an entry costs beyond its key and
// value's contents: the list element, the map slot and the entry struct.
const entryOverhead = 128
