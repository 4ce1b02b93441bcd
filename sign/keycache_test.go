package sign

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestKeyCacheAgeIsCapped(t *testing.T) {
	clock := newFakeClock()
	k := newKey(t)
	ks := newKeyServer(t, KeyDocumentHandler(remoteName, []*SigningKey{k}, 365*24*time.Hour, clock.Now))
	v := fetchingVerifier(t, ks, clock)
	requireAccepted(t, v, k)
	clock.Advance(maxKeyCacheAge + time.Minute)
	requireAccepted(t, v, k)
	require.EqualValues(t, 2, ks.hits.Load(), "a year-long valid_until_ts is trusted for at most a week")
}

func TestFetchFailuresAreRememberedBriefly(t *testing.T) {
	clock := newFakeClock()
	k := newKey(t)
	ks := newKeyServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusInternalServerError)
	}))
	v := fetchingVerifier(t, ks, clock, func(c *VerifierConfig) { c.FailureCacheTTL = 10 * time.Second })

	requireUnauthorized(t, v, k, "could not fetch the origin's signing keys")
	afterFirst := ks.hits.Load()
	require.Positive(t, afterFirst)

	clock.Advance(9 * time.Second)
	requireUnauthorized(t, v, k, "could not fetch the origin's signing keys")
	require.Equal(t, afterFirst, ks.hits.Load(), "within the window the failure is answered from the cache")

	clock.Advance(2 * time.Second)
	requireUnauthorized(t, v, k, "could not fetch the origin's signing keys")
	require.Greater(t, ks.hits.Load(), afterFirst, "after the window the key is fetched again")
}

func TestVaryingKeyIDsCannotForceFetches(t *testing.T) {
	clock := newFakeClock()
	k, other := newKey(t), newKey(t)
	ks := newKeyServer(t, KeyDocumentHandler(remoteName, []*SigningKey{k, other}, time.Hour, clock.Now))
	v := fetchingVerifier(t, ks, clock, func(c *VerifierConfig) { c.FailureCacheTTL = 10 * time.Second })

	for i := range 5 {
		forged := &SigningKey{ID: "ed25519:forged" + string(rune('a'+i)), Private: k.Private}
		requireUnauthorized(t, v, forged, "remote.example.org does not publish key "+forged.ID)
	}
	require.EqualValues(t, 1, ks.hits.Load(), "one fetch answers for every key ID within the window")

	// Both published keys came with that one answer.
	requireAccepted(t, v, k)
	requireAccepted(t, v, other)
	require.EqualValues(t, 1, ks.hits.Load())

	// After the window an unknown key ID is asked about again: the server
	// may have rotated its keys since.
	clock.Advance(11 * time.Second)
	requireAccepted(t, v, k)
	require.EqualValues(t, 1, ks.hits.Load(), "a cached valid key needs no fetch")
	forged := &SigningKey{ID: "ed25519:forgedz", Private: k.Private}
	requireUnauthorized(t, v, forged, "does not publish key")
	require.EqualValues(t, 2, ks.hits.Load())
}

// A forged request naming an unpublished key ID makes us fetch once the
// failure window is over; when that fetch fails, the keys we hold must
// still authenticate the origin's genuine requests.
func TestFailedFetchKeepsValidKeys(t *testing.T) {
	clock := newFakeClock()
	k := newKey(t)
	var down atomic.Bool
	document := KeyDocumentHandler(remoteName, []*SigningKey{k}, time.Hour, clock.Now)
	ks := newKeyServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		document.ServeHTTP(w, r)
	}))
	v := fetchingVerifier(t, ks, clock, func(c *VerifierConfig) { c.FailureCacheTTL = 10 * time.Second })
	requireAccepted(t, v, k)

	down.Store(true)
	clock.Advance(11 * time.Second)
	forged := &SigningKey{ID: "ed25519:forged", Private: k.Private}
	requireUnauthorized(t, v, forged, "could not fetch the origin's signing keys")
	hits := ks.hits.Load()

	requireAccepted(t, v, k)
	require.Equal(t, hits, ks.hits.Load(), "the cached key answers without a fetch")

	// And after the key server comes back, with the key still cached.
	down.Store(false)
	clock.Advance(11 * time.Second)
	requireUnauthorized(t, v, forged, "does not publish key ed25519:forged")
	requireAccepted(t, v, k)
}

// Failures have a cache of their own: a flood of origins whose keys cannot
// be fetched evicts other failures, never usable keys.
func TestFailuresNeverEvictUsableKeys(t *testing.T) {
	clock := newFakeClock()
	key := make(ed25519.PublicKey, ed25519.PublicKeySize)
	var goodFetches atomic.Int32
	keys := newTestKeyring(clock, 3, func(ctx context.Context, server, keyID string) (fetchResult, error) {
		if server == "good.example.org" {
			goodFetches.Add(1)
			return fetchResult{keys: map[string]fetchedKey{keyID: {key: key, validUntil: clock.Now().Add(time.Hour)}}}, nil
		}
		return fetchResult{}, fmt.Errorf("%w: no such server", ErrKeyServerUnreachable)
	})
	_, err := keys.publicKey(t.Context(), "good.example.org", "ed25519:k")
	require.NoError(t, err)
	for i := range 100 {
		_, err := keys.publicKey(t.Context(), fmt.Sprintf("bad%d.example.org", i), "ed25519:k")
		require.ErrorIs(t, err, ErrKeyServerUnreachable)
	}
	got, err := keys.publicKey(t.Context(), "good.example.org", "ed25519:k")
	require.NoError(t, err)
	require.Equal(t, key, got)
	require.EqualValues(t, 1, goodFetches.Load(), "answered from the cache")
}

