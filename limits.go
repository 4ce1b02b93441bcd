package fedhistory

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Defaults for the load limits in Config. The per-origin figures follow
// Synapse's federation rate limiter: 3 requests of one origin at a time, about
// 50 more waiting.
const (
	DefaultMaxConcurrentPerOrigin = 3
	DefaultMaxQueuedPerOrigin     = 50
	DefaultMaxInFlight            = 256
	DefaultRequestTimeout         = 30 * time.Second
	DefaultMaxHeaderBytes         = 16 << 10
	// retryAfter is what a refused client is told to wait.
	retryAfter = time.Second
)

// Why a request was refused admission.
var (
	errOriginBusy = errors.New("too many requests from this server")
	errServerBusy = errors.New("server is busy")
)

// inFlightLimit caps the authenticated requests being served at once by the
// whole handler: a buffered channel used as a semaphore. A request that
// finds it full is refused at once rather than queued, because queueing is
// the per-origin limiter's job: waiting requests never hold a slot here, so
// one origin's queue cannot eat the capacity of the others.
type inFlightLimit chan struct{}

func (l inFlightLimit) tryAcquire() bool {
	select {
	case l <- struct{}{}:
		return true
	default:
		return false
	}
}

func (l inFlightLimit) release() { <-l }

// originLimiter lets each authenticated origin run a few requests at once and
// queue a bounded number more, so that one noisy server cannot starve the
// others: its excess requests are refused with 429 while other origins'
// requests still find free slots. One mutex guards one map: a request holds
// it for a map access, and requests cost milliseconds.
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

// acquire waits for one of origin's slots, reporting whether it had to
// queue. It fails with errOriginBusy when the origin already has too many
// requests waiting, and with ctx's error when ctx ends first; otherwise the
// caller must call the returned release.
func (l *originLimiter) acquire(ctx context.Context, origin string) (release func(), queued bool, err error) {
	l.mu.Lock()
	slots := l.origins[origin]
	if slots == nil {
		slots = &originSlots{running: make(chan struct{}, l.concurrent)}
		l.origins[origin] = slots
	}
	if slots.users >= l.concurrent+l.queued {
		l.mu.Unlock()
		return nil, false, errOriginBusy
	}
	queued = slots.users >= l.concurrent
	slots.users++
	l.mu.Unlock()

	release = func() {
		<-slots.running
		l.leave(origin, slots)
	}
	select {
	case slots.running <- struct{}{}:
		return release, queued, nil
	default:
	}
	select {
	case slots.running <- struct{}{}:
		return release, true, nil
	case <-ctx.Done():
		l.leave(origin, slots)
		return nil, true, ctx.Err()
	}
}

// leave counts one user of origin out, dropping the entry at zero.
func (l *originLimiter) leave(origin string, slots *originSlots) {
	l.mu.Lock()
	defer l.mu.Unlock()
	slots.users--
	if slots.users == 0 {
		delete(l.origins, origin)
	}
}
