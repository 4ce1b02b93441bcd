package fedhistory_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
)

// traceRecorder records every Trace callback.
type traceRecorder struct {
	mu        sync.Mutex
	started   []string
	done      []fedhistory.RequestInfo
	stages    []string
	stageErrs map[string]error
	calls     []string
	limits    []fedhistory.LimitDecision
}

type traceKey struct{}

func (rec *traceRecorder) trace() *fedhistory.Trace {
	rec.stageErrs = map[string]error{}
	return &fedhistory.Trace{
		RequestStart: func(ctx context.Context, r *http.Request, endpoint string) context.Context {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			rec.started = append(rec.started, endpoint)
			return context.WithValue(ctx, traceKey{}, endpoint)
		},
		RequestDone: func(ctx context.Context, info fedhistory.RequestInfo) {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			rec.done = append(rec.done, info)
		},
		Stage: func(ctx context.Context, stage string) (context.Context, func(error)) {
			rec.mu.Lock()
			rec.stages = append(rec.stages, stage)
			rec.mu.Unlock()
			return ctx, func(err error) {
				rec.mu.Lock()
				defer rec.mu.Unlock()
				rec.stageErrs[stage] = err
			}
		},
		StoreCall: func(ctx context.Context, method string) (context.Context, func(error)) {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			// The store gets the request's context, as RequestStart made it.
			if ctx.Value(traceKey{}) == nil {
				rec.calls = append(rec.calls, method+" without the request's context")
			}
			rec.calls = append(rec.calls, method)
			return ctx, func(error) {}
		},
		Limit: func(ctx context.Context, d fedhistory.LimitDecision) {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			rec.limits = append(rec.limits, d)
		},
	}
}

func TestTraceSeesEveryStep(t *testing.T) {
	room := newTestRoom(t, "10", 41)
	room.messages(t, "m", 5)
	store := load(t, room)

	t.Run("a served backfill", func(t *testing.T) {
		rec := &traceRecorder{}
		h := newHandler(t, store, func(cfg *fedhistory.Config) { cfg.Trace = rec.trace() })
		resp := do(t, h, http.MethodGet, backfillURL(room.id, "3", room.ev(t, "m5")), memberServer, "")
		require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)

		require.Equal(t, []string{"backfill"}, rec.started)
		require.Len(t, rec.done, 1)
		info := rec.done[0]
		require.Equal(t, "backfill", info.Endpoint)
		require.Equal(t, memberServer, info.Origin)
		require.Equal(t, room.id, info.RoomID)
		require.Equal(t, http.StatusOK, info.Status)
		require.Empty(t, info.ErrCode)
		require.Equal(t, 3, info.Served+info.Redacted)
		require.Positive(t, info.Duration)
		require.Equal(t, []string{"authenticate", "authorise", "walk", "filter"}, rec.stages)
		require.ElementsMatch(t, []string{"CurrentState", "RoomVersion", "WalkBackfill", "Visibility", "ErasedUsers"}, rec.calls)
		require.Equal(t, []fedhistory.LimitDecision{
			{Limit: "origin", Decision: "admitted"},
			{Limit: "in_flight", Decision: "admitted"},
		}, rec.limits)
	})

	t.Run("the dag walk over a store without walkers: each Events call is seen", func(t *testing.T) {
		rec := &traceRecorder{}
		h := newHandler(t, withoutWalkers{store}, func(cfg *fedhistory.Config) { cfg.Trace = rec.trace() })
		resp := do(t, h, http.MethodGet, backfillURL(room.id, "3", room.ev(t, "m5")), memberServer, "")
		require.Equal(t, http.StatusOK, resp.status, "body: %s", resp.body)
		require.Contains(t, rec.calls, "Events")
		require.NotContains(t, rec.calls, "WalkBackfill")
		require.Positive(t, rec.done[0].WalkVisits)
	})

	t.Run("an unauthenticated request", func(t *testing.T) {
		rec := &traceRecorder{}
		h := newHandler(t, store, func(cfg *fedhistory.Config) { cfg.Trace = rec.trace() })
		resp := do(t, h, http.MethodGet, backfillURL(room.id, "3", room.ev(t, "m5")), "", "")
		require.Equal(t, http.StatusUnauthorized, resp.status)
		require.Len(t, rec.done, 1)
		require.Equal(t, http.StatusUnauthorized, rec.done[0].Status)
		require.Equal(t, "M_UNAUTHORIZED", rec.done[0].ErrCode)
		require.Empty(t, rec.done[0].Origin)
		require.Error(t, rec.stageErrs["authenticate"])
		require.Empty(t, rec.calls, "the store is never reached")
	})

	t.Run("a refused origin", func(t *testing.T) {
		rec := &traceRecorder{}
		h := newHandler(t, store, func(cfg *fedhistory.Config) { cfg.Trace = rec.trace() })
		resp := do(t, h, http.MethodGet, backfillURL(room.id, "3", room.ev(t, "m5")), "stranger.example", "")
		require.Equal(t, http.StatusForbidden, resp.status)
		require.Equal(t, "M_FORBIDDEN", rec.done[0].ErrCode)
		require.ErrorIs(t, rec.stageErrs["authorise"], fedhistory.ErrForbidden)
	})
}

func TestJoinTraces(t *testing.T) {
	var calls []string
	type key string
	mark := func(name string) *fedhistory.Trace {
		return &fedhistory.Trace{
			RequestStart: func(ctx context.Context, r *http.Request, endpoint string) context.Context {
				calls = append(calls, name+" start "+endpoint)
				return context.WithValue(ctx, key(name), true)
			},
			RequestDone: func(ctx context.Context, info fedhistory.RequestInfo) {
				calls = append(calls, fmt.Sprintf("%s done %d sees a:%v b:%v", name, info.Status, ctx.Value(key("a")), ctx.Value(key("b"))))
			},
			Stage: func(ctx context.Context, stage string) (context.Context, func(error)) {
				calls = append(calls, name+" stage "+stage)
				return context.WithValue(ctx, key(name+stage), true), func(err error) { calls = append(calls, name+" end "+stage) }
			},
		}
	}
	require.Nil(t, fedhistory.JoinTraces())
	require.Nil(t, fedhistory.JoinTraces(nil, nil))
	only := mark("only")
	require.Same(t, only, fedhistory.JoinTraces(nil, only))

	limits := 0
	joined := fedhistory.JoinTraces(mark("a"), nil, mark("b"), &fedhistory.Trace{Limit: func(context.Context, fedhistory.LimitDecision) { limits++ }})
	require.Nil(t, joined.StoreCall, "nobody listens")
	ctx := joined.RequestStart(context.Background(), nil, "backfill")
	stageCtx, end := joined.Stage(ctx, "walk")
	require.Equal(t, true, stageCtx.Value(key("bwalk")))
	require.Equal(t, true, stageCtx.Value(key("awalk")), "b's stage got a's context")
	end(nil)
	joined.Limit(ctx, fedhistory.LimitDecision{})
	joined.RequestDone(ctx, fedhistory.RequestInfo{Status: 200})
	require.Equal(t, []string{
		"a start backfill", "b start backfill",
		"a stage walk", "b stage walk", "b end walk", "a end walk",
		"b done 200 sees a:true b:true", "a done 200 sees a:true b:true",
	}, calls)
	require.Equal(t, 1, limits)
}
