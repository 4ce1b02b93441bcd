package sign

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// maxKeyCacheAge caps how long a fetched key is trusted without asking
// again, however far away its valid_until_ts: the spec has servers use "the
// lesser of valid_until_ts and 7 days into the future" for event signatures
// (room v5), and the same bound limits how long a key its owner has since
// revoked can still authenticate requests.
const maxKeyCacheAge = 7 * 24 * time.Hour

// maxKeysPerServer bounds what one server's answer can make us remember.
const maxKeysPerServer = 16

// fetchedKey is a usable key and the time it stops being valid.
type fetchedKey struct {
	key        ed25519.PublicKey
	validUntil time.Time
}

// fetchResult is what the fetchers said about one server's keys.
type fetchResult struct {
	keys    map[string]fetchedKey // current keys with valid_until_ts ahead
	expired map[string]bool       // current keys whose valid_until_ts has passed
	old     map[string]bool       // keys listed only in old_verify_keys
}

// fetchFunc fetches server's keys, wantKeyID first among them. It fails
// (wrapping ErrKeyServerUnreachable) only when no fetcher answered at all.
type fetchFunc func(ctx context.Context, server, wantKeyID string) (fetchResult, error)

// serverEntry is everything we know about one server's keys.
type serverEntry struct {
	result    fetchResult
	err       error     // the last fetch failed: nothing answered
	fetchedAt time.Time // when the last fetch finished
}

// lookup answers from the entry. fresh is false when the answer may be out
// of date and a fetch should be tried.
func (e *serverEntry) lookup(server, keyID string, now, recentUntil time.Time) (key ed25519.PublicKey, err error, fresh bool) {
	if k, ok := e.result.keys[keyID]; ok && now.Before(k.validUntil) {
		return k.key, nil, true
	}
	// Whatever else we say about this key, we say it from the last fetch;
	// within FailureCacheTTL of it we do not ask the server again, so a
	// peer cannot make us fetch once per request by varying key IDs.
	fresh = now.Before(recentUntil)
	switch {
	case e.err != nil:
		return nil, e.err, fresh
	case e.result.keys[keyID].key != nil || e.result.expired[keyID]:
		return nil, fmt.Errorf("%w: key %s of %s has expired (valid_until_ts is in the past)", ErrUnknownKey, keyID, server), fresh
	case e.result.old[keyID]:
		return nil, fmt.Errorf("%w: key %s of %s is only listed in old_verify_keys", ErrUnknownKey, keyID, server), fresh
	default:
		return nil, fmt.Errorf("%w: %s does not publish key %s", ErrUnknownKey, server, keyID), fresh
	}
}

// fetchCall is one fetch in progress for a server; every request that
// needs one of that server's keys meanwhile waits for it.
type fetchCall struct {
	done    chan struct{}
	waiters int // guarded by keyCache.mu
}

// keyCache holds servers' keys until their validity ends, remembers
// failures for failureTTL, and runs at most one fetch per server at a time.
type keyCache struct {
	fetch        fetchFunc
	now          func() time.Time
	failureTTL   time.Duration
	fetchTimeout time.Duration
	maxServers   int

	mu       sync.Mutex
	servers  map[string]*serverEntry
	inflight map[string]*fetchCall
}

func newKeyCache(fetch fetchFunc, now func() time.Time, failureTTL, fetchTimeout time.Duration, maxServers int) *keyCache {
	return &keyCache{
		fetch:        fetch,
		now:          now,
		failureTTL:   failureTTL,
		fetchTimeout: fetchTimeout,
		maxServers:   maxServers,
		servers:      map[string]*serverEntry{},
		inflight:     map[string]*fetchCall{},
	}
}

// get returns server's key keyID, fetching the server's keys if the cache
// cannot answer.
func (c *keyCache) get(ctx context.Context, server, keyID string) (ed25519.PublicKey, error) {
	fetched := false
	for {
		c.mu.Lock()
		e, ok := c.servers[server]
		if ok {
			key, err, fresh := e.lookup(server, keyID, c.now(), e.fetchedAt.Add(c.failureTTL))
			// After a fetch made for us, its answer is final.
			if fresh || fetched {
				c.mu.Unlock()
				return key, err
			}
		} else if fetched {
			// Evicted already by a flood of other servers: do not loop.
			c.mu.Unlock()
			return nil, fmt.Errorf("%w: keys of %s were evicted from a full cache", ErrKeyServerUnreachable, server)
		}
		call, ok := c.inflight[server]
		if ok {
			call.waiters++
		} else {
			call = &fetchCall{done: make(chan struct{})}
			c.inflight[server] = call
			// The fetch runs apart from this request so that the first
			// requester hanging up does not fail everyone waiting on it;
			// it keeps the request's values (loggers) and is bounded by
			// fetchTimeout.
			go c.run(context.WithoutCancel(ctx), server, keyID, call)
		}
		c.mu.Unlock()

		select {
		case <-call.done:
			fetched = true
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: gave up waiting for the keys of %s: %w", ErrKeyServerUnreachable, server, ctx.Err())
		}
	}
}

