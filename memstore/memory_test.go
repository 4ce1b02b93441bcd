package memstore

import (
	"encoding/json"
	"fmt"
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"
)

// syntheticRoom feeds a store a long linear room of version 1 events cloned
// from two signed templates, a message and a join. Room version 1 carries the
// event ID in the JSON, and the store trusts its input, so each clone only
// gets a new event_id, prev_events and depth (and, for joins, a new user);
// the signatures no longer match, which nothing here checks.
type syntheticRoom struct {
	message, join map[string]json.RawMessage
	prevID        string
	depth         int64
}

func newSyntheticRoom(t testing.TB, s *Store) *syntheticRoom {
	r := newTestRoom(t, "1")
	r.addSetup(s)
	auth := names("create", "pl", "alice")
	r.build("message", r.message(alice, "a message of ordinary length, about as long as a line of chat", names("msg1"), auth))
	r.build("join", r.member("@u:hs1.example", "@u:hs1.example", "join", names("msg1"), names("create", "pl", "jr")))
	syn := &syntheticRoom{prevID: r.id("msg1"), depth: r.events["msg1"].Depth()}
	require.NoError(t, json.Unmarshal(r.json("message"), &syn.message))
	require.NoError(t, json.Unmarshal(r.json("join"), &syn.join))
	return syn
}

// next returns the JSON of the i-th synthetic event: every 100th is a join of
// a new user (on one of ten servers), the rest are messages.
func (syn *syntheticRoom) next(t testing.TB, i int) []byte {
	fields := syn.message
	if i%100 == 99 {
		fields = syn.join
		user, err := json.Marshal(fmt.Sprintf("@user%d:hs%d.example", i, i%10))
		require.NoError(t, err)
		fields["state_key"], fields["sender"] = user, user
	}
	id := fmt.Sprintf("$synthetic%08d:hs1.example", i)
	syn.depth++
	var err error
	fields["event_id"], err = json.Marshal(id)
	require.NoError(t, err)
	fields["prev_events"], err = json.Marshal([]any{[]any{syn.prevID, map[string]string{"sha256": "AAAA"}}})
	require.NoError(t, err)
	fields["depth"], err = json.Marshal(syn.depth)
	require.NoError(t, err)
	pdu, err := json.Marshal(fields)
	require.NoError(t, err)
	syn.prevID = id
	return pdu
}

func heapInUse() uint64 {
	var stats runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&stats)
	return stats.HeapAlloc
}

// TestMemoryPerEvent adds 10^5 events (99% messages, 1% joins) and reports
// the live heap they cost against the size of their JSON. The store aims at
// a resident size of at most three times the JSON; the live heap must leave
// room for the garbage collector's headroom on top.
func TestMemoryPerEvent(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("adds 10^5 events: run without -short and without -race")
	}
	const n = 100_000
	s := New()
	syn := newSyntheticRoom(t, s)
	before := heapInUse()
	var jsonBytes int
	for i := range n {
		pdu := syn.next(t, i)
		jsonBytes += len(pdu)
		_, err := s.Add("1", pdu, AddOptions{})
		require.NoError(t, err)
	}
	after := heapInUse()
	runtime.KeepAlive(s)

	heapPerEvent := float64(after-before) / n
	jsonPerEvent := float64(jsonBytes) / n
	t.Logf("%d events: %.0f bytes of heap per event, %.0f bytes of JSON per event, ratio %.2f",
		n, heapPerEvent, jsonPerEvent, heapPerEvent/jsonPerEvent)
	require.Less(t, heapPerEvent/jsonPerEvent, 2.0, "the store must not cost more than twice the JSON it holds")
}

// BenchmarkAdd reports the same figures per added event. Its time per
// operation includes generating each event's JSON.
func BenchmarkAdd(b *testing.B) {
	s := New()
	syn := newSyntheticRoom(b, s)
	var jsonBytes int
	before := heapInUse()
	for i := range b.N {
		pdu := syn.next(b, i)
		jsonBytes += len(pdu)
		if _, err := s.Add("1", pdu, AddOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	after := heapInUse()
	runtime.KeepAlive(s)
	b.ReportMetric(float64(after-before)/float64(b.N), "heap-B/event")
	b.ReportMetric(float64(jsonBytes)/float64(b.N), "json-B/event")
}
