package main

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	oteltrace "go.opentelemetry.io/otel/trace"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/sign"
)

// keyDocumentPath is where a server publishes its signing keys (spec:
// server-server API, "Publishing Keys").
const keyDocumentPath = "/_matrix/key/v2/server"

// Timeouts and sizes of the HTTP servers this command runs. The header cap
// leaves room above fedhistory's own 16 KiB check, which answers with a
// proper Matrix error; net/http's cap only guards the parser.
const (
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 60 * time.Second
	idleTimeout       = 2 * time.Minute
	maxHeaderBytes    = 32 << 10
	// shutdownTimeout bounds the shutdown of the demo's and the debug
	// server's listeners; serve drains its own with --drain-timeout.
	shutdownTimeout = 10 * time.Second
)

// requestsInFlight counts the requests that the federation handlers of this
// process are serving: serve logs it when it shuts down, and the debug
// server publishes it.
var requestsInFlight atomic.Int64

// federationServerConfig describes one history-serving homeserver.
type federationServerConfig struct {
	ServerName string
	Key        *sign.SigningKey
	Store      fedhistory.EventStore
	StaticKeys map[string]map[string]ed25519.PublicKey
	Resolve    map[string]string
	MaxBackfill,
	MaxMissing int
	MaxConcurrentPerOrigin,
	MaxQueuedPerOrigin int
	Logger *slog.Logger
	// Trace, when set, feeds metrics and spans (serve --metrics-listen,
	// --otlp-endpoint). With LogTraceIDs, each request's log line carries
	// the trace ID of its span.
	Trace       *fedhistory.Trace
	LogTraceIDs bool
	// VerifierTrace, when set, is told of the verifier's key fetches.
	VerifierTrace *sign.VerifierTrace
}

// newFederationHandler returns the whole HTTP surface of a server: the
// history endpoints behind X-Matrix authentication, our key document, and a
// log line per request; and the history endpoints it serves, which depend
// on the capabilities of cfg.Store.
func newFederationHandler(cfg federationServerConfig) (http.Handler, []fedhistory.Endpoint, error) {
	verifier, err := sign.NewVerifier(sign.VerifierConfig{
		ServerNames: []string{cfg.ServerName},
		StaticKeys:  cfg.StaticKeys,
		Resolve:     cfg.Resolve,
		Logger:      cfg.Logger,
		Trace:       cfg.VerifierTrace,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("configuring request authentication: %w", err)
	}
	trace := cfg.Trace
	if cfg.LogTraceIDs {
		trace = fedhistory.JoinTraces(trace, &fedhistory.Trace{RequestStart: recordTraceID})
	}
	// One logger for the verifier and the handler: a request's failure,
	// whichever of them saw it, is one line of the same log.
	history, err := fedhistory.New(fedhistory.Config{
		ServerName:             cfg.ServerName,
		Store:                  cfg.Store,
		Authenticator:          originRecorder{inner: verifier},
		MaxBackfillLimit:       cfg.MaxBackfill,
		MaxMissingEvents:       cfg.MaxMissing,
		MaxConcurrentPerOrigin: cfg.MaxConcurrentPerOrigin,
		MaxQueuedPerOrigin:     cfg.MaxQueuedPerOrigin,
		Logger:                 cfg.Logger,
		Trace:                  trace,
	})
	if err != nil {
		return nil, nil, err
	}
	mux := http.NewServeMux()
	mux.Handle(keyDocumentPath, sign.KeyDocumentHandler(cfg.ServerName, []*sign.SigningKey{cfg.Key}, 0, nil))
	mux.Handle("/", history)
	return logRequests(cfg.Logger, mux), history.Endpoints(), nil
}

// endpointList shows endpoints on one line: "GET /…/backfill/{roomId},
// POST /…".
func endpointList(endpoints []fedhistory.Endpoint) string {
	parts := make([]string, len(endpoints))
	for i, e := range endpoints {
		parts[i] = e.Method + " " + e.Path
	}
	return strings.Join(parts, ", ")
}

// originSlot carries, up the handler chain, the origin that the
// Authenticator vouched for and the trace ID of the request's span: the
// request log line sits outside the handler, and contexts only flow
// downwards.
type originSlot struct{ origin, traceID string }

type originSlotKey struct{}

// originRecorder is an Authenticator that notes the authenticated origin in
// the request's originSlot before passing the request on.
type originRecorder struct{ inner fedhistory.Authenticator }

func (a originRecorder) Authenticate(r *http.Request) (string, error) {
	origin, err := a.inner.Authenticate(r)
	if err == nil {
		if slot, ok := r.Context().Value(originSlotKey{}).(*originSlot); ok {
			slot.origin = origin
		}
	}
	return origin, err
}

// recordTraceID is a Trace.RequestStart, run after the tracer's, that notes
// the trace ID of the request's span in its originSlot.
func recordTraceID(ctx context.Context, _ *http.Request, _ string) context.Context {
	if sc := oteltrace.SpanContextFromContext(ctx); sc.IsValid() {
		if slot, ok := ctx.Value(originSlotKey{}).(*originSlot); ok {
			slot.traceID = sc.TraceID().String()
		}
	}
	return ctx
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(status int) {
	if s.status == 0 {
		s.status = status
	}
	s.ResponseWriter.WriteHeader(status)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// logRequests logs one line per request: method, path, status, duration,
// the origin when the request was authenticated, and the trace ID when it
// was traced.
func logRequests(logger *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requestsInFlight.Add(1)
		defer requestsInFlight.Add(-1)
		start := time.Now()
		slot := &originSlot{}
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), originSlotKey{}, slot)))
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		attrs := []slog.Attr{
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", rec.status),
			slog.Duration("duration", time.Since(start)),
		}
		if slot.origin != "" {
			attrs = append(attrs, slog.String("origin", slot.origin))
		}
		if slot.traceID != "" {
			attrs = append(attrs, slog.String("trace_id", slot.traceID))
		}
		logger.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
	})
}

// newHTTPServer returns an http.Server with the timeouts and limits every
// server of this command uses.
func newHTTPServer(handler http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

// loopbackServer is an HTTP server on 127.0.0.1 with a free port, for the
// demo's servers.
type loopbackServer struct {
	URL    string // http://127.0.0.1:PORT
	server *http.Server
	done   chan error
}

func startLoopbackServer(handler http.Handler, logger *slog.Logger) (*loopbackServer, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening on a loopback port: %w", err)
	}
	s := &loopbackServer{
		URL:    "http://" + listener.Addr().String(),
		server: newHTTPServer(handler, logger),
		done:   make(chan error, 1),
	}
	go func() { s.done <- s.server.Serve(listener) }()
	return s, nil
}

// Close shuts the server down, waiting for requests in flight.
func (s *loopbackServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err := s.server.Shutdown(ctx)
	if serveErr := <-s.done; !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	return err
}