func (c *keyCache) run(ctx context.Context, server, keyID string, call *fetchCall) {
	ctx, cancel := context.WithTimeout(ctx, c.fetchTimeout)
	defer cancel()

	var entry serverEntry
	func() {
		// A panic in a fetcher must not take the server down with it: it
		// runs on its own goroutine, where nothing else would recover it.
		defer func() {
			if p := recover(); p != nil {
				entry = serverEntry{err: fmt.Errorf("%w: fetching keys of %s panicked: %v", ErrKeyServerUnreachable, server, p)}
			}
		}()
		entry.result, entry.err = c.fetch(ctx, server, keyID)
	}()

	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	entry.fetchedAt = now
	for id, k := range entry.result.keys {
		if limit := now.Add(maxKeyCacheAge); k.validUntil.After(limit) {
			k.validUntil = limit
			entry.result.keys[id] = k
		}
	}
	c.store(server, &entry, now)
	delete(c.inflight, server)
	close(call.done)
}

// store adds an entry, making room first if the cache is full: entries
// that can no longer answer anything go first, then arbitrary ones (Go's
// map order), so the cache stays bounded however many servers an attacker
// makes us look up.
func (c *keyCache) store(server string, entry *serverEntry, now time.Time) {
	if _, exists := c.servers[server]; !exists && len(c.servers) >= c.maxServers {
		for s, e := range c.servers {
			if e.stale(now, c.failureTTL) {
				delete(c.servers, s)
			}
		}
		for s := range c.servers {
			if len(c.servers) < c.maxServers {
				break
			}
			delete(c.servers, s)
		}
	}
	c.servers[server] = entry
}

// stale reports whether the entry holds no usable key and is past the
// window in which it answers without fetching.
func (e *serverEntry) stale(now time.Time, failureTTL time.Duration) bool {
	if now.Before(e.fetchedAt.Add(failureTTL)) {
		return false
	}
	for _, k := range e.result.keys {
		if now.Before(k.validUntil) {
			return false
		}
	}
	return true
}

// waiting reports how many requests wait on an in-progress fetch of
// server's keys besides the one that started it (-1: no fetch running).
// Tests use it to line requests up.
func (c *keyCache) waiting(server string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if call, ok := c.inflight[server]; ok {
		return call.waiters
	}
	return -1
}

// fetchWith returns a fetchFunc that asks each fetcher in turn until one
// gives a current, unexpired wantKeyID, merging what they say. Keys listed
// only in old_verify_keys are never usable: they remain valid for old event
// signatures, not for authenticating new requests.
func fetchWith(fetchers []gomatrixserverlib.KeyFetcher, now func() time.Time) fetchFunc {
	return func(ctx context.Context, server, wantKeyID string) (fetchResult, error) {
		result := fetchResult{keys: map[string]fetchedKey{}, expired: map[string]bool{}, old: map[string]bool{}}
		request := gomatrixserverlib.PublicKeyLookupRequest{
			ServerName: spec.ServerName(server),
			KeyID:      gomatrixserverlib.KeyID(wantKeyID),
		}
		var failures []error
		answered := false
		for _, fetcher := range fetchers {
			found, err := fetcher.FetchKeys(ctx, map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp{
				request: spec.AsTimestamp(now()),
			})
			if err != nil {
				failures = append(failures, fmt.Errorf("%s: %w", fetcher.FetcherName(), err))
				continue
			}
			for r, k := range found {
				if r.ServerName != request.ServerName {
					continue
				}
				answered = true
				id := string(r.KeyID)
				_, known := result.keys[id]
				switch {
				case known:
				case len(result.keys)+len(result.expired)+len(result.old) >= maxKeysPerServer && r != request:
				case k.ExpiredTS != gomatrixserverlib.PublicKeyNotExpired:
					result.old[id] = true
				case len(k.Key) != ed25519.PublicKeySize:
				case !now().Before(k.ValidUntilTS.Time()):
					result.expired[id] = true
				default:
					result.keys[id] = fetchedKey{key: ed25519.PublicKey(k.Key), validUntil: k.ValidUntilTS.Time()}
					delete(result.expired, id)
					delete(result.old, id)
				}
			}
			if _, ok := result.keys[wantKeyID]; ok {
				break // a later fetcher (a notary) is only asked when needed
			}
		}
		switch {
		case answered:
			return result, nil
		case len(failures) > 0:
			return result, fmt.Errorf("%w: keys of %s: %w", ErrKeyServerUnreachable, server, errors.Join(failures...))
		default:
			return result, fmt.Errorf("%w: no key server answered for %s", ErrKeyServerUnreachable, server)
		}
	}
}
