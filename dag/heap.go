package dag

// intHeap is a binary heap of ints ordered by less: the root is the item for
// which less holds against every other. It is hand-written rather than built
// on container/heap to avoid boxing every item into an interface.
type intHeap struct {
	items []int
	less  func(a, b int) bool
}

func (h *intHeap) len() int { return len(h.items) }

func (h *intHeap) push(x int) {
	h.items = append(h.items, x)
	i := len(h.items) - 1
	for i > 0 {
		parent := (i - 1) / 2
		if !h.less(h.items[i], h.items[parent]) {
			break
		}
		h.items[i], h.items[parent] = h.items[parent], h.items[i]
		i = parent
	}
}

func (h *intHeap) pop() int {
	top := h.items[0]
	last := len(h.items) - 1
	h.items[0] = h.items[last]
	h.items = h.items[:last]
	i := 0
	for {
		smallest := i
		left, right := 2*i+1, 2*i+2
		if left < last && h.less(h.items[left], h.items[smallest]) {
			smallest = left
		}
		if right < last && h.less(h.items[right], h.items[smallest]) {
			smallest = right
		}
		if smallest == i {
			return top
		}
		h.items[i], h.items[smallest] = h.items[smallest], h.items[i]
		i = smallest
	}
}
