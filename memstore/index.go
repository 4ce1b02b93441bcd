package memstore

import "hash/maphash"

// eventIndex maps event IDs to records. It is the store's hottest
// structure: a backfill of 100 events looks up 200 IDs. A
// map[string]*record keyed by the IDs themselves costs, per lookup, a read
// of the key's bytes (a separate allocation, cold in a large room) to
// compare them, on top of the map's own memory. Keying by a 64-bit hash of
// the ID keeps the map dense and pointer-free in its keys; the one string
// comparison left is against the record's ID, which the caller reads next
// anyway.
//
// Two IDs with the same hash cannot share a slot: the later one goes to
// collided, which lookups consult only when the hashed slot does not hold
// the ID. The seed is random per index, so a remote server cannot choose
// event IDs that collide on purpose (and with 64 bits, chance collisions
// in a room of millions are about one in 10^7).
//
// Not safe for concurrent writes; Store guards it like the map it replaces.
type eventIndex struct {
	seed     maphash.Seed
	byHash   map[uint64]*record
	collided map[string]*record
	// hash is maphash.String with seed; tests replace it to force
	// collisions.
	hash func(seed maphash.Seed, id string) uint64
}

func newEventIndex() eventIndex {
	return eventIndex{
		seed:     maphash.MakeSeed(),
		byHash:   make(map[uint64]*record),
		collided: make(map[string]*record),
		hash:     maphash.String,
	}
}

// get returns the record of id.
func (x *eventIndex) get(id string) (*record, bool) {
	if rec, ok := x.byHash[x.hash(x.seed, id)]; ok && rec.ID == id {
		return rec, true
	}
	if len(x.collided) == 0 {
		return nil, false
	}
	rec, ok := x.collided[id]
	return rec, ok
}

// put adds rec, whose ID the index does not hold yet.
func (x *eventIndex) put(rec *record) {
	h := x.hash(x.seed, rec.ID)
	if other, taken := x.byHash[h]; taken && other.ID != rec.ID {
		x.collided[rec.ID] = rec
		return
	}
	x.byHash[h] = rec
}
