package memstore

import (
	"runtime"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/synthroom"
)

// newSyntheticRoom adds the signed setup of a long synthetic room (see
// internal/synthroom: messages of about 1 KiB, every 100th event a join) to
// s and returns the generator of its further events.
func newSyntheticRoom(t testing.TB, s *Store) *synthroom.Generator {
	g, err := synthroom.New(synthroom.Options{JoinEvery: 100})
	require.NoError(t, err)
	for _, ev := range g.Setup() {
		_, err := s.Add(synthroom.Version, ev.JSON, fedhistory.AddOptions{})
		require.NoError(t, err)
	}
	return g
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
	var pdu []byte
	for range n {
		_, pdu = syn.Next(pdu)
		jsonBytes += len(pdu)
		_, err := s.Add(synthroom.Version, pdu, fedhistory.AddOptions{})
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
	var pdu []byte
	for range b.N {
		_, pdu = syn.Next(pdu)
		jsonBytes += len(pdu)
		if _, err := s.Add(synthroom.Version, pdu, fedhistory.AddOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	after := heapInUse()
	runtime.KeepAlive(s)
	b.ReportMetric(float64(after-before)/float64(b.N), "heap-B/event")
	b.ReportMetric(float64(jsonBytes)/float64(b.N), "json-B/event")
}
