package sign

import (
	"container/list"
	"time"
)

// lru is a size-bounded map whose entries expire: a least-recently-used
// cache. It is not safe for concurrent use; its owner locks.
type lru[K comparable, V any] struct {
	max   int
	order *list.List // of *lruEntry[K, V], most recently used first
	items map[K]*list.Element
}

type lruEntry[K comparable, V any] struct {
	key     K
	value   V
	expires time.Time
}

func newLRU[K comparable, V any](max int) *lru[K, V] {
	return &lru[K, V]{max: max, order: list.New(), items: map[K]*list.Element{}}
}

// get returns key's value if it is there and has not expired at now, and
// marks it used. An expired entry is removed.
func (c *lru[K, V]) get(key K, now time.Time) (V, bool) {
	element, ok := c.items[key]
	if !ok {
		var zero V
		return zero, false
	}
	entry := element.Value.(*lruEntry[K, V])
	if !now.Before(entry.expires) {
		c.order.Remove(element)
		delete(c.items, key)
		var zero V
		return zero, false
	}
	c.order.MoveToFront(element)
	return entry.value, true
}

// put sets key's value until expires, marks it used, and evicts the least
// recently used entry if the cache is over its size.
func (c *lru[K, V]) put(key K, value V, expires time.Time) {
	if element, ok := c.items[key]; ok {
		entry := element.Value.(*lruEntry[K, V])
		entry.value, entry.expires = value, expires
		c.order.MoveToFront(element)
		return
	}
	c.items[key] = c.order.PushFront(&lruEntry[K, V]{key: key, value: value, expires: expires})
	if c.order.Len() > c.max {
		oldest := c.order.Back()
		c.order.Remove(oldest)
		delete(c.items, oldest.Value.(*lruEntry[K, V]).key)
	}
}

// len is the number of entries, expired or not.
func (c *lru[K, V]) len() int { return c.order.Len() }

// remove deletes key's entry, if any.
func (c *lru[K, V]) remove(key K) {
	if element, ok := c.items[key]; ok {
		c.order.Remove(element)
		delete(c.items, key)
	}
}
