package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/sign"
)

// drainOrigins and requestsPerOrigin shape the load of the drain tests: each
// origin sends as many requests as the handler runs at once for one origin
// (fedhistory.DefaultMaxConcurrentPerOrigin), so that none waits in its
// queue and all of them are in the store together.
const (
	drainOrigins      = 10
	requestsPerOrigin = 3
)

// drainWorld is a serve whose store waits before every call, holding the
// requests sent to it in flight, and the origins that may ask it.
type drainWorld struct {
	srv      *server
	debugURL string
	room     *dumpRoom
	origins  []string
	keys     map[string]*sign.SigningKey
}

// newDrainWorld starts serve with every store call delayed by latency
// (testStoreLatencyEnv) and the debug server on, for its count of requests
// in flight.
func newDrainWorld(t *testing.T, latency string, args ...string) *drainWorld {
	t.Helper()
	dir := t.TempDir()
	w := &drainWorld{keys: make(map[string]*sign.SigningKey)}
	genArgs := []string{"--events", "20", "--seed", "31"}
	serveArgs := []string{"--debug-addr", "127.0.0.1:0"}
	for i := range drainOrigins {
		origin := fmt.Sprintf("origin%d.test", i)
		key, err := sign.GenerateKey(nil)
		require.NoError(t, err)
		w.origins = append(w.origins, origin)
		w.keys[origin] = key
		genArgs = append(genArgs, "--other-server", origin)
		serveArgs = append(serveArgs, "--trust", trustSpec(origin, key))
	}
	w.room = generate(t, dir, "room.jsonl", genArgs...)
	serveArgs = append(serveArgs, "--room", filepath.Join(dir, "room.jsonl"))
	w.srv = startServerEnv(t, dir, []string{testStoreLatencyEnv + "=" + latency}, append(serveArgs, args...)...)

	line, ok := w.srv.stdout.line(1, w.srv.exited)
	require.True(t, ok, "no debug server line; stdout %q", w.srv.stdout.String())
	m := debugLine.FindStringSubmatch(line)
	require.NotNil(t, m, line)
	w.debugURL = m[1]
	return w
}

// outcome is how one request ended: an answer, or the error of a request
// that got none.
type outcome struct {
	resp *response
	err  error
}

// fire sends requestsPerOrigin backfill requests from every origin at once
// and returns a function that waits for their outcomes.
func (w *drainWorld) fire(t *testing.T) (wait func() []outcome) {
	t.Helper()
	outcomes := make([]outcome, 0, len(w.origins)*requestsPerOrigin)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, origin := range w.origins {
		// The timeout only keeps a broken server from hanging the test.
		client, err := newFederationClient(w.srv.URL, "", origin, w.keys[origin], 2*time.Minute, false)
		require.NoError(t, err)
		for range requestsPerOrigin {
			wg.Go(func() {
				resp, err := client.Backfill(context.Background(), w.room.RoomID, []string{w.room.last().ID}, 3)
				mu.Lock()
				outcomes = append(outcomes, outcome{resp, err})
				mu.Unlock()
			})
		}
	}
	return func() []outcome {
		wg.Wait()
		return outcomes
	}
}

// waitInFlight waits until the server is serving n requests at once, as its
// debug server counts them.
func (w *drainWorld) waitInFlight(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(startupDeadline)
	var last int
	for time.Now().Before(deadline) {
		resp, err := http.Get(w.debugURL + "/debug/vars")
		require.NoError(t, err)
		var vars struct {
			RequestsInFlight int `json:"requests_in_flight"`
		}
		err = json.NewDecoder(resp.Body).Decode(&vars)
		resp.Body.Close()
		require.NoError(t, err)
		if last = vars.RequestsInFlight; last == n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("the server never had %d requests in flight (last seen: %d); stderr:\n%s", n, last, w.srv.stderr.String())
}

// TestServeDrainsRequestsInFlightOnSIGTERM: requests in flight when SIGTERM
// arrives finish, with their full answers, and serve exits 0.
func TestServeDrainsRequestsInFlightOnSIGTERM(t *testing.T) {
	w := newDrainWorld(t, "300ms")
	wait := w.fire(t)
	n := drainOrigins * requestsPerOrigin
	w.waitInFlight(t, n)
	require.Equal(t, exitOK, w.srv.stop(t), w.srv.stderr.String())

	outcomes := wait()
	require.Len(t, outcomes, n)
	want := w.room.expectedBackfill(w.room.last().ID, 3)
	for _, o := range outcomes {
		require.NoError(t, o.err, "a request in flight got no answer")
		require.Equal(t, http.StatusOK, o.resp.Status, "%s", o.resp.Body)
		var answer backfillAnswer
		require.NoError(t, json.Unmarshal(o.resp.Body, &answer))
		require.Equal(t, want, w.room.pduIDs(t, answer.PDUs))
	}
	require.Contains(t, w.srv.stderr.String(), "shutting down: draining the requests in flight")
	require.NotContains(t, w.srv.stderr.String(), "cancelling", "the requests finished within the default drain timeout")
}

// TestServeAnswersRequestsThatOutlastTheDrain: requests still running when
// the drain timeout passes are cancelled and each gets a complete 503
// answer, and serve still exits 0.
func TestServeAnswersRequestsThatOutlastTheDrain(t *testing.T) {
	w := newDrainWorld(t, "1h", "--drain-timeout", "200ms")
	wait := w.fire(t)
	n := drainOrigins * requestsPerOrigin
	w.waitInFlight(t, n)
	require.Equal(t, exitOK, w.srv.stop(t), w.srv.stderr.String())

	outcomes := wait()
	require.Len(t, outcomes, n)
	for _, o := range outcomes {
		require.NoError(t, o.err, "a request in flight got no answer")
		require.Equal(t, http.StatusServiceUnavailable, o.resp.Status, "%s", o.resp.Body)
		var body matrixError
		require.NoError(t, json.Unmarshal(o.resp.Body, &body), "%s", o.resp.Body)
		require.Equal(t, "M_UNKNOWN", body.ErrCode)
		require.NotEmpty(t, body.Error)
	}
	require.Contains(t, w.srv.stderr.String(), "the drain timeout passed; cancelling the requests still in flight")
}

// TestServeStopsAtASecondSignal: a second signal ends the drain at once,
// with status 1.
func TestServeStopsAtASecondSignal(t *testing.T) {
	w := newDrainWorld(t, "1h", "--drain-timeout", "1h")
	wait := w.fire(t)
	w.waitInFlight(t, drainOrigins*requestsPerOrigin)
	require.NoError(t, w.srv.cmd.Process.Signal(syscall.SIGTERM))
	w.waitStderr(t, "shutting down: draining")
	require.NoError(t, w.srv.cmd.Process.Signal(syscall.SIGTERM))
	<-w.srv.exited
	require.Equal(t, exitFailure, w.srv.cmd.ProcessState.ExitCode(), w.srv.stderr.String())
	require.Contains(t, w.srv.stderr.String(), "fedhistory serve: shutting down: a second signal: stopped without waiting for the requests in flight\n")
	wait()
}

// waitStderr waits until the server's stderr contains s.
func (w *drainWorld) waitStderr(t *testing.T, s string) {
	t.Helper()
	deadline := time.Now().Add(startupDeadline)
	for !strings.Contains(w.srv.stderr.String(), s) {
		require.True(t, time.Now().Before(deadline), "stderr never said %q:\n%s", s, w.srv.stderr.String())
		time.Sleep(10 * time.Millisecond)
	}
}
