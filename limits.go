package fedhistory

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
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
// The returned middleware shares one count among all it wraps: a counter
// taken with compare-and-swap, so that requests never queue on a lock just
// to be counted.
func newInFlightLimit(max int) func(http.Handler) http.Handler {
	var inFlight atomic.Int64
	return func(next http.Handler) http.Handler {
		return inFlightHandler(&inFlight, int64(max), next)
	}
}

func inFlightHandler(inFlight *atomic.Int64, max int64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for {
			n := inFlight.Load()
			if n >= max {
				matrixerr.WriteRetry(w, "server is busy", retryAfter.Milliseconds())
				return
			}
			if inFlight.CompareAndSwap(n, n+1) {
				break
			}
		}
		defer inFlight.Add(-1)
		next.ServeHTTP(w, r)
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
//
// Origins are spread over shards by a hash of their name, each with its own
// lock, so that requests of different origins rarely meet on one.
type originLimiter struct {
	concurrent, queued int
	shards             [originShards]originShard
}

// originShards is the number of shards of an originLimiter.
const originShards = 32

type originShard struct {
	mu      sync.Mutex
	origins map[string]*originSlots
	// spare recycles the slots of origins that went idle: most origins
	// come and go with every request, and their channel need not be made
	// again each time.
	spare []*originSlots
	_     [64]byte // keep shards' locks on separate cache lines
}

// maxSpareSlots bounds a shard's recycled slots.
const maxSpareSlots = 8

type originSlots struct {
	running chan struct{} // a token per running request
	users   int           // running + waiting; the entry is dropped at 0
}

func newOriginLimiter(concurrent, queued int) *originLimiter {
	l := &originLimiter{concurrent: concurrent, queued: queued}
	for i := range l.shards {
		l.shards[i].origins = make(map[string]*originSlots)
	}
	return l
}

func (l *originLimiter) shard(origin string) *originShard {
	// FNV-1a: cheap, and an attacker choosing origin names gains nothing
	// from collisions but a shared lock.
	h := uint32(2166136261)
	for i := 0; i < len(origin); i++ {
		h = (h ^ uint32(origin[i])) * 16777619
	}
	return &l.shards[h%originShards]
}

// acquire waits for a slot for origin. It returns false when the origin
// already has too many requests waiting, or ctx ends first; otherwise the
// caller must call release with the slots returned.
func (l *originLimiter) acquire(ctx context.Context, origin string) (*originSlots, bool) {
	shard := l.shard(origin)
	shard.mu.Lock()
	slots := shard.origins[origin]
	if slots == nil {
		if n := len(shard.spare); n > 0 {
			slots = shard.spare[n-1]
			shard.spare = shard.spare[:n-1]
		} else {
			slots = &originSlots{running: make(chan struct{}, l.concurrent)}
		}
		shard.origins[origin] = slots
	}
	if slots.users >= l.concurrent+l.queued {
		shard.mu.Unlock()
		return nil, false
	}
	slots.users++
	shard.mu.Unlock()

	select {
	case slots.running <- struct{}{}:
		return slots, true
	case <-ctx.Done():
		l.leave(shard, origin, slots)
		return nil, false
	}
}

// release gives back a slot acquire handed out.
func (l *originLimiter) release(origin string, slots *originSlots) {
	<-slots.running
	l.leave(l.shard(origin), origin, slots)
}

// leave counts one user of origin out, dropping the entry at zero.
func (l *originLimiter) leave(shard *originShard, origin string, slots *originSlots) {
	shard.mu.Lock()
	slots.users--
	if slots.users == 0 {
		delete(shard.origins, origin)
		// No user left means no token in the channel: it is as new.
		if len(shard.spare) < maxSpareSlots {
			shard.spare = append(shard.spare, slots)
		}
	}
	shard.mu.Unlock()
}

// wrap applies the limiter to an authenticated request.
func (l *originLimiter) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin, ok := requestOrigin(w, r)
		if !ok {
			return
		}
		slots, ok := l.acquire(r.Context(), origin)
		if !ok {
			matrixerr.WriteRetry(w, "too many concurrent requests from "+origin, retryAfter.Milliseconds())
			return
		}
		defer l.release(origin, slots)
		next.ServeHTTP(w, r)
	})
}
