// Package fedotel traces what a fedhistory handler does with OpenTelemetry:
// one span per request, continuing the trace of the server that asked, and
// under it a span per stage and per store call; and a span per request
// the verifier makes to a key server. Wiring it:
//
//	tracer := fedotel.New(fedotel.Options{}) // the global TracerProvider and propagator
//	cfg.Trace = tracer.Trace()               // cfg is the fedhistory.Config
//	verifierCfg.Trace = tracer.SignTrace()   // and the sign.VerifierConfig
//
// with, once, otel.SetTracerProvider(yours) and
// otel.SetTextMapPropagator(propagation.TraceContext{}): OpenTelemetry's
// global propagator reads no headers until one is set. Alongside package
// prom's metrics: cfg.Trace = fedhistory.JoinTraces(metrics.Trace(),
// tracer.Trace()), and a sign.VerifierTrace whose KeyFetch calls both
// adapters' (as fedhistory serve does).
//
// Its import path is github.com/fedhistory/fedhistory/otel; it is named
// fedotel so that it does not shadow go.opentelemetry.io/otel, which a
// program that uses it imports too. Importing fedhistory does not import
// OpenTelemetry: only this package does.
//
// # Spans
//
// A request's span is named after its method and route, as OpenTelemetry's
// HTTP conventions ask ("GET /_matrix/federation/v1/backfill/{roomId}").
// Its parent is, in this order: a span already in the request's context (a
// homeserver that traces its HTTP server with otelhttp; the request's span
// is then of kind internal); or the trace context the asking server sent
// in the request's headers (traceparent, read with Options.Propagator); or
// none, a new trace. Under it:
//
//	authenticate, authorise, walk, lookup, filter   one span per stage of the request
//	store.<Method>                                  one per EventStore call ("store.Events"), under its stage
//
// Attributes: on the request's span http.request.method, http.route,
// fedhistory.endpoint, http.response.status_code, matrix.errcode (for an
// error answer), matrix.origin (the authenticated requesting server),
// fedhistory.events.whole, .redacted and .withheld, fedhistory.walk.visits
// and fedhistory.walk.exhausted. A stage or store call that failed has
// status Error and an error.type from a fixed set ("forbidden",
// "not_found", "state_unknown", "timeout", "canceled", "unauthenticated",
// "key_server_unreachable", "key_fetch_limit", "_OTHER"); the request's
// span has them only for a 5xx answer or one cut off, since a 4xx is the
// client's doing (OpenTelemetry's HTTP conventions). A load limit queueing or rejecting
// the request is an event, fedhistory.limit, on the request's span.
//
// The verifier's requests to key servers are spans named keys.fetch, of
// kind client, with matrix.key.server (the server whose keys) and
// matrix.key.source ("direct", "notary", or a KeyFetcher's name). Each is
// the root of a trace of its own: one fetch serves every request that
// waits for those keys, and the verifier reports it without a context. A
// key found pinned or cached makes no span.
//
// No span carries what a peer chose beyond its server name: not the room or
// event IDs it asked for, not error messages (which may quote them), and
// never event content or signatures. The handler's log lines, which
// LogHandler marks with the trace and span IDs, carry the details an
// operator needs to follow one request.
package fedotel

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/sign"
)

// ScopeName is the instrumentation scope of the spans.
const ScopeName = "github.com/fedhistory/fedhistory/otel"

// Options configure New. The zero value uses OpenTelemetry's globals.
type Options struct {
	// TracerProvider creates the tracer. Default otel.GetTracerProvider(),
	// which follows a later otel.SetTracerProvider.
	TracerProvider trace.TracerProvider
	// Propagator reads the asking server's trace context from the
	// request's headers. Default otel.GetTextMapPropagator(), which
	// follows a later otel.SetTextMapPropagator (and propagates nothing
	// until one is set: set propagation.TraceContext{} to honour
	// traceparent).
	Propagator propagation.TextMapPropagator
}

// Tracer turns a handler's Trace callbacks into spans. It is safe for
// concurrent use.
type Tracer struct {
	tracer     trace.Tracer
	propagator propagation.TextMapPropagator
	trace      *fedhistory.Trace
	signTrace  *sign.VerifierTrace
}

// New returns a Tracer.
func New(opts Options) *Tracer {
	if opts.TracerProvider == nil {
		opts.TracerProvider = otel.GetTracerProvider()
	}
	if opts.Propagator == nil {
		opts.Propagator = otel.GetTextMapPropagator()
	}
	t := &Tracer{
		tracer:     opts.TracerProvider.Tracer(ScopeName),
		propagator: opts.Propagator,
	}
	t.trace = &fedhistory.Trace{
		RequestStart: t.requestStart,
		RequestDone:  t.requestDone,
		Stage:        t.stage,
		StoreCall:    t.storeCall,
		Limit:        t.limit,
	}
	t.signTrace = &sign.VerifierTrace{KeyFetch: t.keyFetch}
	return t
}

