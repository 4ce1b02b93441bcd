//go:build chaos

package chaos_test

import (
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/interop/internal/serveproc"
)

// runtimeStats is what serve's Prometheus endpoint says of its runtime.
type runtimeStats struct {
	Goroutines int
	HeapInuse  int64
}

// readRuntimeStats forces two GCs through the debug server (what
// sync.Pools hold survives the first), so that the heap in use is the live
// heap, then reads go_goroutines and go_memstats_heap_inuse_bytes from
// --metrics-listen.
func readRuntimeStats(client *http.Client, s *serveproc.Server) (runtimeStats, error) {
	var stats runtimeStats
	for range 2 {
		resp, err := client.Get(s.DebugURL + "/debug/pprof/heap?gc=1")
		if err != nil {
			return stats, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	resp, err := client.Get(s.MetricsURL)
	if err != nil {
		return stats, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return stats, err
	}
	for _, line := range strings.Split(string(body), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		number, err := strconv.ParseFloat(value, 64)
		if err != nil {
			continue
		}
		switch name {
		case "go_goroutines":
			stats.Goroutines = int(number)
		case "go_memstats_heap_inuse_bytes":
			stats.HeapInuse = int64(number)
		}
	}
	return stats, nil
}

// settledStats reads the runtime stats once the goroutine count has come
// down to at most target (the connection goroutines of the load end
// shortly after its connections close), or after 50 tries.
func settledStats(t *testing.T, client *http.Client, s *serveproc.Server, target int) runtimeStats {
	t.Helper()
	var stats runtimeStats
	for range 50 {
		var err error
		stats, err = readRuntimeStats(client, s)
		require.NoError(t, err)
		if target == 0 || stats.Goroutines <= target {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	client.CloseIdleConnections()
	return stats
}
