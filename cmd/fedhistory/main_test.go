package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// binary is the fedhistory command, built once for every test.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fedhistory-cmd-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "fedhistory")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building fedhistory:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// result is how one run of the command ended.
type result struct {
	stdout, stderr string
	code           int
}

// runCommand runs the command to completion in dir.
func runCommand(t *testing.T, dir string, args ...string) result {
	t.Helper()
	cmd := exec.Command(binary, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("running fedhistory %v: %v", args, err)
	}
	return result{stdout: stdout.String(), stderr: stderr.String(), code: cmd.ProcessState.ExitCode()}
}

// mustRun runs the command and requires exit status 0.
func mustRun(t *testing.T, dir string, args ...string) result {
	t.Helper()
	res := runCommand(t, dir, args...)
	require.Equal(t, 0, res.code, "fedhistory %v failed: %s", args, res.stderr)
	return res
}

// lockedBuffer collects a process's stderr while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// server is a running "fedhistory serve".
type server struct {
	cmd    *exec.Cmd
	URL    string // http://127.0.0.1:PORT
	Name   string // its server name
	stdout *notifyingBuffer
	stderr *lockedBuffer
	exited chan struct{}
}

var servingLine = regexp.MustCompile(`^fedhistory: serving (\S+) on (https?://127\.0\.0\.1:\d+)$`)

// startupDeadline bounds the wait for the serving line, so that a broken
// server fails the test instead of hanging it.
const startupDeadline = 20 * time.Second

// notifyingBuffer is a lockedBuffer that signals each write on written.
type notifyingBuffer struct {
	lockedBuffer
	written chan struct{}
}

func newNotifyingBuffer() *notifyingBuffer {
	return &notifyingBuffer{written: make(chan struct{}, 1)}
}

func (b *notifyingBuffer) Write(p []byte) (int, error) {
	n, err := b.lockedBuffer.Write(p)
	select {
	case b.written <- struct{}{}:
	default:
	}
	return n, err
}

// line waits for the buffer's line number i (from 0) to be complete, giving
// up when exited is closed or after startupDeadline.
func (b *notifyingBuffer) line(i int, exited <-chan struct{}) (string, bool) {
	deadline := time.After(startupDeadline)
	for {
		// A write after this check leaves its signal in written.
		if line, ok := b.completeLine(i); ok {
			return line, true
		}
		select {
		case <-b.written:
		case <-exited:
			return b.completeLine(i)
		case <-deadline:
			return "", false
		}
	}
}

// completeLine returns line i of the buffer if it is complete.
func (b *notifyingBuffer) completeLine(i int) (string, bool) {
	lines := strings.SplitAfter(b.String(), "\n")
	if i >= len(lines) || !strings.HasSuffix(lines[i], "\n") {
		return "", false
	}
	return strings.TrimSuffix(lines[i], "\n"), true
}

// startServer runs "fedhistory serve --listen 127.0.0.1:0 args…" in dir and
// waits for its serving line. The server is stopped when the test ends.
func startServer(t *testing.T, dir string, args ...string) *server {
	t.Helper()
	return startServerEnv(t, dir, nil, args...)
}

// startServerEnv is startServer with env added to the server's environment.
func startServerEnv(t *testing.T, dir string, env []string, args ...string) *server {
	t.Helper()
	cmd := exec.Command(binary, append([]string{"serve", "--listen", "127.0.0.1:0"}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	s := &server{cmd: cmd, stdout: newNotifyingBuffer(), stderr: &lockedBuffer{}, exited: make(chan struct{})}
	// Buffers, not pipes: Wait returns once everything written is copied.
	cmd.Stdout, cmd.Stderr = s.stdout, s.stderr
	require.NoError(t, cmd.Start())
	go func() {
		_ = cmd.Wait()
		close(s.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			_ = cmd.Process.Signal(syscall.SIGTERM)
			<-s.exited
		}
	})

	line, ok := s.stdout.line(0, s.exited)
	require.True(t, ok, "serve did not become ready; stdout %q; stderr:\n%s", s.stdout.String(), s.stderr.String())
	m := servingLine.FindStringSubmatch(line)
	require.NotNil(t, m, "unexpected first line %q", line)
	s.Name, s.URL = m[1], m[2]
	return s
}

// waitStderr waits until the server's stderr matches re and returns the
// match, failing the test if the server exits or startupDeadline passes
// first. serve's stderr is copied apart from its stdout: a line it logged
// before the serving line may arrive after it, and a request's log line
// is written after its answer. Once the server has exited, its stderr is
// all there (see startServerEnv).
func (s *server) waitStderr(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	deadline := time.Now().Add(startupDeadline)
	for {
		exited := false
		select {
		case <-s.exited:
			exited = true
		default:
		}
		if m := re.FindStringSubmatch(s.stderr.String()); m != nil {
			return m
		}
		require.False(t, exited, "serve exited and its stderr never matched %s:\n%s", re, s.stderr.String())
		require.True(t, time.Now().Before(deadline), "stderr never matched %s:\n%s", re, s.stderr.String())
		time.Sleep(10 * time.Millisecond)
	}
}

// stop sends SIGTERM and returns the exit status.
func (s *server) stop(t *testing.T) int {
	t.Helper()
	require.NoError(t, s.cmd.Process.Signal(syscall.SIGTERM))
	<-s.exited
	return s.cmd.ProcessState.ExitCode()
}

// requireOneLine checks that an error report is exactly one line.
func requireOneLine(t *testing.T, stderr string) {
	t.Helper()
	require.Equal(t, 1, strings.Count(stderr, "\n"), "want exactly one line on stderr, got %q", stderr)
	require.True(t, strings.HasSuffix(stderr, "\n"))
}