// Trace returns the callbacks that make the spans, for
// fedhistory.Config.Trace. Every call returns the same Trace.
func (t *Tracer) Trace() *fedhistory.Trace { return t.trace }

// SignTrace returns the callbacks that make a span of each request the
// verifier makes to a key server, for sign.VerifierConfig.Trace (see the
// package documentation). Every call returns the same VerifierTrace.
func (t *Tracer) SignTrace() *sign.VerifierTrace { return t.signTrace }

// keyFetch makes the span of a request to a key server, which the verifier
// reports once it is over: the span starts duration before now. A key
// found pinned or cached, in memory, gets no span.
func (t *Tracer) keyFetch(server, source string, duration time.Duration, err error) {
	if source == "pinned" || source == "cache" {
		return
	}
	end := time.Now()
	_, span := t.tracer.Start(context.Background(), "keys.fetch",
		trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(end.Add(-duration)),
		trace.WithAttributes(keyKeyServer.String(server), keyKeySource.String(source)))
	if err != nil {
		kind := errorType(err)
		span.SetAttributes(keyErrorType.String(kind))
		span.SetStatus(codes.Error, kind)
	}
	span.End(trace.WithTimestamp(end))
}

// Attribute keys of the spans.
const (
	keyMethod    = attribute.Key("http.request.method")
	keyRoute     = attribute.Key("http.route")
	keyStatus    = attribute.Key("http.response.status_code")
	keyErrorType = attribute.Key("error.type")
	keyEndpoint  = attribute.Key("fedhistory.endpoint")
	keyErrCode   = attribute.Key("matrix.errcode")
	keyOrigin    = attribute.Key("matrix.origin")
	keyWhole     = attribute.Key("fedhistory.events.whole")
	keyRedacted  = attribute.Key("fedhistory.events.redacted")
	keyWithheld  = attribute.Key("fedhistory.events.withheld")
	keyVisits    = attribute.Key("fedhistory.walk.visits")
	keyExhausted = attribute.Key("fedhistory.walk.exhausted")
	keyAborted   = attribute.Key("fedhistory.aborted")
	keyLimit     = attribute.Key("fedhistory.limit")
	keyDecision  = attribute.Key("fedhistory.limit.decision")
	keyReason    = attribute.Key("fedhistory.limit.reason")
	keyStoreCall = attribute.Key("fedhistory.store.method")
	keyKeyServer = attribute.Key("matrix.key.server")
	keyKeySource = attribute.Key("matrix.key.source")
)

// routes are the endpoints' routes, for span names (Handler.Endpoints).
var routes = map[string]string{
	"backfill":           fedhistory.Prefix + "/backfill/{roomId}",
	"get_missing_events": fedhistory.Prefix + "/get_missing_events/{roomId}",
	"state_ids":          fedhistory.Prefix + "/state_ids/{roomId}",
	"state":              fedhistory.Prefix + "/state/{roomId}",
	"event_auth":         fedhistory.Prefix + "/event_auth/{roomId}/{eventId}",
	"event":              fedhistory.Prefix + "/event/{eventId}",
	"timestamp_to_event": fedhistory.Prefix + "/timestamp_to_event/{roomId}",
}

func route(endpoint string) string {
	if r, ok := routes[endpoint]; ok {
		return r
	}
	return fedhistory.Prefix + "/" + endpoint
}

func (t *Tracer) requestStart(ctx context.Context, r *http.Request, endpoint string) context.Context {
	kind := trace.SpanKindServer
	if parent := trace.SpanContextFromContext(ctx); parent.IsValid() && !parent.IsRemote() {
		// A span of the homeserver's own, which already honoured the
		// caller's headers.
		kind = trace.SpanKindInternal
	} else if !parent.IsValid() && r != nil {
		ctx = t.propagator.Extract(ctx, propagation.HeaderCarrier(r.Header))
	}
	method := http.MethodGet
	if r != nil {
		method = r.Method
	}
	ctx, _ = t.tracer.Start(ctx, method+" "+route(endpoint), trace.WithSpanKind(kind), trace.WithAttributes(
		keyMethod.String(method), keyRoute.String(route(endpoint)), keyEndpoint.String(endpoint)))
	return ctx
}

