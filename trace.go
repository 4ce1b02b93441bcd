package fedhistory

import (
	"context"
	"net/http"
	"time"
)

// Trace holds optional callbacks that let an operator see what the handler
// does: metrics (package fedhistory/prom) and traces (package
// fedhistory/otel) are built on it, and a homeserver can add its own
// (JoinTraces runs several). Like net/http/httptrace.ClientTrace, every
// field may be nil, and a nil field costs nothing. Callbacks run on the request's goroutine and must be safe
// for concurrent use; they must not keep RequestInfo's slices.
type Trace struct {
	// RequestStart is called when a request's route is known, before
	// authentication. The context it returns (derived from ctx) is the
	// request's from then on: the one the Authenticator, every store call
	// and every later callback see. OpenTelemetry starts a span here, and
	// reads the caller's trace context from r's headers.
	RequestStart func(ctx context.Context, r *http.Request, endpoint string) context.Context

	// RequestDone is called once per request that RequestStart saw, after
	// the answer is written (or the connection dropped).
	RequestDone func(ctx context.Context, info RequestInfo)

	// Stage is called when a stage of the pipeline starts ("authenticate",
	// "authorise", "walk", "lookup", "filter", "write"); the returned
	// function is called with the stage's error when it ends. The returned
	// context becomes the request's until the stage ends.
	Stage func(ctx context.Context, stage string) (context.Context, func(err error))

	// StoreCall is called when a call to the EventStore starts, with the
	// method's name ("Events", "Visibility", "WalkBackfill", …); the
	// returned function is called with its error when it returns. The
	// returned context is the one the store gets.
	StoreCall func(ctx context.Context, method string) (context.Context, func(err error))

	// Limit is called for every decision of the handler's load limits.
	Limit func(ctx context.Context, decision LimitDecision)
}

// RequestInfo is what RequestDone learns of a finished request.
type RequestInfo struct {
	// Endpoint is the route's name ("backfill", "state_ids", …).
	Endpoint string
	// Origin is the authenticated requesting server, or "" when
	// authentication failed. RoomID is the room asked about, once parsed.
	Origin, RoomID string
	// Status is the HTTP status written; ErrCode the Matrix errcode, ""
	// for a success. Aborted is true when a streamed answer was cut off.
	Status  int
	ErrCode string
	Aborted bool
	// Duration runs from the route being known to the answer being written.
	Duration time.Duration
	// Served, Redacted and Withheld count the events the filter served
	// whole, served redacted, and did not serve.
	Served, Redacted, Withheld int
	// WalkVisits is the number of event IDs the walk fetched, and
	// WalkExhausted whether it ran out of its visit budget (backfill and
	// get_missing_events only).
	WalkVisits    int
	WalkExhausted bool
	// Err is the cause of a failure the client was not told (a store
	// error, a panic), or nil.
	Err error
}

// LimitDecision is one decision of the handler's load limits.
type LimitDecision struct {
	// Limit is the limit deciding: "origin" (MaxConcurrentPerOrigin and
	// MaxQueuedPerOrigin) or "in_flight" (MaxInFlight).
	Limit string
	// Decision is "admitted", "queued" (the origin's slots are busy; the
	// request waits), or "rejected".
	Decision string
	// Reason says why a request was rejected: "queue_full", "busy" or
	// "deadline" (it waited in the queue until its deadline).
	Reason string
}

// stage runs the Stage callback around a stage, if there is one. It
// returns the function to call with the stage's error.
func (req *request) stage(name string) func(error) {
	trace := req.h.cfg.Trace
	if trace == nil || trace.Stage == nil {
		return func(error) {}
	}
	outer := req.ctx
	ctx, end := trace.Stage(outer, name)
	req.ctx = ctx
	return func(err error) {
		end(err)
		req.ctx = outer
	}
}

// limit reports a limiter's decision, if anyone listens.
func (req *request) limit(limit, decision, reason string) {
	if trace := req.h.cfg.Trace; trace != nil && trace.Limit != nil {
		trace.Limit(req.ctx, LimitDecision{Limit: limit, Decision: decision, Reason: reason})
	}
}

// JoinTraces returns a Trace that calls each of traces' callbacks in turn
// (metrics and tracing, say): in order when a request or a step starts,
// each given the context the one before returned, and in reverse order
// when it ends. Nil traces and nil fields are skipped; a field nil in every
// trace stays nil, and costs nothing.
func JoinTraces(traces ...*Trace) *Trace {
	var ts []*Trace
	for _, t := range traces {
		if t != nil {
			ts = append(ts, t)
		}
	}
	switch len(ts) {
	case 0:
		return nil
	case 1:
		return ts[0]
	}
	joined := &Trace{}
	var starts []func(context.Context, *http.Request, string) context.Context
	var dones []func(context.Context, RequestInfo)
	var stages, calls []func(context.Context, string) (context.Context, func(error))
	var limits []func(context.Context, LimitDecision)
	for _, t := range ts {
		if t.RequestStart != nil {
			starts = append(starts, t.RequestStart)
		}
		if t.RequestDone != nil {
			dones = append(dones, t.RequestDone)
		}
		if t.Stage != nil {
			stages = append(stages, t.Stage)
		}
		if t.StoreCall != nil {
			calls = append(calls, t.StoreCall)
		}
		if t.Limit != nil {
			limits = append(limits, t.Limit)
		}
	}
	if len(starts) > 0 {
		joined.RequestStart = func(ctx context.Context, r *http.Request, endpoint string) context.Context {
			for _, f := range starts {
				ctx = f(ctx, r, endpoint)
			}
			return ctx
		}
	}
	if len(dones) > 0 {
		joined.RequestDone = func(ctx context.Context, info RequestInfo) {
			for i := len(dones) - 1; i >= 0; i-- {
				dones[i](ctx, info)
			}
		}
	}
	joined.Stage = joinSteps(stages)
	joined.StoreCall = joinSteps(calls)
	if len(limits) > 0 {
		joined.Limit = func(ctx context.Context, d LimitDecision) {
			for _, f := range limits {
				f(ctx, d)
			}
		}
	}
	return joined
}

// joinSteps joins Stage or StoreCall callbacks.
func joinSteps(fs []func(context.Context, string) (context.Context, func(error))) func(context.Context, string) (context.Context, func(error)) {
	switch len(fs) {
	case 0:
		return nil
	case 1:
		return fs[0]
	}
	return func(ctx context.Context, name string) (context.Context, func(error)) {
		ends := make([]func(error), len(fs))
		for i, f := range fs {
			ctx, ends[i] = f(ctx, name)
		}
		return ctx, func(err error) {
			for i := len(ends) - 1; i >= 0; i-- {
				ends[i](err)
			}
		}
	}
}
