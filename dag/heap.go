package dag

// slotHeap is a container/heap.Interface over ints (walk slots, or positions
// in another slotHeap) ordered by less: the root is the item for which less
// holds against every other. Its layout is container/heap's documented one,
// the children of item i at 2i+1 and 2i+2, which lookahead relies on.
type slotHeap struct {
	items []int
	less  func(a, b int) bool
}

func (h *slotHeap) Len() int           { return len(h.items) }
func (h *slotHeap) Less(i, j int) bool { return h.less(h.items[i], h.items[j]) }
func (h *slotHeap) Swap(i, j int)      { h.items[i], h.items[j] = h.items[j], h.items[i] }
func (h *slotHeap) Push(x any)         { h.items = append(h.items, x.(int)) }

func (h *slotHeap) Pop() any {
	last := len(h.items) - 1
	x := h.items[last]
	h.items = h.items[:last]
	return x
}
