// Package prom exports what a fedhistory handler and its sign.Verifier do as
// Prometheus metrics, on github.com/prometheus/client_golang. Wiring it:
//
//	metrics, err := prom.New(prometheus.DefaultRegisterer, prom.Options{})
//	cfg.Trace = metrics.Trace()            // cfg is the fedhistory.Config
//	verifierCfg.Trace = metrics.SignTrace() // and the sign.VerifierConfig
//
// and /metrics served by promhttp.Handler() (or promhttp.HandlerFor the
// registry given to New). Both fedhistory.Trace and this package are
// optional: a handler without a Trace pays nothing, and importing
// fedhistory does not import client_golang.
//
// # Metrics
//
// Durations are in seconds, in histograms with Options.Buckets (by default
// DefaultBuckets: 100 µs to 60 s).
//
//	fedhistory_requests_total{endpoint,code}             counter   requests answered, by HTTP status
//	fedhistory_request_duration_seconds{endpoint}        histogram from the route being known to the answer written
//	fedhistory_requests_in_flight                        gauge     requests being served (queued ones included)
//	fedhistory_events_served_total{endpoint,form}        counter   events the history visibility filter judged:
//	                                                               form="whole", "redacted" or "withheld"
//	fedhistory_stage_duration_seconds{stage}             histogram authenticate, authorise, walk, lookup, filter
//	fedhistory_store_call_duration_seconds{method}       histogram each EventStore call: Events, Visibility, …
//	fedhistory_store_errors_total{method}                counter   store calls that failed (not counting the
//	                                                               not-found answers, nor calls whose request
//	                                                               was cancelled)
//	fedhistory_walk_visits                               histogram event IDs one DAG walk fetched
//	fedhistory_walk_budget_exhausted_total{endpoint}     counter   walks that ran out of their visit budget
//	fedhistory_limiter_total{limit,decision,reason}      counter   load limit decisions: limit="origin",
//	                                                               "in_flight" or "key_fetch" (the verifier's
//	                                                               requests waiting for key fetches),
//	                                                               decision="admitted", "queued" or
//	                                                               "rejected", reason="" or why rejected
//	fedhistory_key_fetches_total{source,result}          counter   lookups of origins' signing keys by the
//	                                                               verifier: source="cache", "pinned",
//	                                                               "direct", "notary" (or a KeyFetcher's
//	                                                               name), result="ok" or "error"
//	fedhistory_key_fetch_duration_seconds{source}        histogram their time
//
// What each answers: the request rate and error ratio per endpoint
// (requests_total), whether peers see a slow server (request_duration) and
// where the time goes (stage_duration, store_call_duration); whether the
// database fails (store_errors_total); how much history is hidden from
// peers (events_served_total by form); whether rooms are shaped so that
// walks hit their budget, returning short pages (walk_visits,
// walk_budget_exhausted_total); whether peers are being turned away by the
// load limits (limiter_total, requests_in_flight); and whether peers' keys
// can be had, and at what cost (key_fetches_total, key_fetch_duration).
//
// contrib/grafana/fedhistory.json is a Grafana dashboard of them all.
//
// # Why no label names a peer, a room or an event
//
// Every label value is one of a small fixed set written in fedhistory's
// own code: endpoint and stage names, store method names, HTTP status codes
// the handler writes, limiter decisions. None is taken from a request.
// Each distinct label value is a new time series, held in this process's
// memory and in every Prometheus that scrapes it, for as long as they
// keep it: a label holding the origin server, the room ID or an event ID
// would let any server on the federation create series at will, one per
// made-up name it sends, which is a denial of service of the process and
// of the monitoring. Matrix errcodes are a fixed set too, but the status
// code already tells the outcomes apart; spans (package
// github.com/fedhistory/fedhistory/otel) and the handler's log lines
// carry the origin, per request, where it costs nothing to keep.
package prom

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/sign"
)

// DefaultBuckets are the buckets of every duration histogram: 100 µs to
// 60 s, about three per decade. A served request takes milliseconds; an
// unauthenticated one a fraction of one; a key fetch or a slow database
// seconds; RequestTimeout (30 s) ends the rest.
var DefaultBuckets = []float64{
	0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005,
	0.01, 0.025, 0.05,
	0.1, 0.25, 0.5,
	1, 2.5, 5,
	10, 30, 60,
}

