package fedhistory

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// The responses are assembled from stored bytes: the PDUs are valid JSON
// already, and re-encoding them would cost several times what the rest of a
// request does.

// appendTransaction appends a transaction, {"origin":…,"origin_server_ts":…,
// "pdus":[…]}, the form of backfill's and /event's answers.
func appendTransaction(buf []byte, origin string, now time.Time, pdus []json.RawMessage) []byte {
	name, _ := json.Marshal(origin) // a string always encodes
	buf = append(buf, `{"origin":`...)
	buf = append(buf, name...)
	buf = append(buf, `,"origin_server_ts":`...)
	buf = strconv.AppendInt(buf, now.UnixMilli(), 10)
	return appendObject(buf, `,"pdus":`, pdus)
}

// appendObject appends head (an object's opening up to the key of a PDU
// array), the PDUs as an array, and the closing brace, sizing buf once.
func appendObject(buf []byte, head string, pdus []json.RawMessage) []byte {
	size := len(buf) + len(head) + 3 + len(pdus)
	for _, pdu := range pdus {
		size += len(pdu)
	}
	if cap(buf) < size {
		buf = append(make([]byte, 0, size), buf...)
	}
	buf = append(buf, head...)
	buf = appendJSONArray(buf, pdus)
	return append(buf, '}')
}

// appendJSONArray appends the PDUs as a JSON array, bytes untouched.
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

// responseBuffers recycles the buffers answers are assembled in. A backfill
// answer is about limit times the event size (100 KiB for 1 KiB events), and
// allocating it afresh per request costs more in zeroing and garbage
// collection than the copy into it: BenchmarkBackfillHandler takes 33% more
// time (115 against 86 µs, benchstat n=8) and 85% more B/op without it.
var responseBuffers = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledResponseBytes bounds the buffers kept for reuse, so that one huge
// answer does not pin its memory for ever.
const maxPooledResponseBytes = 4 << 20

// writeBuilt writes the 200 answer build appends to a recycled buffer.
// net/http's Write does not keep the buffer (io.Writer's contract), so it can
// be reused as soon as Write returns.
func (req *request) writeBuilt(build func(buf []byte) []byte) {
	pooled := responseBuffers.Get().(*[]byte)
	body := build((*pooled)[:0])
	req.writeOK(body)
	if cap(body) <= maxPooledResponseBytes {
		*pooled = body[:0]
		responseBuffers.Put(pooled)
	}
}
