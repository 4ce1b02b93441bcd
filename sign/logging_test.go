package sign

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// logBuffer collects JSON log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	var lines []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var fields map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &fields))
		lines = append(lines, fields)
	}
	return lines
}

func (b *logBuffer) text() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestLoggerDefaultsToSlogDefault(t *testing.T) {
	v, err := NewVerifier(VerifierConfig{ServerNames: []string{ourName}})
	require.NoError(t, err)
	require.Same(t, slog.Default(), v.logger)
	require.Same(t, slog.Default(), v.keys.logger)
}

func TestKeyFetchFailureIsLoggedOncePerFetch(t *testing.T) {
	const (
		slow    = "slow.example.org"
		waiters = 5
	)
	k := newKey(t)
	released := make(chan struct{})
	ks := newKeyServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-released
		http.Error(w, "down", http.StatusInternalServerError)
	}))
	logs := &logBuffer{}
	recorder := newPendingRecorder()
	v, err := NewVerifier(VerifierConfig{
		ServerNames: []string{ourName},
		Resolve:     map[string]string{slow: ks.URL},
		Logger:      slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Trace:       recorder.trace(),
	})
	require.NoError(t, err)

	results := make(chan error, waiters)
	var requests []*http.Request
	for range waiters {
		r := signedBy(t, k, slow)
		requests = append(requests, r)
		authenticateAsync(v, r, results)
	}
	require.Equal(t, map[string]int{"admitted": waiters}, recorder.next(t, waiters))
	close(released)
	for range waiters {
		require.ErrorIs(t, <-results, ErrKeyServerUnreachable)
	}

	var fetchFailures, rejections int
	for _, line := range logs.lines(t) {
		switch line["msg"] {
		case "sign: fetching keys failed":
			fetchFailures++
			require.Equal(t, "INFO", line["level"])
			require.Equal(t, slow, line["server"])
			require.Equal(t, k.ID, line["key_id"])
			require.Contains(t, line["error"], "HTTP status 500")
		case "sign: rejected federation request":
			rejections++
			require.Equal(t, "DEBUG", line["level"])
			require.Equal(t, slow, line["origin"])
			require.Equal(t, k.ID, line["key_id"])
			require.Contains(t, line["error"], "could not fetch the origin's signing keys")
		}
	}
	require.Equal(t, 1, fetchFailures, "one line per fetch, however many waited")
	require.Equal(t, waiters, rejections)

	for _, r := range requests {
		x, err := ParseAuthorization(r.Header.Get("Authorization"))
		require.NoError(t, err)
		require.NotContains(t, logs.text(), x.Signature, "signatures are never logged")
	}
}

func TestBodiesAreNeverLogged(t *testing.T) {
	k := newKey(t)
	logs := &logBuffer{}
	v, err := NewVerifier(VerifierConfig{
		ServerNames:        []string{ourName},
		DisableKeyFetching: true,
		Logger:             slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	require.NoError(t, err)
	const secret = "private-room-content-5b1c"
	for _, body := range []string{`{"secret":"` + secret + `"}`, `{"secret":"` + secret} {
		r := signedRequest(t, &SigningKey{ID: k.ID, Private: k.Private}, http.MethodPost, missingURI, []byte(`{"secret":"x"}`))
		r.Body = readCloser{bytes.NewReader([]byte(body))}
		_, err := v.Authenticate(r)
		require.Error(t, err)
	}
	require.NotEmpty(t, logs.lines(t))
	require.NotContains(t, logs.text(), secret)
}
