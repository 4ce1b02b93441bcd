package prom_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/obstest"
	"github.com/fedhistory/fedhistory/prom"
)

// gathered is what a registry exports: metric name → its series.
type gathered map[string][]*dto.Metric

func gather(t *testing.T, g prometheus.Gatherer) gathered {
	t.Helper()
	families, err := g.Gather()
	require.NoError(t, err)
	out := gathered{}
	for _, f := range families {
		out[f.GetName()] = f.GetMetric()
	}
	return out
}

// series finds the series of name whose labels are exactly labels
// ("k=v" pairs), or nil.
func (g gathered) series(name string, labels ...string) *dto.Metric {
	for _, m := range g[name] {
		var got []string
		for _, l := range m.GetLabel() {
			got = append(got, l.GetName()+"="+l.GetValue())
		}
		if slices.Equal(got, labels) {
			return m
		}
	}
	return nil
}

// value is a counter's or gauge's value, or a histogram's count; 0 for a
// series that does not exist.
func (g gathered) value(name string, labels ...string) float64 {
	m := g.series(name, labels...)
	switch {
	case m == nil:
		return 0
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

// sum adds the values of every series of name.
func (g gathered) sum(name string) float64 {
	var total float64
	for _, m := range g[name] {
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Histogram != nil:
			total += float64(m.Histogram.GetSampleCount())
		}
	}
	return total
}

// labelValues lists the values label takes among the series of name.
func (g gathered) labelValues(name, label string) []string {
	var values []string
	for _, m := range g[name] {
		for _, l := range m.GetLabel() {
			if l.GetName() == label && !slices.Contains(values, l.GetValue()) {
				values = append(values, l.GetValue())
			}
		}
	}
	slices.Sort(values)
	return values
}

func TestMetricsOfEachOutcome(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	metrics, err := prom.New(reg, prom.Options{})
	require.NoError(t, err)
	w := obstest.NewWorld(t, metrics.Trace())
	outcomes := w.EachOutcome(t)
	g := gather(t, reg)

	// Every request is counted under its endpoint and status. The 429
	// scenario also serves the two requests it held (200 each).
	want := map[string]float64{}
	for _, o := range outcomes {
		want[o.Endpoint+"/"+fmt.Sprint(o.Status)]++
	}
	want["backfill/200"] += 2
	var requests float64
	for key, n := range want {
		endpoint, code, _ := strings.Cut(key, "/")
		require.Equal(t, n, g.value("fedhistory_requests_total", "code="+code, "endpoint="+endpoint), key)
		requests += n
	}
	require.Equal(t, requests, g.sum("fedhistory_requests_total"), "no other series")
	require.Equal(t, requests, g.sum("fedhistory_request_duration_seconds"))
	require.Zero(t, g.value("fedhistory_requests_in_flight"))

	// The room serves events in every form.
	for _, form := range []string{"whole", "redacted", "withheld"} {
		require.Positive(t, g.value("fedhistory_events_served_total", "endpoint=backfill", "form="+form), form)
	}
	require.Positive(t, g.value("fedhistory_events_served_total", "endpoint=get_missing_events", "form=whole"))

	// The walks: every request that walked is in the histogram. (Whether
	// the tight budget is reported exhausted is up to the walk:
	// TestRequestDoneMapsEveryCount checks the count.)
	require.Positive(t, g.value("fedhistory_walk_visits"))
	require.NotNil(t, g.series("fedhistory_walk_budget_exhausted_total", "endpoint=backfill"), "exported from zero")
	require.NotNil(t, g.series("fedhistory_walk_budget_exhausted_total", "endpoint=get_missing_events"))

	// Every authenticated request is admitted or refused by the origin
	// limit; the 429 scenario saw each decision.
	require.Equal(t, 1.0, g.value("fedhistory_limiter_total", "decision=rejected", "limit=origin", "reason=queue_full"))
	require.Equal(t, 1.0, g.value("fedhistory_limiter_total", "decision=queued", "limit=origin", "reason="))
	require.Positive(t, g.value("fedhistory_limiter_total", "decision=admitted", "limit=in_flight", "reason="))

	// Every request was authenticated; the store calls are timed by method,
	// and the failing store's errors counted, the not-found answer not.
	require.Equal(t, requests, g.value("fedhistory_stage_duration_seconds", "stage=authenticate"))
	require.Subset(t, g.labelValues("fedhistory_stage_duration_seconds", "stage"), []string{"authenticate", "authorise", "walk", "filter"})
	require.Subset(t, g.labelValues("fedhistory_store_call_duration_seconds", "method"), []string{"CurrentState", "RoomVersion", "Visibility"})
	require.Equal(t, 1.0, g.sum("fedhistory_store_errors_total"), "one failed call failed the request")

	// The names and help follow Prometheus' conventions.
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	require.Empty(t, problems)
}

// TestLabelsAreBounded: whatever requests name (origins, rooms, events),
// the series are the same handful.
func TestLabelsAreBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics, err := prom.New(reg, prom.Options{})
	require.NoError(t, err)
	w := obstest.NewWorld(t, metrics.Trace())
	count := func() int {
		n, err := testutil.GatherAndCount(reg)
		require.NoError(t, err)
		return n
	}
	for i := range 20 {
		obstest.Serve(w.Handler, w.BackfillRequest(fmt.Sprintf("peer%d.example", i), 5)) // 403: not in the room
	}
	before := count()
	for i := range 200 {
		obstest.Serve(w.Handler, w.BackfillRequest(fmt.Sprintf("other%d.example", i), i%7+1))
	}
	require.Equal(t, before, count())
	g := gather(t, reg)
	for name, series := range g {
		for _, m := range series {
			for _, l := range m.GetLabel() {
				require.NotContains(t, l.GetValue(), ".example", "%s{%s}", name, l.GetName())
			}
		}
	}
}

