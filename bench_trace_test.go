package fedhistory_test

import (
	"context"
	"crypto/ed25519"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/fedhistory/fedhistory"
	fedotel "github.com/fedhistory/fedhistory/otel"
	"github.com/fedhistory/fedhistory/prom"
	"github.com/fedhistory/fedhistory/sign"
)

// tracedBenchHandler is the benchmark server's handler, configured the same
// way, with trace set.
func (s *benchServer) tracedBenchHandler(tb testing.TB, trace *fedhistory.Trace) http.Handler {
	tb.Helper()
	static := map[string]map[string]ed25519.PublicKey{}
	for origin, key := range s.keys {
		static[origin] = map[string]ed25519.PublicKey{key.ID: key.Public()}
	}
	verifier, err := sign.NewVerifier(sign.VerifierConfig{
		ServerNames: []string{ourServer}, StaticKeys: static, DisableKeyFetching: true,
	})
	require.NoError(tb, err)
	h, err := fedhistory.New(fedhistory.Config{
		ServerName:    ourServer,
		Store:         s.room.store,
		Authenticator: verifier,
		Logger:        slog.New(slog.DiscardHandler),
		Trace:         trace,
	})
	require.NoError(tb, err)
	return h
}

// benchBackfill is BenchmarkBackfillHandler's loop over h.
func benchBackfill(b *testing.B, s *benchServer, h http.Handler) {
	req := s.backfillRequest(b, benchOrigins[0], benchBackfillLimit)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	require.Len(b, servedPDUs(b, rec, "pdus"), benchBackfillLimit)
	b.SetBytes(int64(rec.Body.Len()))

	b.ReportAllocs()
	cpu := startCPU()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d: %s", rec.Code, rec.Body.Bytes())
		}
	}
	cpu.report(b)
}

// BenchmarkBackfillHandlerPrometheus is BenchmarkBackfillHandler with the
// Prometheus adapter's Trace set: compare the two for what the metrics
// cost (bench/round3/observability.md).
func BenchmarkBackfillHandlerPrometheus(b *testing.B) {
	s := sharedBenchServer(b)
	metrics, err := prom.New(prometheus.NewRegistry(), prom.Options{})
	require.NoError(b, err)
	benchBackfill(b, s, s.tracedBenchHandler(b, metrics.Trace()))
}

// BenchmarkBackfillHandlerOTel is BenchmarkBackfillHandler with the
// OpenTelemetry adapter's Trace set, every request sampled and its spans
// batched to an exporter that drops them: what tracing every request costs
// the handler, short of the export itself.
func BenchmarkBackfillHandlerOTel(b *testing.B) {
	s := sharedBenchServer(b)
	provider := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	b.Cleanup(func() { _ = provider.Shutdown(context.Background()) })
	tracer := fedotel.New(fedotel.Options{TracerProvider: provider, Propagator: propagation.TraceContext{}})
	benchBackfill(b, s, s.tracedBenchHandler(b, tracer.Trace()))
}

// benchPaired serves the same backfill through base and traced in turn,
// timing each request, and reports the medians and the traced one's
// overhead. Pairing consecutive requests, in alternating order, cancels
// what a busy machine does to both alike (other jobs, frequency changes),
// which separate runs of two benchmarks cannot.
func benchPaired(b *testing.B, s *benchServer, base, traced http.Handler) {
	req := s.backfillRequest(b, benchOrigins[0], benchBackfillLimit)
	serve := func(h http.Handler) time.Duration {
		rec := httptest.NewRecorder()
		start := time.Now()
		h.ServeHTTP(rec, req)
		d := time.Since(start)
		if rec.Code != http.StatusOK {
			b.Fatalf("status %d: %s", rec.Code, rec.Body.Bytes())
		}
		return d
	}
	serve(base)
	serve(traced)
	var baseTimes, tracedTimes, ratios []float64
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		var bt, tt time.Duration
		if i%2 == 0 {
			bt, tt = serve(base), serve(traced)
		} else {
			tt, bt = serve(traced), serve(base)
		}
		i++
		baseTimes = append(baseTimes, float64(bt))
		tracedTimes = append(tracedTimes, float64(tt))
		ratios = append(ratios, float64(tt)/float64(bt))
	}
	median := func(xs []float64) float64 {
		slices.Sort(xs)
		return xs[len(xs)/2]
	}
	b.ReportMetric(median(baseTimes), "base-ns/req")
	b.ReportMetric(median(tracedTimes), "traced-ns/req")
	b.ReportMetric((median(ratios)-1)*100, "overhead-%")
}

// BenchmarkBackfillHandlerPrometheusPaired measures the Prometheus
// adapter's cost as benchPaired does: overhead-% is the median, over
// consecutive pairs of requests, of how much longer the traced one took.
func BenchmarkBackfillHandlerPrometheusPaired(b *testing.B) {
	s := sharedBenchServer(b)
	metrics, err := prom.New(prometheus.NewRegistry(), prom.Options{})
	require.NoError(b, err)
	benchPaired(b, s, s.tracedBenchHandler(b, nil), s.tracedBenchHandler(b, metrics.Trace()))
}

// BenchmarkBackfillHandlerOTelPaired is BenchmarkBackfillHandlerOTel
// measured as benchPaired does.
func BenchmarkBackfillHandlerOTelPaired(b *testing.B) {
	s := sharedBenchServer(b)
	provider := sdktrace.NewTracerProvider(sdktrace.WithBatcher(tracetest.NewNoopExporter()))
	b.Cleanup(func() { _ = provider.Shutdown(context.Background()) })
	tracer := fedotel.New(fedotel.Options{TracerProvider: provider, Propagator: propagation.TraceContext{}})
	benchPaired(b, s, s.tracedBenchHandler(b, nil), s.tracedBenchHandler(b, tracer.Trace()))
}
