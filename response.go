package fedhistory

import (
	"context"
	"encoding/json"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"

	"github.com/fedhistory/fedhistory/dag"
	"github.com/fedhistory/fedhistory/internal/matrixerr"
)

// paramError is a 4xx answer to a request that could not be parsed.
type paramError struct {
	errcode string
	message string
}

func (e *paramError) write(w http.ResponseWriter) {
	status := http.StatusBadRequest
	if e.errcode == matrixerr.TooLarge {
		status = http.StatusRequestEntityTooLarge
	}
	matrixerr.Write(w, status, e.errcode, e.message)
}

// transactionPrefix encodes the constant start of a backfill response.
func transactionPrefix(serverName string) []byte {
	name, _ := json.Marshal(serverName) // a string always encodes
	return []byte(`{"origin":` + string(name) + `,"origin_server_ts":`)
}

// responseSize is the exact size of a response: overhead plus the PDUs and
// their separators, so the buffer is allocated once.
func responseSize(overhead int, pdus []json.RawMessage) int {
	n := overhead + 2 + len(pdus)
	for _, pdu := range pdus {
		n += len(pdu)
	}
	return n
}

// appendJSONArray appends the PDUs as a JSON array, bytes untouched: the
// stored events are already valid JSON, and re-encoding them would cost
// several times what the rest of the request does.
func appendJSONArray(buf []byte, pdus []json.RawMessage) []byte {
	buf = append(buf, '[')
	for i, pdu := range pdus {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, pdu...)
	}
	return append(buf, ']')
}

// responseBuffers recycles the buffers responses are assembled in. A
// backfill answer is about limit times the event size (100 KiB for 1 KiB
// events); a fresh buffer per request costs more in zeroing and garbage
// collection than copying the events into it. sync.Pool keeps a cache per
// processor, so concurrent requests do not contend for it.
var responseBuffers = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledResponseBytes bounds the buffers kept for reuse, so that one
// huge answer does not pin its memory for ever.
const maxPooledResponseBytes = 4 << 20

// writePDUResponse writes the JSON object that head opens (everything up
// to the key of the PDU array), the PDUs as an array, and the closing brace,
// with one Write from a recycled buffer.
func writePDUResponse(w http.ResponseWriter, head []byte, pdus []json.RawMessage) {
	size := responseSize(len(head)+1, pdus)
	pooled := responseBuffers.Get().(*[]byte)
	buf := *pooled
	if cap(buf) < size {
		buf = make([]byte, 0, size)
	}
	buf = append(buf[:0], head...)
	buf = appendJSONArray(buf, pdus)
	buf = append(buf, '}')
	writeJSON(w, buf)
	// Write must not retain buf (io.Writer's contract), so it may be reused.
	if cap(buf) <= maxPooledResponseBytes {
		*pooled = buf[:0]
		responseBuffers.Put(pooled)
	}
}

func writeJSON(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

func stack() string { return string(debug.Stack()) }

// canonicalJSONMaxInt is the largest integer canonical JSON allows (2^53-1).
const canonicalJSONMaxInt = 1<<53 - 1

// dagFetcher adapts an EventStore to dag.FetchFunc. It keeps every event
// the store returns, and gives each node the event's index among them as
// its Ref, so that the walk's result maps back to stored events without a
// second lookup.
type dagFetcher struct {
	store   EventStore
	roomID  string
	fetched []*Event
	// nodes is reused by every call: the walks read a FetchFunc's answer
	// only until they call it again (dag.FetchFunc).
	nodes []dag.Node
}

// dagFetchers recycles fetchers and their buffers.
var dagFetchers = sync.Pool{New: func() any { return new(dagFetcher) }}

// maxPooledFetched bounds the buffers that are recycled.
const maxPooledFetched = 2048

func newDAGFetcher(store EventStore, roomID string) *dagFetcher {
	f := dagFetchers.Get().(*dagFetcher)
	f.store, f.roomID = store, roomID
	return f
}

func (f *dagFetcher) fetch(ctx context.Context, ids []string) ([]dag.Node, error) {
	events, err := f.store.Events(ctx, f.roomID, ids)
	if err != nil {
		return nil, err
	}
	nodes := f.nodes[:0]
	for _, ev := range events {
		if ev == nil {
			continue // a misbehaving store; the walk treats the ID as unknown
		}
		// The walk keeps the first answer for each ID it asked for, and
		// ignores the rest: duplicates need no filtering here.
		nodes = append(nodes, dag.Node{
			ID: ev.ID, RoomID: ev.RoomID, Depth: ev.Depth, PrevEvents: ev.PrevEvents,
			Rejected: ev.Rejected, Outlier: ev.Outlier, Ref: len(f.fetched),
		})
		f.fetched = append(f.fetched, ev)
	}
	f.nodes = nodes
	return nodes, nil
}

// events returns the stored events the walk returned (by the Refs of
// fetch's nodes), in order. It is the fetcher's last use: it recycles f.
func (f *dagFetcher) events(refs []int) []*Event {
	out := make([]*Event, len(refs))
	for i, ref := range refs {
		out[i] = f.fetched[ref]
	}
	if cap(f.fetched) <= maxPooledFetched && cap(f.nodes) <= maxPooledFetched {
		clear(f.fetched) // drop the references to stored events
		clear(f.nodes)
		f.store, f.roomID, f.fetched, f.nodes = nil, "", f.fetched[:0], f.nodes[:0]
		dagFetchers.Put(f)
	}
	return out
}