// WalkVisitBuckets are the buckets of fedhistory_walk_visits. The default
// budget of a walk is 10 visits per event asked for plus the seeds: 1100 for
// a backfill of 100 events from 100 seeds.
var WalkVisitBuckets = []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000}

// Options configure New. The zero value selects the defaults.
type Options struct {
	// ConstLabels are added to every metric, to tell apart several
	// handlers registered with one registry: give each the same label
	// names with its own values ({"handler": "public"}, {"handler":
	// "internal"}). Fixed values, never per-request ones.
	ConstLabels prometheus.Labels

	// Buckets are the upper bounds, in seconds, of the duration
	// histograms. Default DefaultBuckets.
	Buckets []float64
}

// Metrics holds a handler's metrics, registered with one Registerer. Its
// methods are safe for concurrent use.
type Metrics struct {
	requests      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	inFlight      prometheus.Gauge
	events        *prometheus.CounterVec
	stages        *prometheus.HistogramVec
	storeDuration *prometheus.HistogramVec
	storeErrors   *prometheus.CounterVec
	walkVisits    prometheus.Histogram
	walkExhausted *prometheus.CounterVec
	limiter       *prometheus.CounterVec
	keyFetches    *prometheus.CounterVec
	keyFetchTime  *prometheus.HistogramVec

	// The children of the vectors, found once per label value: a vector's
	// WithLabelValues hashes its values and takes a lock.
	byEndpoint cache[string, *endpointMetrics]
	byCode     cache[codeKey, prometheus.Counter]
	byStage    cache[string, prometheus.Observer]
	byMethod   cache[string, *storeMetrics]
	byDecision cache[fedhistory.LimitDecision, prometheus.Counter]
	bySource   cache[string, *sourceMetrics]

	trace     *fedhistory.Trace
	signTrace *sign.VerifierTrace
}

// endpointMetrics are the children of one endpoint.
type endpointMetrics struct {
	duration                  prometheus.Observer
	whole, redacted, withheld prometheus.Counter
	exhausted                 prometheus.Counter
}

type codeKey struct {
	endpoint string
	status   int
}

// sourceMetrics are the children of one source of keys.
type sourceMetrics struct {
	duration  prometheus.Observer
	ok, error prometheus.Counter
}

// storeMetrics are the children of one store method.
type storeMetrics struct {
	duration prometheus.Observer
	errors   prometheus.Counter
}

