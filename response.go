package fedhistory

import (
	"context"
	"encoding/json"
	"net/http"
	"runtime/debug"
	"strconv"

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

func writeJSON(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

func stack() string { return string(debug.Stack()) }

// canonicalJSONMaxInt is the largest integer canonical JSON allows (2^53-1).
const canonicalJSONMaxInt = 1<<53 - 1

// dagFetcher adapts an EventStore to dag.FetchFunc and remembers the events
// it fetched, so that the walk's result (IDs) maps back to stored events
// without a second lookup.
type dagFetcher struct {
	store  EventStore
	roomID string
	seen   map[string]*Event
}

func newDAGFetcher(store EventStore, roomID string, limit int) *dagFetcher {
	return &dagFetcher{store: store, roomID: roomID, seen: make(map[string]*Event, 2*limit)}
}

func (f *dagFetcher) fetch(ctx context.Context, ids []string) ([]dag.Node, error) {
	events, err := f.store.Events(ctx, f.roomID, ids)
	if err != nil {
		return nil, err
	}
	nodes := make([]dag.Node, 0, len(events))
	for _, ev := range events {
		if ev == nil {
			continue // a misbehaving store; the walk treats the ID as unknown
		}
		if _, dup := f.seen[ev.ID]; dup {
			continue
		}
		f.seen[ev.ID] = ev
		nodes = append(nodes, dag.Node{
			ID: ev.ID, RoomID: ev.RoomID, Depth: ev.Depth, PrevEvents: ev.PrevEvents,
			Rejected: ev.Rejected, Outlier: ev.Outlier,
		})
	}
	return nodes, nil
}

// events maps the walk's result back to the stored events, in order.
func (f *dagFetcher) events(ids []string) []*Event {
	out := make([]*Event, 0, len(ids))
	for _, id := range ids {
		if ev, ok := f.seen[id]; ok {
			out = append(out, ev)
		}
	}
	return out
}
