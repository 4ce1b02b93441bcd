package fedotel_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/fedhistory/fedhistory/internal/obstest"
	fedotel "github.com/fedhistory/fedhistory/otel"
)

// A trace context as the asking server would send it (W3C Trace Context).
const (
	callerTraceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	callerSpanID  = "00f067aa0ba902b7"
	traceparent   = "00-" + callerTraceID + "-" + callerSpanID + "-01"
)

// recorded is a tracer whose spans end up in an in-memory exporter.
type recorded struct {
	provider *sdktrace.TracerProvider
	exporter *tracetest.InMemoryExporter
	tracer   *fedotel.Tracer
}

func newRecorded(t *testing.T) *recorded {
	exporter := tracetest.NewInMemoryExporter()
	provider := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
	t.Cleanup(func() { _ = provider.Shutdown(context.Background()) })
	return &recorded{
		provider: provider,
		exporter: exporter,
		tracer:   fedotel.New(fedotel.Options{TracerProvider: provider, Propagator: propagation.TraceContext{}}),
	}
}

// tree renders the spans as an indented tree, children in the order they
// started, each root with its parent's span ID (or "-").
func tree(spans tracetest.SpanStubs) string {
	slices.SortStableFunc(spans, func(a, b tracetest.SpanStub) int { return a.StartTime.Compare(b.StartTime) })
	ids := map[trace.SpanID]bool{}
	for _, s := range spans {
		ids[s.SpanContext.SpanID()] = true
	}
	var out strings.Builder
	var render func(parent trace.SpanID, depth int)
	render = func(parent trace.SpanID, depth int) {
		for _, s := range spans {
			if s.Parent.SpanID() == parent && ids[parent] {
				out.WriteString(strings.Repeat("  ", depth) + s.Name + "\n")
				render(s.SpanContext.SpanID(), depth+1)
			}
		}
	}
	for _, s := range spans {
		if !ids[s.Parent.SpanID()] {
			parent := "-"
			if s.Parent.IsValid() {
				parent = s.Parent.SpanID().String()
			}
			out.WriteString(s.Name + " (parent " + parent + ")\n")
			render(s.SpanContext.SpanID(), 1)
		}
	}
	return out.String()
}

func attrs(s tracetest.SpanStub) map[string]any {
	m := map[string]any{}
	for _, kv := range s.Attributes {
		m[string(kv.Key)] = kv.Value.AsInterface()
	}
	return m
}

func TestSpanTreeOfABackfill(t *testing.T) {
	rec := newRecorded(t)
	w := obstest.NewWorld(t, rec.tracer.Trace())
	req := w.BackfillRequest(obstest.Member, 20)
	req.Header.Set("traceparent", traceparent)
	resp := obstest.Serve(w.Handler, req)
	require.Equal(t, http.StatusOK, resp.Code, "%s", resp.Body)

	spans := rec.exporter.GetSpans()
	require.Equal(t, `GET /_matrix/federation/v1/backfill/{roomId} (parent `+callerSpanID+`)
  authenticate
  authorise
    store.CurrentState
    store.RoomVersion
  walk
    store.WalkBackfill
  filter
    store.Visibility
    store.Events
    store.ErasedUsers
`, tree(spans))

	for _, s := range spans {
		require.Equal(t, callerTraceID, s.SpanContext.TraceID().String(), "%s continues the caller's trace", s.Name)
		require.NotEqual(t, codes.Error, s.Status.Code, s.Name)
	}
	root := spans[0]
	require.Equal(t, trace.SpanKindServer, root.SpanKind)
	require.True(t, root.Parent.IsRemote())
	a := attrs(root)
	require.Equal(t, int64(200), a["http.response.status_code"])
	require.Equal(t, "GET", a["http.request.method"])
	require.Equal(t, "/_matrix/federation/v1/backfill/{roomId}", a["http.route"])
	require.Equal(t, "backfill", a["fedhistory.endpoint"])
	require.Equal(t, obstest.Member, a["matrix.origin"])
	require.Positive(t, a["fedhistory.events.whole"])
	require.Positive(t, a["fedhistory.events.redacted"])
	require.Positive(t, a["fedhistory.events.withheld"])
	require.Positive(t, a["fedhistory.walk.visits"])
	require.NotContains(t, a, "matrix.errcode")

	// Nothing the peer chose but its name: no room or event ID anywhere.
	for _, s := range spans {
		for _, kv := range s.Attributes {
			value := kv.Value.Emit()
			require.NotContains(t, value, w.Room.ID, "%s %s", s.Name, kv.Key)
			require.NotContains(t, value, "$", "%s %s: an event ID", s.Name, kv.Key)
		}
	}
}

