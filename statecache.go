package fedhistory

import (
	"container/list"
	"sync"
)

// stateIDsCache keeps encoded /state_ids answers, bounded by their total
// size, least recently used out first. An answer never goes stale: the
// state before an event and the auth chain links of stored events never
// change once the event is stored (EventStore, "Order of adds"), so nothing
// invalidates an entry. (An applied redaction changes what /state serves,
// never which IDs; /state reads the events afresh on every request.)
type stateIDsCache struct {
	maxBytes int

	mu      sync.Mutex
	bytes   int
	order   *list.List // of *stateIDsEntry, most recently used first
	entries map[stateIDsKey]*list.Element
}

type stateIDsKey struct{ roomID, eventID string }

type stateIDsEntry struct {
	key    stateIDsKey
	answer *stateIDs
}

func newStateIDsCache(maxBytes int) *stateIDsCache {
	return &stateIDsCache{maxBytes: maxBytes, order: list.New(), entries: make(map[stateIDsKey]*list.Element)}
}

func (c *stateIDsCache) get(key stateIDsKey) (*stateIDs, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[key]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*stateIDsEntry).answer, true
}

// put keeps answer unless it alone would take more than half the cache.
func (c *stateIDsCache) put(key stateIDsKey, answer *stateIDs) {
	size := answer.size()
	if size > c.maxBytes/2 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[key]; ok {
		return
	}
	c.entries[key] = c.order.PushFront(&stateIDsEntry{key: key, answer: answer})
	c.bytes += size
	for c.bytes > c.maxBytes {
		oldest := c.order.Back()
		entry := oldest.Value.(*stateIDsEntry)
		c.order.Remove(oldest)
		delete(c.entries, entry.key)
		c.bytes -= entry.answer.size()
	}
}