func TestRequestDoneMapsEveryCount(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics, err := prom.New(reg, prom.Options{Buckets: []float64{0.5, 1}})
	require.NoError(t, err)
	trace := metrics.Trace()
	ctx := trace.RequestStart(context.Background(), nil, "backfill")
	require.Equal(t, 1.0, gather(t, reg).value("fedhistory_requests_in_flight"))
	trace.RequestDone(ctx, fedhistory.RequestInfo{
		Endpoint: "backfill", Status: 200, Duration: 700 * time.Millisecond,
		Served: 3, Redacted: 2, Withheld: 1, WalkVisits: 40, WalkExhausted: true,
	})
	ctx = trace.RequestStart(context.Background(), nil, "backfill")
	trace.RequestDone(ctx, fedhistory.RequestInfo{Endpoint: "backfill", Aborted: true})

	g := gather(t, reg)
	require.Zero(t, g.value("fedhistory_requests_in_flight"))
	require.Equal(t, 1.0, g.value("fedhistory_requests_total", "code=200", "endpoint=backfill"))
	require.Equal(t, 1.0, g.value("fedhistory_requests_total", "code=none", "endpoint=backfill"), "nothing written")
	require.Equal(t, 3.0, g.value("fedhistory_events_served_total", "endpoint=backfill", "form=whole"))
	require.Equal(t, 2.0, g.value("fedhistory_events_served_total", "endpoint=backfill", "form=redacted"))
	require.Equal(t, 1.0, g.value("fedhistory_events_served_total", "endpoint=backfill", "form=withheld"))
	require.Equal(t, 1.0, g.value("fedhistory_walk_budget_exhausted_total", "endpoint=backfill"))
	visits := g.series("fedhistory_walk_visits").GetHistogram()
	require.Equal(t, uint64(1), visits.GetSampleCount())
	require.Equal(t, 40.0, visits.GetSampleSum())
	duration := g.series("fedhistory_request_duration_seconds", "endpoint=backfill").GetHistogram()
	require.Equal(t, []uint64{1, 2}, []uint64{duration.Bucket[0].GetCumulativeCount(), duration.Bucket[1].GetCumulativeCount()},
		"Options.Buckets: 0.7 s and 0 s are under 1 s, only 0 s under 0.5 s")
}