func TestSpanParents(t *testing.T) {
	t.Run("without a traceparent: a new trace", func(t *testing.T) {
		rec := newRecorded(t)
		w := obstest.NewWorld(t, rec.tracer.Trace())
		require.Equal(t, http.StatusOK, obstest.Serve(w.Handler, w.BackfillRequest(obstest.Member, 5)).Code)
		spans := rec.exporter.GetSpans()
		require.True(t, strings.HasPrefix(tree(spans), "GET /_matrix/federation/v1/backfill/{roomId} (parent -)\n"), tree(spans))
		require.NotEqual(t, callerTraceID, spans[0].SpanContext.TraceID().String())
	})

	t.Run("under the homeserver's own span, which already read the headers", func(t *testing.T) {
		rec := newRecorded(t)
		w := obstest.NewWorld(t, rec.tracer.Trace())
		ctx, outer := rec.provider.Tracer("homeserver").Start(context.Background(), "homeserver request")
		req := w.BackfillRequest(obstest.Member, 5).WithContext(ctx)
		req.Header.Set("traceparent", traceparent)
		require.Equal(t, http.StatusOK, obstest.Serve(w.Handler, req).Code)
		outer.End()
		spans := rec.exporter.GetSpans()
		require.True(t, strings.HasPrefix(tree(spans), "homeserver request (parent -)\n  GET /_matrix/federation/v1/backfill/{roomId}\n    authenticate\n"), tree(spans))
		for _, s := range spans {
			if s.Name == "GET /_matrix/federation/v1/backfill/{roomId}" {
				require.Equal(t, trace.SpanKindInternal, s.SpanKind)
			}
		}
	})

	t.Run("with the global propagator, which propagates nothing until set", func(t *testing.T) {
		exporter := tracetest.NewInMemoryExporter()
		provider := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
		w := obstest.NewWorld(t, fedotel.New(fedotel.Options{TracerProvider: provider}).Trace())
		req := w.BackfillRequest(obstest.Member, 5)
		req.Header.Set("traceparent", traceparent)
		require.Equal(t, http.StatusOK, obstest.Serve(w.Handler, req).Code)
		require.NotEqual(t, callerTraceID, exporter.GetSpans()[0].SpanContext.TraceID().String())
	})
}

