//go:build chaos

package chaos_test

import (
	"bufio"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// buildCommand builds the fedhistory command into dir.
func buildCommand(t *testing.T, dir string) string {
	t.Helper()
	binary := filepath.Join(dir, "fedhistory")
	out, err := exec.Command("go", "build", "-o", binary, "github.com/fedhistory/fedhistory/cmd/fedhistory").CombinedOutput()
	require.NoError(t, err, "building fedhistory: %s", out)
	return binary
}

func run(t *testing.T, dir, binary string, args ...string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "fedhistory %v: %s", args, out)
}

// server is a running "fedhistory serve".
type server struct {
	cmd                                 *exec.Cmd
	federationURL, debugURL, metricsURL string
	logPath                             string
	exited                              chan struct{}
}

var (
	servingLine = regexp.MustCompile(`^fedhistory: serving \S+ on (http://127\.0\.0\.1:\d+)$`)
	debugLine   = regexp.MustCompile(`^fedhistory: debug server on (http://127\.0\.0\.1:\d+)$`)
	metricsLine = regexp.MustCompile(`^fedhistory: metrics on (http://127\.0\.0\.1:\d+/metrics)$`)
)

func startServe(t *testing.T, dir, binary string, args ...string) *server {
	t.Helper()
	s := &server{logPath: filepath.Join(dir, "serve.log"), exited: make(chan struct{})}
	logFile, err := os.Create(s.logPath)
	require.NoError(t, err)
	t.Cleanup(func() { logFile.Close() })
	s.cmd = exec.Command(binary, args...)
	s.cmd.Dir = dir
	s.cmd.Stderr = logFile
	stdout, err := s.cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, s.cmd.Start())
	go func() {
		_ = s.cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		if s.running() {
			_ = s.cmd.Process.Signal(syscall.SIGKILL)
			<-s.exited
		}
	})

	lines := make(chan string, 3)
	go func() {
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			lines <- scanner.Text()
		}
		close(lines)
	}()
	next := func(pattern *regexp.Regexp) string {
		select {
		case line, ok := <-lines:
			require.True(t, ok, "serve stopped before it was ready; see %s", s.logPath)
			m := pattern.FindStringSubmatch(line)
			require.NotNil(t, m, "serve printed %q", line)
			return m[1]
		case <-time.After(2 * time.Minute):
			t.Fatalf("serve did not become ready; see %s", s.logPath)
			return ""
		}
	}
	s.federationURL = next(servingLine)
	s.debugURL = next(debugLine)
	s.metricsURL = next(metricsLine)
	return s
}

func (s *server) running() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// runtimeStats is what serve's Prometheus endpoint says of its runtime.
type runtimeStats struct {
	Goroutines int
	HeapInuse  int64
}

// readRuntimeStats forces two GCs through the debug server (what
// sync.Pools hold survives the first), so that the heap in use is the live
// heap, then reads go_goroutines and go_memstats_heap_inuse_bytes from
// --metrics-listen.
func readRuntimeStats(client *http.Client, s *server) (runtimeStats, error) {
	var stats runtimeStats
	for range 2 {
		resp, err := client.Get(s.debugURL + "/debug/pprof/heap?gc=1")
		if err != nil {
			return stats, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	resp, err := client.Get(s.metricsURL)
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
func settledStats(t *testing.T, client *http.Client, s *server, target int) runtimeStats {
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