// New creates the metrics and registers them with reg
// (prometheus.DefaultRegisterer when nil). It fails when reg already holds
// metrics of the same names: give each handler of a process its own value of
// the same Options.ConstLabels, or its own registry.
func New(reg prometheus.Registerer, opts Options) (*Metrics, error) {
	if reg == nil {
		reg = prometheus.DefaultRegisterer
	}
	buckets := opts.Buckets
	if len(buckets) == 0 {
		buckets = DefaultBuckets
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: opts.ConstLabels}, labels)
	}
	histogram := func(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: name, Help: help, ConstLabels: opts.ConstLabels, Buckets: buckets,
		}, labels)
	}
	m := &Metrics{
		requests: counter("fedhistory_requests_total",
			"Federation history requests answered, by endpoint and HTTP status code.", "endpoint", "code"),
		duration: histogram("fedhistory_request_duration_seconds",
			"Time from a request's route being known to its answer being written.", buckets, "endpoint"),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "fedhistory_requests_in_flight", ConstLabels: opts.ConstLabels,
			Help: "Federation history requests being served, those waiting for their origin's turn included.",
		}),
		events: counter("fedhistory_events_served_total",
			"Events the history visibility filter judged, by how they were served: whole, redacted, or withheld (not at all).",
			"endpoint", "form"),
		stages: histogram("fedhistory_stage_duration_seconds",
			"Time spent in each stage of a request: authenticate, authorise, walk, lookup, filter.", buckets, "stage"),
		storeDuration: histogram("fedhistory_store_call_duration_seconds",
			"Time of each call to the event store, by method.", buckets, "method"),
		storeErrors: counter("fedhistory_store_errors_total",
			"Event store calls that failed, by method (not-found answers and calls of cancelled requests excluded).", "method"),
		walkVisits: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "fedhistory_walk_visits", ConstLabels: opts.ConstLabels, Buckets: WalkVisitBuckets,
			Help: "Event IDs one DAG walk (backfill, get_missing_events) fetched from the store.",
		}),
		walkExhausted: counter("fedhistory_walk_budget_exhausted_total",
			"DAG walks that ran out of their visit budget, answering with fewer events than they could have.", "endpoint"),
		limiter: counter("fedhistory_limiter_total",
			"Decisions of the load limits: limit is origin (per-origin concurrency and queue) or in_flight; reason says why a request was rejected.",
			"limit", "decision", "reason"),
		keyFetches: counter("fedhistory_key_fetches_total",
			"Lookups of origins' signing keys, by where the key came from (cache, pinned, direct, notary) and result (ok, error).",
			"source", "result"),
		keyFetchTime: histogram("fedhistory_key_fetch_duration_seconds",
			"Time of each lookup of an origin's signing keys, by where the key came from.", buckets, "source"),
	}
	for _, c := range []prometheus.Collector{
		m.requests, m.duration, m.inFlight, m.events, m.stages, m.storeDuration,
		m.storeErrors, m.walkVisits, m.walkExhausted, m.limiter, m.keyFetches, m.keyFetchTime,
	} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("prom: registering the fedhistory metrics: %w", err)
		}
	}
	// The walks' budget is rarely exhausted; export the count from zero, so
	// that a dashboard tells "never" from "not measured".
	for _, endpoint := range []string{"backfill", "get_missing_events"} {
		m.walkExhausted.WithLabelValues(endpoint)
	}
	m.byEndpoint.new = func(endpoint string) *endpointMetrics {
		return &endpointMetrics{
			duration:  m.duration.WithLabelValues(endpoint),
			whole:     m.events.WithLabelValues(endpoint, "whole"),
			redacted:  m.events.WithLabelValues(endpoint, "redacted"),
			withheld:  m.events.WithLabelValues(endpoint, "withheld"),
			exhausted: m.walkExhausted.WithLabelValues(endpoint),
		}
	}
	m.byCode.new = func(k codeKey) prometheus.Counter {
		return m.requests.WithLabelValues(k.endpoint, statusLabel(k.status))
	}
	m.byStage.new = func(stage string) prometheus.Observer { return m.stages.WithLabelValues(stage) }
	m.byMethod.new = func(method string) *storeMetrics {
		return &storeMetrics{duration: m.storeDuration.WithLabelValues(method), errors: m.storeErrors.WithLabelValues(method)}
	}
	m.byDecision.new = func(d fedhistory.LimitDecision) prometheus.Counter {
		return m.limiter.WithLabelValues(d.Limit, d.Decision, d.Reason)
	}
	m.bySource.new = func(source string) *sourceMetrics {
		return &sourceMetrics{
			duration: m.keyFetchTime.WithLabelValues(source),
			ok:       m.keyFetches.WithLabelValues(source, "ok"),
			error:    m.keyFetches.WithLabelValues(source, "error"),
		}
	}
	m.trace = &fedhistory.Trace{
		RequestStart: m.requestStart,
		RequestDone:  m.requestDone,
		Stage:        m.stage,
		StoreCall:    m.storeCall,
		Limit:        m.limit,
	}
	m.signTrace = &sign.VerifierTrace{
		KeyFetch: func(_, source string, d time.Duration, err error) { m.keyFetch(source, d, err) },
		Pending:  func(decision, _ string) { m.byDecision.get(pendingDecision(decision)).Inc() },
	}
	return m, nil
}

// pendingDecision maps a decision of the verifier's limit on requests
// waiting for key fetches to the limiter metric's labels.
func pendingDecision(decision string) fedhistory.LimitDecision {
	d := fedhistory.LimitDecision{Limit: "key_fetch", Decision: decision}
	switch decision {
	case "rejected_origin":
		d.Decision, d.Reason = "rejected", "per_origin"
	case "rejected_total":
		d.Decision, d.Reason = "rejected", "total"
	}
	return d
}

