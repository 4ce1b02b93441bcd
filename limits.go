package fedhistory

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/fedhistory/fedhistory/internal/matrixerr"
)

// Defaults for the load limits in Config. The per-origin figures follow
// Synapse's federation rate limiter (federation_rr_transactions_per_room_per_second
// aside): 3 requests of one origin at a time, about 50 more waiting.
const (
	DefaultMaxConcurrentPerOrigin = 3
	DefaultMaxQueuedPerOrigin     = 50
	DefaultMaxInFlight            = 256
	DefaultRequestTimeout         = 30 * time.Second
	DefaultMaxHeaderBytes         = 16 << 10
	// retryAfter is what a refused client is told to wait.
	retryAfter = time.Second
)

// inFlightLimit caps the requests being served at once by the whole handler.
// It sits before authentication, because verifying a signature (and fetching
// a key) is itself work an attacker could pile up.
// The returned middleware shares one set of slots among all it wraps.
func newInFlightLimit(max int) func(http.Handler) http.Handler {
	slots := make(chan struct{}, max)
	return func(next http.Handler) http.Handler {
		return inFlightHandler(slots, next)
	}
}

func inFlightHandler(slots chan struct{}, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case slots <- struct{}{}:
			defer func() { <-slots }()
			next.ServeHTTP(w, r)
		default:
			matrixerr.WriteRetry(w, "server is busy", retryAfter.Milliseconds())
		}
	})
}

// requestGuard applies the per-request deadline and the header size cap.
func requestGuard(timeout time.Duration, maxHeaderBytes int, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		size := len(r.RequestURI)
		for name, values := range r.Header {
			size += len(name)
			for _, v := range values {
				size += len(v)
			}
		}
		if size > maxHeaderBytes {
			matrixerr.Write(w, http.StatusRequestHeaderFieldsTooLarge, matrixerr.TooLarge,
				"request headers are larger than "+strconv.Itoa(maxHeaderBytes)+" bytes")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// originLimiter lets each origin run a few requests at once and queue a
// bounded number more, so that one noisy server cannot starve the others:
// its excess requests are refused with 429 while other origins' requests
// still find free slots in the handler-wide limit.
type originLimiter struct {
	concurrent, queued int

	mu      sync.Mutex
	origins map[string]*originSlots
}

type originSlots struct {
	running chan struct{} // a token per running request
	users   int           // running + waiting; the entry is dropped at 0
}

func newOriginLimiter(concurrent, queued int) *originLimiter {
	return &originLimiter{concurrent: concurrent, queued: queued, origins: make(map[string]*originSlots)}
}

// acquire waits for a slot for origin. It returns false when the origin
// already has too many requests waiting, or ctx ends first.
func (l *originLimiter) acquire(ctx context.Context, origin string) (release func(), ok bool) {
	l.mu.Lock()
	slots := l.origins[origin]
	if slots == nil {
		slots = &originSlots{running: make(chan struct{}, l.concurrent)}
		l.origins[origin] = slots
	}
	if slots.users >= l.concurrent+l.queued {
		l.mu.Unlock()
		return nil, false
	}
	slots.users++
	l.mu.Unlock()

	leave := func() {
		l.mu.Lock()
		slots.users--
		if slots.users == 0 {
			delete(l.origins, origin)
		}
		l.mu.Unlock()
	}
	select {
	case slots.running <- struct{}{}:
		return func() { <-slots.running; leave() }, true
	case <-ctx.Done():
		leave()
		return nil, false
	}
}

// wrap applies the limiter to an authenticated request.
func (l *originLimiter) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin, ok := requestOrigin(w, r)
		if !ok {
			return
		}
		release, ok := l.acquire(r.Context(), origin)
		if !ok {
			matrixerr.WriteRetry(w, "too many concurrent requests from "+origin, retryAfter.Milliseconds())
			return
		}
		defer release()
		next.ServeHTTP(w, r)
	})
}