func TestStoreErrorsLeaveOutAnswersAndCancellations(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics, err := prom.New(reg, prom.Options{})
	require.NoError(t, err)
	call := func(ctx context.Context, err error) {
		_, end := metrics.Trace().StoreCall(ctx, "Events")
		end(err)
	}
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	call(context.Background(), nil)
	call(context.Background(), fmt.Errorf("looking: %w", fedhistory.ErrEventNotFound))
	call(context.Background(), fedhistory.ErrStateUnknown)
	call(cancelled, errors.New("driver: connection closed"))
	call(context.Background(), context.Canceled)
	require.Zero(t, gather(t, reg).value("fedhistory_store_errors_total", "method=Events"))
	call(context.Background(), errors.New("database is down"))
	call(context.Background(), context.DeadlineExceeded)
	g := gather(t, reg)
	require.Equal(t, 2.0, g.value("fedhistory_store_errors_total", "method=Events"))
	require.Equal(t, 7.0, g.value("fedhistory_store_call_duration_seconds", "method=Events"))
}

func TestNewRefusesADuplicateRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, err := prom.New(reg, prom.Options{})
	require.NoError(t, err)
	_, err = prom.New(reg, prom.Options{})
	var already prometheus.AlreadyRegisteredError
	require.ErrorAs(t, err, &already)

	// Handlers told apart by a label share a registry.
	reg = prometheus.NewRegistry()
	_, err = prom.New(reg, prom.Options{ConstLabels: prometheus.Labels{"handler": "first"}})
	require.NoError(t, err)
	second, err := prom.New(reg, prom.Options{ConstLabels: prometheus.Labels{"handler": "second"}})
	require.NoError(t, err)
	trace := second.Trace()
	trace.RequestDone(trace.RequestStart(context.Background(), nil, "backfill"),
		fedhistory.RequestInfo{Endpoint: "backfill", Status: http.StatusOK})
	require.Equal(t, 1.0, gather(t, reg).value("fedhistory_requests_total", "code=200", "endpoint=backfill", "handler=second"))
}

func TestSignTraceCountsKeyFetchesAndPendingDecisions(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics, err := prom.New(reg, prom.Options{})
	require.NoError(t, err)
	w := obstest.NewWorld(t, metrics.Trace())
	w.SignedOutcomes(t, metrics.SignTrace())
	metrics.SignTrace().Pending("rejected_origin", "busy.example")
	metrics.SignTrace().Pending("rejected_total", "busy.example")

	g := gather(t, reg)
	require.Equal(t, 1.0, g.value("fedhistory_key_fetches_total", "result=ok", "source=direct"))
	require.Equal(t, 1.0, g.value("fedhistory_key_fetches_total", "result=ok", "source=cache"))
	require.Equal(t, 1.0, g.value("fedhistory_key_fetches_total", "result=error", "source=direct"), "the unreachable key server")
	require.Equal(t, 2.0, g.value("fedhistory_key_fetch_duration_seconds", "source=direct"))
	require.Equal(t, 2.0, g.value("fedhistory_limiter_total", "decision=admitted", "limit=key_fetch", "reason="))
	require.Equal(t, 1.0, g.value("fedhistory_limiter_total", "decision=rejected", "limit=key_fetch", "reason=per_origin"))
	require.Equal(t, 1.0, g.value("fedhistory_limiter_total", "decision=rejected", "limit=key_fetch", "reason=total"))
	for _, series := range g {
		for _, m := range series {
			for _, l := range m.GetLabel() {
				require.NotContains(t, l.GetValue(), ".example", "a server name in a label")
			}
		}
	}
}
