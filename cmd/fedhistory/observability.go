package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	fedotel "github.com/fedhistory/fedhistory/otel"
	"github.com/fedhistory/fedhistory/prom"
	"github.com/fedhistory/fedhistory/sign"
)

// metricsPath is where --metrics-listen serves the metrics.
const metricsPath = "/metrics"

// newMetrics returns a registry holding fedhistory's metrics (package prom)
// and the Go runtime's and the process's, and the metrics to feed.
func newMetrics() (*prometheus.Registry, *prom.Metrics, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
	)
	metrics, err := prom.New(reg, prom.Options{})
	if err != nil {
		return nil, nil, err
	}
	return reg, metrics, nil
}

// startMetricsServer serves reg's metrics at metricsPath on addr, a
// listener of its own (like --debug-addr): Prometheus scrapes it, other
// servers need never reach it.
func startMetricsServer(addr string, reg *prometheus.Registry, logger *slog.Logger) (*loopbackServer, error) {
	mux := http.NewServeMux()
	mux.Handle(metricsPath, promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		Registry: reg,
	})))
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen: listening on %s: %w", addr, err)
	}
	s := &loopbackServer{
		URL:    "http://" + listener.Addr().String(),
		server: newHTTPServer(mux, logger),
		done:   make(chan error, 1),
	}
	go func() { s.done <- s.server.Serve(listener) }()
	return s, nil
}

// The environment variables that, as for any OpenTelemetry SDK, turn the
// trace export on without --otlp-endpoint.
const (
	otlpEndpointEnv       = "OTEL_EXPORTER_OTLP_ENDPOINT"
	otlpTracesEndpointEnv = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
)

// tracesPath is the OTLP/HTTP path of traces under a collector's base URL.
const tracesPath = "/v1/traces"

// checkOTLPEndpoint checks the value of --otlp-endpoint and returns the URL
// to send traces to: the URL as given when it has a path, else tracesPath
// under it, as OTEL_EXPORTER_OTLP_ENDPOINT does.
func checkOTLPEndpoint(value string) (string, error) {
	u, err := url.Parse(value)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", usageErrorf("--otlp-endpoint %q: want an http:// or https:// URL, such as http://127.0.0.1:4318", value)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = tracesPath
	}
	return u.String(), nil
}

// tracing is serve's OpenTelemetry pipeline: spans batched to an OTLP/HTTP
// collector.
type tracing struct {
	provider *sdktrace.TracerProvider
	tracer   *fedotel.Tracer
	// target says where the spans go, for the log.
	target string
}

// startTracing starts exporting spans to endpoint (a URL checked by
// checkOTLPEndpoint), or to where the OTEL_EXPORTER_OTLP_* variables say
// when endpoint is empty. It returns nil when neither asks for traces. The
// exporter reads the other OTEL_EXPORTER_OTLP_* variables (headers,
// timeout, certificates, compression) itself; the resource names the
// service "fedhistory" unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES
// say otherwise.
func startTracing(ctx context.Context, endpoint string) (*tracing, error) {
	var opts []otlptracehttp.Option
	target := endpoint
	switch {
	case endpoint != "":
		opts = append(opts, otlptracehttp.WithEndpointURL(endpoint))
	case os.Getenv(otlpTracesEndpointEnv) != "":
		target = os.Getenv(otlpTracesEndpointEnv)
	case os.Getenv(otlpEndpointEnv) != "":
		target = os.Getenv(otlpEndpointEnv) + " (" + tracesPath + ")"
	default:
		return nil, nil
	}
	exporter, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("--otlp-endpoint: %w", err)
	}
	version := "devel"
	if info, ok := debug.ReadBuildInfo(); ok {
		version = versionString(info)
	}
	res, err := resource.Merge(
		resource.NewSchemaless(attribute.String("service.name", "fedhistory"), attribute.String("service.version", version)),
		resource.Environment(),
	)
	if err != nil {
		return nil, fmt.Errorf("describing the traces' resource: %w", err)
	}
	provider := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	// W3C Trace Context: the traceparent a peer sends continues its trace.
	propagator := propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	otel.SetTracerProvider(provider)
	otel.SetTextMapPropagator(propagator)
	return &tracing{
		provider: provider,
		tracer:   fedotel.New(fedotel.Options{TracerProvider: provider, Propagator: propagator}),
		target:   target,
	}, nil
}

// tracingShutdownTimeout bounds the export of the spans still batched when
// serve exits.
const tracingShutdownTimeout = 5 * time.Second

// shutdown exports the spans still batched and stops the exporter.
func (t *tracing) shutdown(logger *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), tracingShutdownTimeout)
	defer cancel()
	if err := t.provider.Shutdown(ctx); err != nil && !errors.Is(err, context.Canceled) {
		logger.Warn("exporting the last traces failed", "error", err)
	}
}

// joinVerifierTraces returns a VerifierTrace that calls both a's and b's
// callbacks (either may be nil).
func joinVerifierTraces(a, b *sign.VerifierTrace) *sign.VerifierTrace {
	switch {
	case a == nil:
		return b
	case b == nil:
		return a
	}
	joined := &sign.VerifierTrace{}
	if a.KeyFetch != nil || b.KeyFetch != nil {
		joined.KeyFetch = func(server, source string, d time.Duration, err error) {
			for _, f := range []func(string, string, time.Duration, error){a.KeyFetch, b.KeyFetch} {
				if f != nil {
					f(server, source, d, err)
				}
			}
		}
	}
	if a.Pending != nil || b.Pending != nil {
		joined.Pending = func(decision, origin string) {
			for _, f := range []func(string, string){a.Pending, b.Pending} {
				if f != nil {
					f(decision, origin)
				}
			}
		}
	}
	return joined
}
