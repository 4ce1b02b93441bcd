package fedhistory

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/fedhistory/fedhistory/internal/matrixerr"
	"github.com/fedhistory/fedhistory/sign"
)

// request is one request on its way through the pipeline every endpoint
// shares: the endpoint functions (backfill.go, missing.go, …) call its
// steps in order, and it remembers what happened for the log line.
type request struct {
	h        *Handler
	w        http.ResponseWriter
	r        *http.Request
	ctx      context.Context
	endpoint string
	start    time.Time

	// origin is the server Authenticate vouched for; "" until then.
	origin string
	// roomID is the room asked about, once parsed (for the log).
	roomID string
	// releases undo the admission steps, in reverse order.
	releases []func()

	// status and errcode are what was written (errcode "" for a 200);
	// cause is why a request failed without the client being told, for
	// the log line and Trace; aborted marks a streamed answer cut off.
	status  int
	errcode string
	cause   error
	aborted bool

	// What the filter and the walk did, for Trace.
	served, redacted, withheld int
	walkVisits                 int
	walkExhausted              bool
}

// serve runs one request of rt: the guards every request passes before
// its endpoint sees it (panic recovery, the header cap, the deadline), then
// the endpoint's own pipeline, which starts with req.authenticate.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, rt *route, params []string) {
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.RequestTimeout)
	defer cancel()
	if trace := h.cfg.Trace; trace != nil && trace.RequestStart != nil {
		ctx = trace.RequestStart(ctx, r, rt.name)
	}
	req := &request{h: h, w: w, r: r.WithContext(ctx), ctx: ctx, endpoint: rt.name, start: time.Now()}
	defer req.finish()
	if size := headerSize(r); size > h.cfg.MaxHeaderBytes {
		req.writeError(http.StatusRequestHeaderFieldsTooLarge, matrixerr.TooLarge,
			"request headers are larger than "+strconv.Itoa(h.cfg.MaxHeaderBytes)+" bytes")
		return
	}
	rt.serve(req, params)
}

// headerSize is the size of the request URI plus every header name and value.
func headerSize(r *http.Request) int {
	size := len(r.RequestURI)
	for name, values := range r.Header {
		size += len(name)
		for _, v := range values {
			size += len(v)
		}
	}
	return size
}

// finish releases what the request holds, turns a panic below it (in a
// store, say) into a 500 and a logged stack, so that one bad request cannot
// take the process down, logs a failed request once, and tells Trace. It
// must be deferred directly (it calls recover).
func (req *request) finish() {
	p := recover()
	for i := len(req.releases) - 1; i >= 0; i-- {
		req.releases[i]()
	}
	switch {
	case p == http.ErrAbortHandler:
		req.aborted = true
	case p != nil:
		req.cause = fmt.Errorf("panic: %v", p)
		req.h.cfg.Logger.LogAttrs(req.ctx, slog.LevelError, "fedhistory: panic serving request",
			slog.String("endpoint", req.endpoint), slog.String("origin", req.origin),
			slog.Any("panic", p), slog.String("stack", string(debug.Stack())))
		if req.status == 0 {
			req.writeError(http.StatusInternalServerError, matrixerr.Unknown, "internal server error")
		} else {
			// A streamed answer was under way: drop the connection rather
			// than end it short.
			req.aborted, p = true, http.ErrAbortHandler
		}
	case req.cause != nil:
		req.h.logFailure(req)
	}
	if trace := req.h.cfg.Trace; trace != nil && trace.RequestDone != nil {
		trace.RequestDone(req.ctx, RequestInfo{
			Endpoint: req.endpoint, Origin: req.origin, RoomID: req.roomID,
			Status: req.status, ErrCode: req.errcode, Aborted: req.aborted,
			Duration: time.Since(req.start),
			Served:   req.served, Redacted: req.redacted, Withheld: req.withheld,
			WalkVisits: req.walkVisits, WalkExhausted: req.walkExhausted,
			Err: req.cause,
		})
	}
	if p == http.ErrAbortHandler {
		panic(p)
	}
}

// authenticate is every endpoint's first step: it authenticates the
// request (reading its body, bounded in size and time) and records the
// origin; admit, after parsing, takes the limits' slots. When it returns
// false it has answered.
func (req *request) authenticate() bool {
	h, r := req.h, req.r
	if r.Body != nil && r.Body != http.NoBody {
		r.Body = http.MaxBytesReader(req.w, r.Body, h.cfg.MaxRequestBodyBytes)
		// A body trickled in a byte at a time must not outlive the
		// request's deadline: the read fails there. Not every
		// ResponseWriter can (httptest's cannot); those rely on the
		// server's own timeouts.
		// The deadline stays set after the request: net/http reads what
		// is left of an unread body before it answers (unless the
		// connection is to close), and sets the connection's deadlines
		// afresh for the next request.
		if deadline, ok := req.ctx.Deadline(); ok {
			_ = http.NewResponseController(req.w).SetReadDeadline(deadline)
		}
	}
	end := req.stage("authenticate")
	// The Authenticator leaves the body readable again on the request it
	// is given, which must therefore be the one the endpoint reads.
	req.r = r.WithContext(req.ctx)
	origin, err := h.cfg.Authenticator.Authenticate(req.r)
	end(err)
	if err != nil {
		if r.ContentLength != 0 {
			// Answer at once and close, rather than let net/http read a
			// body nobody will use from a peer that did not authenticate
			// (it could trickle it until the deadline).
			req.w.Header().Set("Connection", "close")
		}
		req.writeAuthError(err)
		return false
	}
	if origin == "" {
		// An Authenticator that accepts without naming anyone: fail closed.
		req.writeError(http.StatusUnauthorized, matrixerr.Unauthorized, "request is not authenticated")
		return false
	}
	req.origin = origin
	return true
}

