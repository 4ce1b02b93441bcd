package sign

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// keyring finds origins' public keys: pinned, cached, or fetched. It is
// the only part of the verifier that knows whether a request needs a key
// fetch, so it is where unauthenticated waiting is bounded: a lookup the
// pinned keys or the cache answer never waits and is never refused, while
// requests that need a fetch share one fetch per server and are admitted
// only within maxPerOrigin per claimed origin and maxPending in all. It is
// safe for concurrent use.
type keyring struct {
	static  map[string]map[string]ed25519.PublicKey
	fetch   fetchFunc // nil: fetching is disabled
	timeout time.Duration
	now     func() time.Time
	logger  *slog.Logger
	trace   *VerifierTrace

	maxPerOrigin int // requests waiting for one server's keys
	maxPending   int // requests waiting for any server's keys

	mu      sync.Mutex
	cache   *keyCache
	flights map[string]*flight // by server
	pending int                // requests waiting on any flight
}

// flight is one fetch of a server's keys in progress, shared by the
// requests waiting for it. It runs apart from them, so that the first
// requester hanging up does not fail the others; when the last one has
// gone, it is cancelled: no fetch outlives every request that wanted it.
type flight struct {
	done   chan struct{}
	cancel context.CancelFunc
	// waiters counts the requests waiting; abandoned is set when the last
	// one left before the end. Both guarded by keyring.mu.
	waiters   int
	abandoned bool
	// The fetch's answer, set before done is closed: the server's usable
	// keys, and what the fetch said about the others.
	keys    map[string]fetchedKey
	outcome *fetchOutcome
}

// publicKey returns origin's key keyID.
func (k *keyring) publicKey(ctx context.Context, origin, keyID string) (ed25519.PublicKey, error) {
	var start time.Time
	if k.trace != nil && k.trace.KeyFetch != nil {
		start = time.Now()
	}
	if pinned, ok := k.static[origin]; ok {
		key, err := pinned[keyID], error(nil)
		if key == nil {
			err = fmt.Errorf("%w: %s has no pinned key %s", ErrUnknownKey, origin, keyID)
		}
		k.trace.keyFetch(origin, "pinned", start, err)
		return key, err
	}
	if k.fetch == nil {
		return nil, fmt.Errorf("%w: key fetching is disabled and %s has no pinned keys", ErrKeyServerUnreachable, origin)
	}

	k.mu.Lock()
	if key, err, ok := k.cache.lookup(origin, keyID, k.now()); ok {
		k.mu.Unlock()
		k.trace.keyFetch(origin, "cache", start, err)
		return key, err
	}
	if err := ctx.Err(); err != nil {
		// Gone already: no fetch for nobody.
		k.mu.Unlock()
		return nil, fmt.Errorf("%w: gave up waiting for the keys of %s: %w", ErrKeyServerUnreachable, origin, err)
	}
	f := k.flights[origin]
	switch {
	case f != nil && f.waiters >= k.maxPerOrigin:
		k.mu.Unlock()
		k.trace.pending("rejected_origin", origin)
		return nil, fmt.Errorf("%w: %d requests already wait for the keys of %s", ErrTooManyPendingKeyFetches, k.maxPerOrigin, origin)
	case k.pending >= k.maxPending:
		k.mu.Unlock()
		k.trace.pending("rejected_total", origin)
		return nil, fmt.Errorf("%w: %d requests already wait for key fetches", ErrTooManyPendingKeyFetches, k.maxPending)
	}
	if f == nil {
		// The fetch keeps the request's values (loggers, traces) but not
		// its cancellation; it is bounded by timeout, and cancelled when
		// nobody waits any more.
		fetchCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), k.timeout)
		f = &flight{done: make(chan struct{}), cancel: cancel}
		k.flights[origin] = f
		go k.run(fetchCtx, origin, keyID, f)
	}
	f.waiters++
	k.pending++
	k.mu.Unlock()
	k.trace.pending("admitted", origin)
	defer k.leave(origin, f)

	select {
	case <-f.done:
		return answer(origin, keyID, f.keys, f.outcome, k.now())
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: gave up waiting for the keys of %s: %w", ErrKeyServerUnreachable, origin, ctx.Err())
	}
}

// leave ends a request's wait for flight f of server's keys. The last
// request to leave a flight still running cancels it, and a later request
// starts afresh.
func (k *keyring) leave(server string, f *flight) {
	k.mu.Lock()
	defer k.mu.Unlock()
	f.waiters--
	k.pending--
	if f.waiters > 0 {
		return
	}
	select {
	case <-f.done:
	default:
		f.abandoned = true
		f.cancel()
		if k.flights[server] == f {
			delete(k.flights, server)
		}
	}
}

// run fetches server's keys for flight f, stores what it learnt and
// releases f's waiters.
func (k *keyring) run(ctx context.Context, server, keyID string, f *flight) {
	defer f.cancel()
	var result fetchResult
	var err error
	func() {
		// A panic in a fetcher must not take the server down with it: it
		// runs on its own goroutine, where nothing else would recover it.
		defer func() {
			if p := recover(); p != nil {
				result, err = fetchResult{}, fmt.Errorf("%w: fetching keys of %s panicked: %v", ErrKeyServerUnreachable, server, p)
			}
		}()
		result, err = k.fetch(ctx, server, keyID)
	}()

	k.mu.Lock()
	abandoned := f.abandoned
	if abandoned && err != nil {
		// Failed because we cancelled it: not the server's failure, and
		// nobody to tell.
		f.outcome = &fetchOutcome{err: err}
	} else {
		f.keys, f.outcome = k.cache.store(server, result, err, k.now())
	}
	if k.flights[server] == f {
		delete(k.flights, server)
	}
	k.mu.Unlock()
	close(f.done)

	if err != nil && !abandoned {
		// One line per fetch, whoever waited for it.
		k.logger.LogAttrs(ctx, slog.LevelInfo, "sign: fetching keys failed",
			slog.String("server", server), slog.String("key_id", keyID), slog.String("error", err.Error()))
	}
}