// Trace returns the callbacks that feed the metrics, for
// fedhistory.Config.Trace. Every call returns the same Trace; it may serve
// any number of handlers, which then share the metrics.
func (m *Metrics) Trace() *fedhistory.Trace { return m.trace }

// SignTrace returns the callbacks that feed the key fetch metrics and the
// limiter metric's key_fetch decisions, for sign.VerifierConfig.Trace.
// Neither the server whose keys are fetched nor the origin a request
// claims becomes a label.
func (m *Metrics) SignTrace() *sign.VerifierTrace { return m.signTrace }

func (m *Metrics) requestStart(ctx context.Context, _ *http.Request, _ string) context.Context {
	m.inFlight.Inc()
	return ctx
}

func (m *Metrics) requestDone(_ context.Context, info fedhistory.RequestInfo) {
	m.inFlight.Dec()
	e := m.byEndpoint.get(info.Endpoint)
	m.byCode.get(codeKey{info.Endpoint, info.Status}).Inc()
	e.duration.Observe(info.Duration.Seconds())
	if info.Served > 0 {
		e.whole.Add(float64(info.Served))
	}
	if info.Redacted > 0 {
		e.redacted.Add(float64(info.Redacted))
	}
	if info.Withheld > 0 {
		e.withheld.Add(float64(info.Withheld))
	}
	if info.WalkVisits > 0 || info.WalkExhausted {
		m.walkVisits.Observe(float64(info.WalkVisits))
	}
	if info.WalkExhausted {
		e.exhausted.Inc()
	}
}

func (m *Metrics) stage(ctx context.Context, stage string) (context.Context, func(error)) {
	observer, start := m.byStage.get(stage), time.Now()
	return ctx, func(error) { observer.Observe(time.Since(start).Seconds()) }
}

func (m *Metrics) storeCall(ctx context.Context, method string) (context.Context, func(error)) {
	s, start := m.byMethod.get(method), time.Now()
	return ctx, func(err error) {
		s.duration.Observe(time.Since(start).Seconds())
		if storeFailed(ctx, err) {
			s.errors.Inc()
		}
	}
}

// storeFailed tells a store failure from the answers that are not one: the
// not-found errors (a peer asking for an event we lack), and any error of
// a call whose request was cancelled (the peer went away, or the server is
// shutting down). A deadline passing is a failure: the store was too slow.
func storeFailed(ctx context.Context, err error) bool {
	switch {
	case err == nil,
		errors.Is(err, fedhistory.ErrEventNotFound),
		errors.Is(err, fedhistory.ErrRoomNotFound),
		errors.Is(err, fedhistory.ErrStateUnknown):
		return false
	case errors.Is(err, context.Canceled), errors.Is(ctx.Err(), context.Canceled):
		return false
	}
	return true
}

func (m *Metrics) limit(_ context.Context, d fedhistory.LimitDecision) {
	m.byDecision.get(d).Inc()
}

// keyFetch counts a lookup of an origin's keys from source ("cache",
// "pinned", "direct", "notary"), which took d and failed with err.
func (m *Metrics) keyFetch(source string, d time.Duration, err error) {
	s := m.bySource.get(source)
	s.duration.Observe(d.Seconds())
	if err != nil {
		s.error.Inc()
	} else {
		s.ok.Inc()
	}
}

// statusLabel is the code label of a status. A request that ended before
// anything was written (the connection dropped) has status 0.
func statusLabel(status int) string {
	if status < 100 || status > 599 {
		return "none"
	}
	return strconv.Itoa(status)
}

// cache maps label values to a vector's children, found once each. Its
// keys are bounded by construction (see the package documentation), so it
// never forgets one. Reads take no lock: the map is replaced, never
// changed, once published.
type cache[K comparable, V any] struct {
	new func(K) V
	mu  sync.Mutex
	m   atomic.Pointer[map[K]V]
}

func (c *cache[K, V]) get(k K) V {
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var next map[K]V
	if m := c.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
		next = maps.Clone(*m)
	} else {
		next = make(map[K]V)
	}
	v := c.new(k)
	next[k] = v
	c.m.Store(&next)
	return v
}
