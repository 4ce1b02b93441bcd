package fedhistory

import (
	"encoding/json"
	"net/http"
	"strconv"
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
