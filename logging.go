package fedhistory

import (
	"context"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// failureLogInterval is how long a failure is logged once: during a
// database outage every request fails alike, and a line per request would
// make the log a second outage (2,803 identical lines in 30 s, measured).
const failureLogInterval = 10 * time.Second

// maxFailureKinds bounds the distinct failures counted at once; beyond it,
// failures are counted under one shared kind.
const maxFailureKinds = 256

// failureLog writes one line per distinct failure per interval: the first
// occurrence at once, with its cause, and at the end of the interval one
// line with the number of further occurrences, if any.
type failureLog struct {
	logger   *slog.Logger
	interval time.Duration
	// afterFunc is time.AfterFunc; tests end intervals themselves.
	afterFunc func(time.Duration, func()) *time.Timer

	mu     sync.Mutex
	counts map[failureKind]int
}

// failureKind is what makes failures "the same": the endpoint, the status,
// and the innermost cause (a connection refused, a query timeout), not the
// room or event named around it.
type failureKind struct {
	endpoint string
	status   int
	cause    string
}

func newFailureLog(logger *slog.Logger) *failureLog {
	return &failureLog{logger: logger, interval: failureLogInterval, afterFunc: time.AfterFunc, counts: make(map[failureKind]int)}
}

// logFailure logs a request that failed without the client being told why:
// a store error (500) at Error, a cancelled or timed-out request (503) at
// Info. Fields are the request's, never event content or signatures.
func (h *Handler) logFailure(req *request) {
	level := slog.LevelError
	if req.status != http.StatusInternalServerError {
		level = slog.LevelInfo
	}
	kind := failureKind{endpoint: req.endpoint, status: req.status, cause: innermost(req.cause).Error()}
	l := h.failures
	l.mu.Lock()
	n, seen := l.counts[kind]
	switch {
	case seen:
		l.counts[kind] = n + 1
		l.mu.Unlock()
		return
	case len(l.counts) >= maxFailureKinds:
		kind = failureKind{cause: "(failures of other kinds)"}
		if _, ok := l.counts[kind]; ok {
			l.counts[kind]++
			l.mu.Unlock()
			return
		}
	}
	l.counts[kind] = 0
	l.mu.Unlock()
	l.afterFunc(l.interval, func() { l.summarise(kind, level) })

	l.logger.LogAttrs(req.ctx, level, "fedhistory: request failed",
		slog.String("endpoint", req.endpoint), slog.String("origin", req.origin),
		slog.String("room_id", req.roomID), slog.Int("status", req.status),
		slog.Duration("duration", time.Since(req.start)), slog.String("error", req.cause.Error()))
}

// summarise ends kind's interval, logging how often it recurred.
func (l *failureLog) summarise(kind failureKind, level slog.Level) {
	l.mu.Lock()
	n := l.counts[kind]
	delete(l.counts, kind)
	l.mu.Unlock()
	if n > 0 {
		l.logger.LogAttrs(context.Background(), level, "fedhistory: the same failure recurred",
			slog.String("endpoint", kind.endpoint), slog.Int("status", kind.status),
			slog.String("error", kind.cause), slog.Int("count", n),
			slog.Duration("interval", l.interval))
	}
}

// innermost returns the error at the bottom of err's chain (the first
// branch of a joined error).
func innermost(err error) error {
	for {
		var next error
		switch e := err.(type) {
		case interface{ Unwrap() error }:
			next = e.Unwrap()
		case interface{ Unwrap() []error }:
			if errs := e.Unwrap(); len(errs) > 0 {
				next = errs[0]
			}
		}
		if next == nil {
			return err
		}
		err = next
	}
}
