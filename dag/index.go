package dag

import (
	"hash/maphash"
	"math"
)

// idIndex maps the event IDs a walk knows to their positions in the walk's
// own list of IDs (its slots). It is what a map[string]int would be, shaped
// for the walks' use of it:
//
//   - one hash and one probe sequence both to look an ID up and to add it
//     when it is new, where a map needs a lookup and then an assignment;
//   - the table holds no pointers (the keys stay in the walk's list), so
//     neither the garbage collector nor clearing it pays for the keys;
//   - emptying it for the next walk costs nothing: entries carry the
//     generation they were written in, and only the current one counts.
//
// It is an open-addressing table with linear probing, kept at most half
// full. The hash is seeded afresh for every walk, as Go's maps are per map,
// so that IDs chosen by a remote server cannot be made to collide.
type idIndex struct {
	seed    maphash.Seed
	entries []indexEntry // len is 0 or a power of two
	gen     uint16       // the current walk's generation, never 0
	n       int          // entries of the current generation
}

type indexEntry struct {
	gen uint16 // the generation that wrote the entry; 0 on removal
	// tag is the top bits of the ID's hash: a probe compares the ID
	// itself only when they match.
	tag  uint16
	slot uint32
}

// maxIndexSlots is the number of slots an idIndex can tell apart. A walk
// that large would need over 64 GB for its list of IDs alone, and will
// have run out of memory first; findOrAdd panics rather than silently
// wrap.
const maxIndexSlots uint64 = math.MaxUint32

// minIndexEntries is the smallest table reset makes.
const minIndexEntries = 16

// reset empties x for a walk that expects about expected IDs.
func (x *idIndex) reset(expected int) {
	x.seed = maphash.MakeSeed()
	x.n = 0
	x.gen++
	if x.gen == 0 {
		// Entries written 65535 walks ago would look current again.
		clear(x.entries)
		x.gen = 1
	}
	if want := tableSize(expected); len(x.entries) < want {
		x.entries = make([]indexEntry, want)
	}
}

// tableSize is the smallest power of two that holds n entries at most half
// full.
func tableSize(n int) int {
	size := minIndexEntries
	for size < 2*n {
		size *= 2
	}
	return size
}

func (x *idIndex) hash(id string) (pos int, tag uint16) {
	h := maphash.String(x.seed, id)
	return int(h & uint64(len(x.entries)-1)), uint16(h >> 48)
}

// find returns the slot of id, where ids is the walk's list of IDs by slot.
func (x *idIndex) find(ids []string, id string) (int, bool) {
	mask := len(x.entries) - 1
	pos, tag := x.hash(id)
	for {
		e := &x.entries[pos]
		if e.gen != x.gen {
			return 0, false
		}
		if e.tag == tag && ids[e.slot] == id {
			return int(e.slot), true
		}
		pos = (pos + 1) & mask
	}
}

// findOrAdd returns the slot of id if it has one. Otherwise it records id
// as having the slot len(ids), which the caller must then append id to
// ids, and returns that slot and false.
func (x *idIndex) findOrAdd(ids []string, id string) (int, bool) {
	if 2*(x.n+1) > len(x.entries) {
		x.grow(ids)
	}
	mask := len(x.entries) - 1
	pos, tag := x.hash(id)
	for {
		e := &x.entries[pos]
		if e.gen != x.gen {
			if uint64(len(ids)) > maxIndexSlots {
				panic("dag: walk index full")
			}
			*e = indexEntry{gen: x.gen, tag: tag, slot: uint32(len(ids))}
			x.n++
			return len(ids), false
		}
		if e.tag == tag && ids[e.slot] == id {
			return int(e.slot), true
		}
		pos = (pos + 1) & mask
	}
}

// removeLast removes id, which must be the ID added last. Removing entries
// last first is what makes plain emptying correct under linear probing:
// every probe sequence that passes the entry's position belongs to an ID
// added after it, and those are gone already.
func (x *idIndex) removeLast(ids []string, id string) {
	mask := len(x.entries) - 1
	pos, tag := x.hash(id)
	for {
		e := &x.entries[pos]
		if e.gen == x.gen && e.tag == tag && ids[e.slot] == id {
			e.gen = 0
			x.n--
			return
		}
		pos = (pos + 1) & mask
	}
}

// grow doubles the table and adds the IDs of ids again, in slot order, so
// that the IDs added last are still the last in their probe sequences (see
// removeLast).
func (x *idIndex) grow(ids []string) {
	x.entries = make([]indexEntry, 2*len(x.entries))
	x.gen, x.n = 1, 0
	for slot, id := range ids {
		if _, ok := x.findOrAdd(ids[:slot], id); ok {
			panic("dag: walk index holds an ID twice")
		}
	}
}