func TestKeyCacheStaysBounded(t *testing.T) {
	clock := newFakeClock()
	key := make(ed25519.PublicKey, ed25519.PublicKeySize)
	var fetches atomic.Int32
	keys := newTestKeyring(clock, 3, func(ctx context.Context, server, keyID string) (fetchResult, error) {
		fetches.Add(1)
		return fetchResult{keys: map[string]fetchedKey{keyID: {key: key, validUntil: clock.Now().Add(time.Hour)}}}, nil
	})
	for _, server := range []string{"a", "b", "c", "d", "e"} {
		got, err := keys.publicKey(t.Context(), server, "ed25519:k")
		require.NoError(t, err)
		require.Equal(t, key, got)
		require.LessOrEqual(t, keys.cache.keys.len(), 3)
		require.LessOrEqual(t, keys.cache.recent.len(), 3)
	}
	require.EqualValues(t, 5, fetches.Load())
}

func TestMergeKeys(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	key := func(b byte) ed25519.PublicKey { return bytes.Repeat([]byte{b}, ed25519.PublicKeySize) }
	at := func(d time.Duration) time.Time { return now.Add(d) }
	tests := []struct {
		name   string
		cached map[string]fetchedKey
		result fetchResult
		want   map[string]fetchedKey
	}{
		{
			name:   "new keys are added",
			result: fetchResult{keys: map[string]fetchedKey{"a": {key(1), at(time.Hour)}}},
			want:   map[string]fetchedKey{"a": {key(1), at(time.Hour)}},
		},
		{
			name:   "keys the answer does not list are kept",
			cached: map[string]fetchedKey{"a": {key(1), at(time.Hour)}},
			result: fetchResult{keys: map[string]fetchedKey{"b": {key(2), at(time.Hour)}}},
			want:   map[string]fetchedKey{"a": {key(1), at(time.Hour)}, "b": {key(2), at(time.Hour)}},
		},
		{
			name:   "a later validity extends",
			cached: map[string]fetchedKey{"a": {key(1), at(time.Hour)}},
			result: fetchResult{keys: map[string]fetchedKey{"a": {key(1), at(2 * time.Hour)}}},
			want:   map[string]fetchedKey{"a": {key(1), at(2 * time.Hour)}},
		},
		{
			name:   "an earlier validity (a notary's stale copy) does not shorten",
			cached: map[string]fetchedKey{"a": {key(1), at(2 * time.Hour)}},
			result: fetchResult{keys: map[string]fetchedKey{"a": {key(1), at(time.Hour)}}},
			want:   map[string]fetchedKey{"a": {key(1), at(2 * time.Hour)}},
		},
		{
			name:   "listed with a past valid_until_ts: kept until its cached validity",
			cached: map[string]fetchedKey{"a": {key(1), at(time.Hour)}},
			result: fetchResult{expired: map[string]bool{"a": true}},
			want:   map[string]fetchedKey{"a": {key(1), at(time.Hour)}},
		},
		{
			name:   "moved to old_verify_keys: retired by its owner",
			cached: map[string]fetchedKey{"a": {key(1), at(time.Hour)}, "b": {key(2), at(time.Hour)}},
			result: fetchResult{old: map[string]bool{"a": true}},
			want:   map[string]fetchedKey{"b": {key(2), at(time.Hour)}},
		},
		{
			name:   "keys past their validity are dropped",
			cached: map[string]fetchedKey{"a": {key(1), at(-time.Second)}},
			result: fetchResult{},
			want:   map[string]fetchedKey{},
		},
		{
			name:   "validity is capped at maxKeyCacheAge",
			result: fetchResult{keys: map[string]fetchedKey{"a": {key(1), at(365 * 24 * time.Hour)}}},
			want:   map[string]fetchedKey{"a": {key(1), at(maxKeyCacheAge)}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, mergeKeys(tt.cached, tt.result, now))
		})
	}

	t.Run("over the bound, unlisted cached keys go first, soonest to expire first", func(t *testing.T) {
		cached := map[string]fetchedKey{}
		for i := range maxKeysPerServer {
			cached[fmt.Sprintf("old%02d", i)] = fetchedKey{key(1), at(time.Duration(i+1) * time.Minute)}
		}
		merged := mergeKeys(cached, fetchResult{keys: map[string]fetchedKey{"new": {key(2), at(time.Minute)}}}, now)
		require.Len(t, merged, maxKeysPerServer)
		require.Contains(t, merged, "new")
		require.NotContains(t, merged, "old00")
		require.Contains(t, merged, "old01")
	})
}
