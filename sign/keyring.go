package sign

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// keyring finds origins' public keys: pinned, cached, or fetched, with at
// most one fetch per server at a time, shared by every request that needs
// it. It is safe for concurrent use.
type keyring struct {
	static  map[string]map[string]ed25519.PublicKey
	fetch   fetchFunc // nil: fetching is disabled
	timeout time.Duration
	now     func() time.Time
	logger  *slog.Logger

	mu      sync.Mutex
	cache   *keyCache
	flights map[string]*flight // by server
}

// flight is one fetch of a server's keys in progress.
type flight struct {
	done chan struct{}
	// waiters counts the requests waiting for it; guarded by keyring.mu.
	waiters int
	// The fetch's answer, set before done is closed: the server's usable
	// keys, and what the fetch said about the others.
	keys    map[string]fetchedKey
	outcome *fetchOutcome
}

// publicKey returns origin's key keyID.
func (k *keyring) publicKey(ctx context.Context, origin, keyID string) (ed25519.PublicKey, error) {
	if pinned, ok := k.static[origin]; ok {
		if key, ok := pinned[keyID]; ok {
			return key, nil
		}
		return nil, fmt.Errorf("%w: %s has no pinned key %s", ErrUnknownKey, origin, keyID)
	}
	if k.fetch == nil {
		return nil, fmt.Errorf("%w: key fetching is disabled and %s has no pinned keys", ErrKeyServerUnreachable, origin)
	}

	k.mu.Lock()
	if key, err, ok := k.cache.lookup(origin, keyID, k.now()); ok {
		k.mu.Unlock()
		return key, err
	}
	f, ok := k.flights[origin]
	if ok {
		f.waiters++
	} else {
		f = &flight{done: make(chan struct{})}
		k.flights[origin] = f
		// The fetch runs apart from this request, so that the first
		// requester hanging up does not fail everyone waiting on it; it
		// keeps the request's values (loggers) and is bounded by timeout.
		go k.run(context.WithoutCancel(ctx), origin, keyID, f)
	}
	k.mu.Unlock()

	select {
	case <-f.done:
		return answer(origin, keyID, f.keys, f.outcome, k.now())
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: gave up waiting for the keys of %s: %w", ErrKeyServerUnreachable, origin, ctx.Err())
	}
}

// run fetches server's keys for flight f, stores what it learnt and
// releases f's waiters.
func (k *keyring) run(ctx context.Context, server, keyID string, f *flight) {
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()

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
	if err != nil {
		k.logger.LogAttrs(ctx, slog.LevelInfo, "sign: fetching keys failed",
			slog.String("server", server), slog.String("key_id", keyID), slog.String("error", err.Error()))
	}

	k.mu.Lock()
	defer k.mu.Unlock()
	f.keys, f.outcome = k.cache.store(server, result, err, k.now())
	delete(k.flights, server)
	close(f.done)
}

// waiting reports how many requests wait on an in-progress fetch of
// server's keys besides the one that started it (-1: no fetch running).
// Tests use it to line requests up.
func (k *keyring) waiting(server string) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	if f, ok := k.flights[server]; ok {
		return f.waiters
	}
	return -1
}