func (t *Tracer) requestDone(ctx context.Context, info fedhistory.RequestInfo) {
	span := trace.SpanFromContext(ctx)
	if span.IsRecording() {
		attrs := make([]attribute.KeyValue, 0, 10)
		if info.Status != 0 {
			attrs = append(attrs, keyStatus.Int(info.Status))
		}
		if info.ErrCode != "" {
			attrs = append(attrs, keyErrCode.String(info.ErrCode))
		}
		if info.Origin != "" {
			attrs = append(attrs, keyOrigin.String(info.Origin))
		}
		if info.Served+info.Redacted+info.Withheld > 0 {
			attrs = append(attrs, keyWhole.Int(info.Served), keyRedacted.Int(info.Redacted), keyWithheld.Int(info.Withheld))
		}
		if info.WalkVisits > 0 || info.WalkExhausted {
			attrs = append(attrs, keyVisits.Int(info.WalkVisits), keyExhausted.Bool(info.WalkExhausted))
		}
		if info.Aborted {
			attrs = append(attrs, keyAborted.Bool(true))
		}
		span.SetAttributes(attrs...)
		// A server span is an error for a 5xx only: a 4xx is the
		// client's (OpenTelemetry's HTTP conventions).
		if info.Status >= 500 || info.Aborted || (info.Status == 0 && info.Err != nil) {
			kind := errorType(info.Err)
			if info.Err == nil {
				kind = "_OTHER"
			}
			span.SetAttributes(keyErrorType.String(kind))
			span.SetStatus(codes.Error, kind)
		}
	}
	span.End()
}

func (t *Tracer) stage(ctx context.Context, stage string) (context.Context, func(error)) {
	ctx, span := t.tracer.Start(ctx, stage)
	return ctx, func(err error) { end(span, err) }
}

func (t *Tracer) storeCall(ctx context.Context, method string) (context.Context, func(error)) {
	ctx, span := t.tracer.Start(ctx, "store."+method, trace.WithAttributes(keyStoreCall.String(method)))
	return ctx, func(err error) {
		// A not-found answer is an answer, not a failure of the store.
		if errors.Is(err, fedhistory.ErrEventNotFound) || errors.Is(err, fedhistory.ErrRoomNotFound) ||
			errors.Is(err, fedhistory.ErrStateUnknown) {
			err = nil
		}
		end(span, err)
	}
}

// end ends a span, marking it failed with err's type, never its text.
func end(span trace.Span, err error) {
	if err != nil {
		kind := errorType(err)
		span.SetAttributes(keyErrorType.String(kind))
		span.SetStatus(codes.Error, kind)
	}
	span.End()
}

func (t *Tracer) limit(ctx context.Context, d fedhistory.LimitDecision) {
	if d.Decision == "admitted" {
		return // what happens to nearly every request: not worth an event
	}
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	attrs := []attribute.KeyValue{keyLimit.String(d.Limit), keyDecision.String(d.Decision)}
	if d.Reason != "" {
		attrs = append(attrs, keyReason.String(d.Reason))
	}
	span.AddEvent("fedhistory.limit", trace.WithAttributes(attrs...))
}

// errorType classifies an error into a fixed set of values for error.type:
// the text of an error may quote what a peer sent.
func errorType(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, fedhistory.ErrForbidden):
		return "forbidden"
	case errors.Is(err, fedhistory.ErrEventNotFound), errors.Is(err, fedhistory.ErrRoomNotFound):
		return "not_found"
	case errors.Is(err, fedhistory.ErrStateUnknown):
		return "state_unknown"
	case errors.Is(err, sign.ErrKeyServerUnreachable):
		return "key_server_unreachable"
	case errors.Is(err, sign.ErrTooManyPendingKeyFetches):
		return "key_fetch_limit"
	case errors.Is(err, sign.ErrMissingAuthorization), errors.Is(err, sign.ErrMalformedAuthorization),
		errors.Is(err, sign.ErrNotXMatrix), errors.Is(err, sign.ErrWrongDestination),
		errors.Is(err, sign.ErrUnknownKey), errors.Is(err, sign.ErrBadSignature):
		return "unauthenticated"
	}
	return "_OTHER"
}

// LogHandler wraps h so that every record logged with a context holding a
// span carries its trace_id and span_id: pass the wrapped handler's logger
// as fedhistory.Config.Logger (and sign.VerifierConfig.Logger), and each
// failed request's log line leads to its trace.
func LogHandler(h slog.Handler) slog.Handler { return logHandler{h} }

type logHandler struct{ slog.Handler }

func (h logHandler) Handle(ctx context.Context, r slog.Record) error {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		r = r.Clone()
		r.AddAttrs(slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String()))
	}
	return h.Handler.Handle(ctx, r)
}

func (h logHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return logHandler{h.Handler.WithAttrs(attrs)}
}

func (h logHandler) WithGroup(name string) slog.Handler {
	return logHandler{h.Handler.WithGroup(name)}
}