func TestSpansOfFailures(t *testing.T) {
	rec := newRecorded(t)
	w := obstest.NewWorld(t, rec.tracer.Trace())
	w.EachOutcome(t)
	byStatus := map[int64][]tracetest.SpanStub{}
	var rejected int
	for _, s := range rec.exporter.GetSpans() {
		if status, ok := attrs(s)["http.response.status_code"].(int64); ok {
			byStatus[status] = append(byStatus[status], s)
		}
		for _, ev := range s.Events {
			if ev.Name == "fedhistory.limit" {
				rejected++
			}
		}
	}

	// 4xx answers are the client's: the request's span is no error. Its
	// stage that refused says why, in a fixed vocabulary.
	for _, status := range []int64{400, 401, 403} {
		require.Len(t, byStatus[status], 1, "status %d", status)
		require.NotEqual(t, codes.Error, byStatus[status][0].Status.Code)
		require.NotEmpty(t, attrs(byStatus[status][0])["matrix.errcode"])
	}
	require.NotContains(t, attrs(byStatus[401][0]), "matrix.origin", "nobody was authenticated")
	require.Equal(t, obstest.Stranger, attrs(byStatus[403][0])["matrix.origin"])
	spans := rec.exporter.GetSpans()
	var authorise tracetest.SpanStub
	for _, s := range spans {
		if s.Name == "authorise" && s.Parent.SpanID() == byStatus[403][0].SpanContext.SpanID() {
			authorise = s
		}
	}
	require.Equal(t, codes.Error, authorise.Status.Code)
	require.Equal(t, "forbidden", authorise.Status.Description)

	// A 500 is an error, of a type from the fixed set, and so is the store
	// call that caused it; the injected error's text is nowhere.
	require.Len(t, byStatus[500], 1)
	failed := byStatus[500][0]
	require.Equal(t, codes.Error, failed.Status.Code)
	require.Equal(t, "_OTHER", attrs(failed)["error.type"])
	var failedCalls int
	for _, s := range spans {
		if s.SpanContext.TraceID() == failed.SpanContext.TraceID() && strings.HasPrefix(s.Name, "store.") {
			require.Equal(t, codes.Error, s.Status.Code, s.Name)
			failedCalls++
		}
		require.NotContains(t, s.Status.Description, "injected")
	}
	require.Equal(t, 1, failedCalls)

	// The 429: the load limit's decisions are events on the request spans.
	require.Len(t, byStatus[429], 1)
	require.Equal(t, 2, rejected, "one queued, one rejected")
	events := byStatus[429][0].Events
	require.Len(t, events, 1)
	require.Equal(t, "fedhistory.limit", events[0].Name)
}

func TestLogHandlerAddsTheTraceIDs(t *testing.T) {
	rec := newRecorded(t)
	var buf bytes.Buffer
	logger := slog.New(fedotel.LogHandler(slog.NewTextHandler(&buf, nil))).With("component", "test")
	ctx, span := rec.provider.Tracer("test").Start(context.Background(), "op")
	logger.InfoContext(ctx, "in a span")
	span.End()
	logger.InfoContext(context.Background(), "outside")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	require.Len(t, lines, 2)
	require.Contains(t, lines[0], "component=test")
	require.Contains(t, lines[0], "trace_id="+span.SpanContext().TraceID().String())
	require.Contains(t, lines[0], "span_id="+span.SpanContext().SpanID().String())
	require.NotContains(t, lines[1], "trace_id")
}

func TestKeyFetchSpans(t *testing.T) {
	rec := newRecorded(t)
	w := obstest.NewWorld(t, rec.tracer.Trace())
	before := time.Now()
	w.SignedOutcomes(t, rec.tracer.SignTrace())

	var fetches []tracetest.SpanStub
	for _, s := range rec.exporter.GetSpans() {
		if s.Name == "keys.fetch" {
			fetches = append(fetches, s)
		}
	}
	// Member's key fetched once (then cached: no span), and one failed
	// fetch from the unreachable server.
	require.Len(t, fetches, 2)
	servers := map[string]codes.Code{}
	for _, s := range fetches {
		a := attrs(s)
		require.Equal(t, "direct", a["matrix.key.source"])
		servers[a["matrix.key.server"].(string)] = s.Status.Code
		require.False(t, s.Parent.IsValid(), "a fetch is a trace of its own")
		require.Equal(t, trace.SpanKindClient, s.SpanKind)
		require.False(t, s.StartTime.Before(before), "started when the fetch did, not before")
		require.False(t, s.EndTime.Before(s.StartTime))
	}
	require.Equal(t, map[string]codes.Code{obstest.Member: codes.Unset, obstest.Unreachable: codes.Error}, servers)
}
