// Package matrixerr writes errors in the Matrix spec's standard error form,
// {"errcode": "M_…", "error": "…"}, shared by the handler and sign/.
package matrixerr

import (
	"encoding/json"
	"net/http"
	"strconv"
)

// Standard error codes used by fedhistory (spec: "Standard error response").
const (
	Forbidden     = "M_FORBIDDEN"
	Unauthorized  = "M_UNAUTHORIZED"
	NotJSON       = "M_NOT_JSON"
	BadJSON       = "M_BAD_JSON"
	MissingParam  = "M_MISSING_PARAM"
	InvalidParam  = "M_INVALID_PARAM"
	TooLarge      = "M_TOO_LARGE"
	Unrecognized  = "M_UNRECOGNIZED"
	Unknown       = "M_UNKNOWN"
	LimitExceeded = "M_LIMIT_EXCEEDED"
	NotFound      = "M_NOT_FOUND"
)

type body struct {
	ErrCode      string `json:"errcode"`
	Error        string `json:"error"`
	RetryAfterMS int64  `json:"retry_after_ms,omitempty"`
}

// Write sends status with a {"errcode","error"} body.
func Write(w http.ResponseWriter, status int, errcode, message string) {
	write(w, status, body{ErrCode: errcode, Error: message})
}

// WriteRetry sends 429 M_LIMIT_EXCEEDED with retry_after_ms and a
// Retry-After header (whole seconds, rounded up).
func WriteRetry(w http.ResponseWriter, message string, retryAfterMS int64) {
	secs := (retryAfterMS + 999) / 1000
	if secs < 1 {
		secs = 1
	}
	w.Header().Set("Retry-After", strconv.FormatInt(secs, 10))
	write(w, http.StatusTooManyRequests, body{ErrCode: LimitExceeded, Error: message, RetryAfterMS: retryAfterMS})
}

func write(w http.ResponseWriter, status int, b body) {
	out, _ := json.Marshal(b) // cannot fail: only strings and an integer
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(out)))
	w.WriteHeader(status)
	_, _ = w.Write(out)
}
