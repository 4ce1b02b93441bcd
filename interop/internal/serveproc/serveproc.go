// Package serveproc builds the fedhistory command and runs "fedhistory
// serve" as a child process for the opt-in suites of the interop module
// (the load test and the chaos suite), which drive the real binary.
package serveproc

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/roomdump"
)

// Build builds the fedhistory command into dir and returns its path.
func Build(t testing.TB, dir string) string {
	t.Helper()
	binary := filepath.Join(dir, "fedhistory")
	out, err := exec.Command("go", "build", "-o", binary, "github.com/fedhistory/fedhistory/cmd/fedhistory").CombinedOutput()
	require.NoError(t, err, "building fedhistory: %s", out)
	return binary
}

// Run runs binary with args in dir and fails the test unless it succeeds.
func Run(t testing.TB, dir, binary string, args ...string) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "fedhistory %v: %s", args, out)
}

// Server is a running "fedhistory serve".
type Server struct {
	Cmd                                 *exec.Cmd
	FederationURL, DebugURL, MetricsURL string
	// LogPath is the file serve's stderr goes to.
	LogPath string
	exited  chan struct{}
}

var (
	servingLine = regexp.MustCompile(`^fedhistory: serving \S+ on (http://127\.0\.0\.1:\d+)$`)
	debugLine   = regexp.MustCompile(`^fedhistory: debug server on (http://127\.0\.0\.1:\d+)$`)
	metricsLine = regexp.MustCompile(`^fedhistory: metrics on (http://127\.0\.0\.1:\d+/metrics)$`)
)

// Start runs binary (serve, with args that include --debug-addr) in dir and
// waits for its ready lines on stdout: the federation URL, the debug
// server's and, when args hold --metrics-listen, the metrics' URL. The
// process is killed when the test ends, if it is still running.
func Start(t testing.TB, dir, binary string, args ...string) *Server {
	t.Helper()
	s := &Server{LogPath: filepath.Join(dir, "serve.log"), exited: make(chan struct{})}
	logFile, err := os.Create(s.LogPath)
	require.NoError(t, err)
	t.Cleanup(func() { logFile.Close() })
	s.Cmd = exec.Command(binary, args...)
	s.Cmd.Dir = dir
	s.Cmd.Stderr = logFile
	stdout, err := s.Cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, s.Cmd.Start())
	go func() {
		_ = s.Cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		if s.Running() {
			// SIGKILL: a process a test stopped (SIGSTOP) never handles SIGTERM.
			_ = s.Cmd.Process.Signal(syscall.SIGKILL)
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
			require.True(t, ok, "serve stopped before it was ready; see %s", s.LogPath)
			m := pattern.FindStringSubmatch(line)
			require.NotNil(t, m, "serve printed %q", line)
			return m[1]
		case <-time.After(2 * time.Minute):
			t.Fatalf("serve did not become ready; see %s", s.LogPath)
			return ""
		}
	}
	s.FederationURL = next(servingLine)
	s.DebugURL = next(debugLine)
	if slices.Contains(args, "--metrics-listen") {
		s.MetricsURL = next(metricsLine)
	}
	return s
}

// Running reports whether the process has not exited.
func (s *Server) Running() bool {
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// Exited is closed when the process has exited.
func (s *Server) Exited() <-chan struct{} { return s.exited }

// Room is a generated room: its ID and its event IDs in the dump's
// (topological) order.
type Room struct {
	ID     string
	Events []string
}

// ReadRoom reads the room dump at path.
func ReadRoom(t testing.TB, path string) *Room {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	records, err := roomdump.Read(f)
	require.NoError(t, err)
	r := &Room{}
	for _, rec := range records {
		r.ID = rec.RoomID
		r.Events = append(r.Events, rec.EventID)
	}
	require.NotEmpty(t, r.Events)
	return r
}

// LogLines returns the lines of the log file at path that contain substr.
func LogLines(t testing.TB, path, substr string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return out
}
