package main

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var debugLine = regexp.MustCompile(`^fedhistory: debug server on (http://\S+)$`)

func TestServeDebugAddr(t *testing.T) {
	dir := t.TempDir()
	room := generate(t, dir, "room.jsonl", "--events", "20", "--seed", "9")

	cmd := exec.Command(binary, "serve", "--listen", "127.0.0.1:0", "--room", room.Path, "--debug-addr", "127.0.0.1:0")
	cmd.Dir = dir
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	stderr := &lockedBuffer{}
	cmd.Stderr = stderr
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		<-exited
	})

	lines := make(chan string, 2)
	go func() {
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			lines <- scanner.Text()
		}
		close(lines)
	}()
	next := func() string {
		select {
		case line, ok := <-lines:
			require.True(t, ok, "serve stopped printing; stderr:\n%s", stderr.String())
			return line
		case <-time.After(startupDeadline):
			t.Fatalf("serve did not become ready; stderr:\n%s", stderr.String())
			return ""
		}
	}
	serving := servingLine.FindStringSubmatch(next())
	require.NotNil(t, serving)
	debug := debugLine.FindStringSubmatch(next())
	require.NotNil(t, debug)
	mainURL, debugURL := serving[2], debug[1]
	require.NotEqual(t, mainURL, debugURL, "the debug server has its own listener")

	get := func(url string) (int, []byte) {
		resp, err := http.Get(url)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, body
	}

	t.Run("expvar publishes the goroutine count and heap statistics", func(t *testing.T) {
		status, body := get(debugURL + "/debug/vars")
		require.Equal(t, http.StatusOK, status)
		var vars struct {
			Goroutines int `json:"goroutines"`
			MemStats   struct {
				HeapAlloc uint64
				NumGC     uint32
			} `json:"memstats"`
		}
		require.NoError(t, json.Unmarshal(body, &vars), "body: %s", body)
		require.Positive(t, vars.Goroutines)
		require.Positive(t, vars.MemStats.HeapAlloc)
	})

	t.Run("pprof is served", func(t *testing.T) {
		status, body := get(debugURL + "/debug/pprof/goroutine?debug=1")
		require.Equal(t, http.StatusOK, status)
		require.Contains(t, string(body), "goroutine profile:")
	})

	t.Run("the federation listener serves neither", func(t *testing.T) {
		for _, path := range []string{"/debug/vars", "/debug/pprof/"} {
			status, body := get(mainURL + path)
			require.Equal(t, http.StatusNotFound, status, "%s: %s", path, body)
		}
	})
}

func TestServeDebugAddrThatCannotListen(t *testing.T) {
	dir := t.TempDir()
	room := generate(t, dir, "room.jsonl", "--events", "20", "--seed", "9")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer taken.Close()
	res := runCommand(t, dir, "serve", "--listen", "127.0.0.1:0", "--room", room.Path, "--debug-addr", taken.Addr().String())
	require.Equal(t, exitFailure, res.code, "stderr: %s", res.stderr)
	require.Contains(t, res.stderr, "--debug-addr")
}