// admit takes the origin's concurrency slot (queueing for it) and one of
// the in-flight slots, held until the request ends, or answers 429 (or the
// timeout, when the deadline passes in the queue). Endpoints call it once
// the request has parsed, before the first store call: the slots protect
// the store, and a malformed request is answered 400 however busy its
// origin is.
func (req *request) admit() bool {
	h, origin := req.h, req.origin
	release, queued, err := h.perOrigin.acquire(req.ctx, origin)
	if queued {
		req.limit("origin", "queued", "")
	}
	switch {
	case errors.Is(err, errOriginBusy):
		req.limit("origin", "rejected", "queue_full")
		req.writeRetry("too many concurrent requests from " + origin)
		return false
	case err != nil:
		req.limit("origin", "rejected", "deadline")
		req.fail(err) // the deadline passed while queued: a timeout
		return false
	}
	req.limit("origin", "admitted", "")
	req.releases = append(req.releases, release)
	if !h.inFlight.tryAcquire() {
		req.limit("in_flight", "rejected", "busy")
		req.writeRetry(errServerBusy.Error())
		return false
	}
	req.limit("in_flight", "admitted", "")
	req.releases = append(req.releases, h.inFlight.release)
	return true
}

// writeAuthError answers a failed authentication: 401 M_UNAUTHORIZED naming
// the failed check, or what the body's or the limits' failure calls for
// (429 for the verifier's limit on requests waiting for key fetches).
func (req *request) writeAuthError(err error) {
	var tooLarge *http.MaxBytesError
	switch {
	case errors.As(err, &tooLarge):
		req.writeError(http.StatusRequestEntityTooLarge, matrixerr.TooLarge,
			"request body is larger than "+strconv.FormatInt(tooLarge.Limit, 10)+" bytes")
	case errors.Is(err, sign.ErrNotJSON):
		req.writeError(http.StatusBadRequest, matrixerr.NotJSON, "request body is not JSON")
	case errors.Is(err, sign.ErrBadJSON):
		req.writeError(http.StatusBadRequest, matrixerr.BadJSON, "request body is not a JSON object")
	case req.ctx.Err() != nil:
		req.fail(req.ctx.Err())
	case errors.Is(err, sign.ErrBodyRead):
		req.writeError(http.StatusBadRequest, matrixerr.Unknown, "could not read request body")
	case errors.Is(err, sign.ErrKeyServerUnreachable):
		// The details (addresses, dial errors) stay in the verifier's log:
		// echoing them would let a peer probe our network through origin
		// names.
		req.writeError(http.StatusUnauthorized, matrixerr.Unauthorized, sign.ErrKeyServerUnreachable.Error())
	case errors.Is(err, sign.ErrTooManyPendingKeyFetches):
		// Too many requests wait for key fetches: the peer may retry.
		req.writeRetry(sign.ErrTooManyPendingKeyFetches.Error())
	default:
		req.writeError(http.StatusUnauthorized, matrixerr.Unauthorized, err.Error())
	}
}

// fail answers an error of authorisation, of a lookup, or of the store.
// Only ErrForbidden and the not-found errors reach the client as such; a
// store error is a 500 whose body carries no internal detail (the log line
// does).
func (req *request) fail(err error) {
	switch {
	case errors.Is(err, ErrForbidden):
		req.writeError(http.StatusForbidden, matrixerr.Forbidden, forbiddenReason(err))
	case errors.Is(err, ErrEventNotFound), errors.Is(err, ErrStateUnknown):
		req.writeError(http.StatusNotFound, matrixerr.NotFound, notFoundMessage(err))
	case req.ctx.Err() != nil:
		// The client went away, the deadline passed, or the server is
		// shutting down (a cancelled base context).
		req.cause = err
		req.writeError(http.StatusServiceUnavailable, matrixerr.Unknown, "request timed out or was cancelled")
	default:
		req.cause = err
		req.writeError(http.StatusInternalServerError, matrixerr.Unknown, "internal server error")
	}
}

// notFoundMessage is the client-facing text of a not-found error.
func notFoundMessage(err error) string {
	if errors.Is(err, ErrStateUnknown) {
		return "the state at that event is not known here"
	}
	return "event not found"
}

// paramError is a 4xx answer to a request that could not be parsed.
type paramError struct {
	errcode string
	message string
}

func (req *request) writeParamError(e *paramError) {
	status := http.StatusBadRequest
	if e.errcode == matrixerr.TooLarge {
		status = http.StatusRequestEntityTooLarge
	}
	req.writeError(status, e.errcode, e.message)
}

func (req *request) writeError(status int, errcode, message string) {
	req.status, req.errcode = status, errcode
	matrixerr.Write(req.w, status, errcode, message)
}

func (req *request) writeRetry(message string) {
	req.status, req.errcode = http.StatusTooManyRequests, matrixerr.LimitExceeded
	matrixerr.WriteRetry(req.w, message, retryAfter.Milliseconds())
}

// writeOK sends a 200 with a JSON body. Only an authenticated request gets
// one: an endpoint that forgot to authenticate fails here, closed.
func (req *request) writeOK(body []byte) {
	if req.origin == "" {
		panic("fedhistory: an endpoint answered 200 without authenticating the request")
	}
	req.status = http.StatusOK
	writeJSON(req.w, body)
}
