package fedhistory

import (
	"encoding/json"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"

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
