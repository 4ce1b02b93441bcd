package prom_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/prom"
)

// BenchmarkTraceOfABackfill is the metrics' own cost per request: the
// callbacks of one served backfill (the store calls and stages of
// TestTraceSeesEveryStep), without the handler.
func BenchmarkTraceOfABackfill(b *testing.B) {
	metrics, err := prom.New(prometheus.NewRegistry(), prom.Options{})
	require.NoError(b, err)
	trace := metrics.Trace()
	step := func(ctx context.Context, f func(context.Context, string) (context.Context, func(error)), name string) {
		_, end := f(ctx, name)
		end(nil)
	}
	info := fedhistory.RequestInfo{
		Endpoint: "backfill", Status: 200, Duration: 90 * time.Microsecond, Served: 95, Redacted: 5, WalkVisits: 101,
	}
	b.ReportAllocs()
	for b.Loop() {
		ctx := trace.RequestStart(context.Background(), nil, "backfill")
		step(ctx, trace.Stage, "authenticate")
		trace.Limit(ctx, fedhistory.LimitDecision{Limit: "origin", Decision: "admitted"})
		trace.Limit(ctx, fedhistory.LimitDecision{Limit: "in_flight", Decision: "admitted"})
		step(ctx, trace.Stage, "authorise")
		step(ctx, trace.StoreCall, "CurrentState")
		step(ctx, trace.StoreCall, "RoomVersion")
		step(ctx, trace.Stage, "walk")
		step(ctx, trace.StoreCall, "WalkBackfill")
		step(ctx, trace.Stage, "filter")
		step(ctx, trace.StoreCall, "Visibility")
		step(ctx, trace.StoreCall, "ErasedUsers")
		trace.RequestDone(ctx, info)
	}
}
