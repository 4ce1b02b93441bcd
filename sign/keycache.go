package sign

import (
	"crypto/ed25519"
	"fmt"
	"maps"
	"time"
)

// maxKeyCacheAge caps how long a fetched key is trusted without asking
// again, however far away its valid_until_ts: the spec has servers use "the
// lesser of valid_until_ts and 7 days into the future" for event signatures
// (room v5), and the same bound limits how long a key its owner has since
// revoked can still authenticate requests.
const maxKeyCacheAge = 7 * 24 * time.Hour

// maxKeysPerServer bounds what one server's answers can make us remember.
const maxKeysPerServer = 16

// fetchedKey is a usable key and the time it stops being valid.
type fetchedKey struct {
	key        ed25519.PublicKey
	validUntil time.Time
}

// fetchResult is what the key servers said about one server's keys.
type fetchResult struct {
	keys    map[string]fetchedKey // current keys with valid_until_ts ahead
	expired map[string]bool       // current keys whose valid_until_ts has passed
	old     map[string]bool       // keys listed only in old_verify_keys
}

// keyCache remembers servers' keys, and the last fetch of each server.
//
// The two are kept apart so that neither can cost the other: usable keys
// stay until their validity ends (at most maxKeyCacheAge) whatever later
// fetches of the same server say, unless the server itself moves a key to
// old_verify_keys; a fetch that fails, or that does not list a key, never
// discards it. The last fetch's outcome answers for keys that are not
// usable (unknown, expired, retired, or the server unreachable) during
// failureTTL, so that a forged request naming key IDs nobody published
// costs at most one fetch per server per failureTTL. Failures fill only
// their own cache: a flood of origins whose keys cannot be fetched evicts
// other failures, never usable keys.
//
// It is not safe for concurrent use; the keyring locks.
type keyCache struct {
	keys       *lru[string, map[string]fetchedKey] // server → key ID → usable key; never modified once stored
	recent     *lru[string, *fetchOutcome]         // server → its last fetch, for failureTTL
	failureTTL time.Duration
}

// fetchOutcome is what the last fetch of a server said about the keys it
// did not give us.
type fetchOutcome struct {
	err     error           // nothing answered: wraps ErrKeyServerUnreachable
	expired map[string]bool // listed with a valid_until_ts in the past
	old     map[string]bool // listed in old_verify_keys only
}

func newKeyCache(maxServers int, failureTTL time.Duration) *keyCache {
	return &keyCache{
		keys:       newLRU[string, map[string]fetchedKey](maxServers),
		recent:     newLRU[string, *fetchOutcome](maxServers),
		failureTTL: failureTTL,
	}
}

// lookup answers from the cache: server's usable key keyID, or, within
// failureTTL of the last fetch of server, why there is none. ok is false
// when the cache cannot answer and the keys must be fetched.
func (c *keyCache) lookup(server, keyID string, now time.Time) (key ed25519.PublicKey, err error, ok bool) {
	keys, _ := c.keys.get(server, now)
	if k, found := keys[keyID]; found && now.Before(k.validUntil) {
		return k.key, nil, true
	}
	outcome, fresh := c.recent.get(server, now)
	if !fresh {
		return nil, nil, false
	}
	key, err = answer(server, keyID, keys, outcome, now)
	return key, err, true
}

// store merges the outcome of a fetch of server's keys into the cache
// (err: nothing answered), and returns server's usable keys and the
// outcome for answer.
func (c *keyCache) store(server string, result fetchResult, err error, now time.Time) (map[string]fetchedKey, *fetchOutcome) {
	outcome := &fetchOutcome{err: err, expired: result.expired, old: result.old}
	c.recent.put(server, outcome, now.Add(c.failureTTL))

	keys, _ := c.keys.get(server, now)
	if err == nil {
		keys = mergeKeys(keys, result, now)
		if len(keys) == 0 {
			c.keys.remove(server)
		} else {
			c.keys.put(server, keys, latestValidity(keys))
		}
	}
	return keys, outcome
}

// answer is server's usable key keyID among keys, or why there is none
// after the fetch whose outcome this is.
func answer(server, keyID string, keys map[string]fetchedKey, outcome *fetchOutcome, now time.Time) (ed25519.PublicKey, error) {
	k, cached := keys[keyID]
	switch {
	case cached && now.Before(k.validUntil):
		return k.key, nil
	case outcome.err != nil:
		return nil, outcome.err
	case cached || outcome.expired[keyID]:
		return nil, fmt.Errorf("%w: key %s of %s has expired (valid_until_ts is in the past)", ErrUnknownKey, keyID, server)
	case outcome.old[keyID]:
		return nil, fmt.Errorf("%w: key %s of %s is only listed in old_verify_keys", ErrUnknownKey, keyID, server)
	default:
		return nil, fmt.Errorf("%w: %s does not publish key %s", ErrUnknownKey, server, keyID)
	}
}

// mergeKeys returns the usable keys of a server after an answer: the
// cached ones still valid, less those the answer lists in
// old_verify_keys (the owner retired them), plus the answer's current
// keys, each valid until the later of what we knew and what the answer
// says (a notary's stale copy cannot shorten a key's life), capped at
// maxKeyCacheAge from now. Keys the answer does not list, or lists with a
// valid_until_ts in the past, keep their cached validity (as Synapse keeps
// keys until their stored valid_until_ts). cached is not modified.
func mergeKeys(cached map[string]fetchedKey, result fetchResult, now time.Time) map[string]fetchedKey {
	merged := make(map[string]fetchedKey, len(cached)+len(result.keys))
	for id, k := range cached {
		if now.Before(k.validUntil) && !result.old[id] {
			merged[id] = k
		}
	}
	limit := now.Add(maxKeyCacheAge)
	for id, k := range result.keys {
		if k.validUntil.After(limit) {
			k.validUntil = limit
		}
		if known, ok := merged[id]; ok && known.validUntil.After(k.validUntil) {
			k.validUntil = known.validUntil
		}
		merged[id] = k
	}
	// Over the bound, forget the cached keys the answer did not list,
	// soonest to expire first.
	for len(merged) > maxKeysPerServer {
		victim := ""
		for id, k := range merged {
			if _, listed := result.keys[id]; !listed && (victim == "" || k.validUntil.Before(merged[victim].validUntil)) {
				victim = id
			}
		}
		if victim == "" {
			break // the answer alone is within the bound (fetchWith)
		}
		delete(merged, victim)
	}
	return merged
}

// latestValidity is when the last of keys stops being valid.
func latestValidity(keys map[string]fetchedKey) time.Time {
	var latest time.Time
	for k := range maps.Values(keys) {
		if k.validUntil.After(latest) {
			latest = k.validUntil
		}
	}
	return latest
}
