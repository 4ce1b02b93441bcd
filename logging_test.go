package fedhistory

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// syncBuffer is a bytes.Buffer safe for the summary's timer goroutine.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var record map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &record))
		out = append(out, record)
	}
	return out
}

// TestFailureLogKeepsOneLinePerFailurePerInterval: a database outage makes
// every request fail alike; the log gets the first failure with its cause
// and, at the end of the interval, one line counting the rest — not a line
// per request (reliability issue, item 5).
func TestFailureLogKeepsOneLinePerFailurePerInterval(t *testing.T) {
	logs := &syncBuffer{}
	h := &Handler{failures: newFailureLog(slog.New(slog.NewJSONHandler(logs, nil)))}
	var endInterval []func()
	h.failures.afterFunc = func(_ time.Duration, f func()) *time.Timer {
		endInterval = append(endInterval, f)
		return nil
	}
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}
	for i := range 50 {
		req := &request{h: h, ctx: context.Background(), endpoint: "backfill", origin: "hs2.example",
			roomID: fmt.Sprintf("!room%d:hs1.example", i), status: http.StatusInternalServerError, start: time.Now(),
			// The room differs in every wrapping; the cause does not.
			cause: fmt.Errorf("reading the current state of !room%d: %w", i, refused)}
		h.logFailure(req)
	}
	require.Len(t, logs.lines(t), 1, "one line while the interval lasts")
	require.Len(t, endInterval, 1, "one interval for one kind of failure")
	endInterval[0]()

	lines := logs.lines(t)
	require.Len(t, lines, 2)
	require.Equal(t, "fedhistory: request failed", lines[0]["msg"])
	require.Equal(t, "ERROR", lines[0]["level"])
	require.Contains(t, lines[0]["error"], "!room0", "the first line carries the whole cause")
	require.Equal(t, "fedhistory: the same failure recurred", lines[1]["msg"])
	require.EqualValues(t, 49, lines[1]["count"])
	require.Contains(t, lines[1]["error"], "connection refused")

	// Once the interval is over, the failure is logged afresh.
	h.logFailure(&request{h: h, ctx: context.Background(), endpoint: "backfill", status: 500, start: time.Now(), cause: refused})
	require.Len(t, logs.lines(t), 3)
}
