package sign

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/matrixerr"
)

// keyServer is a fake remote server publishing its keys over HTTP,
// counting every key request it answers.
type keyServer struct {
	*httptest.Server
	hits atomic.Int32
}

func newKeyServer(t *testing.T, handler http.Handler) *keyServer {
	t.Helper()
	ks := &keyServer{}
	ks.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ks.hits.Add(1)
		handler.ServeHTTP(w, r)
	}))
	t.Cleanup(ks.Close)
	return ks
}

// fetchingVerifier fetches remoteName's keys from ks through the real
// DirectKeyFetcher.
func fetchingVerifier(t *testing.T, ks *keyServer, clock *fakeClock, tweak ...func(*VerifierConfig)) *Verifier {
	t.Helper()
	cfg := VerifierConfig{
		ServerNames: []string{ourName},
		Resolve:     map[string]string{remoteName: ks.URL},
		Now:         clock.Now,
	}
	for _, f := range tweak {
		f(&cfg)
	}
	v, err := NewVerifier(cfg)
	require.NoError(t, err)
	return v
}

func requireAccepted(t *testing.T, v *Verifier, k *SigningKey) {
	t.Helper()
	next := &recordingHandler{}
	w, _ := serve(v, next, signedRequest(t, k, http.MethodGet, backfillURI, nil))
	require.Equal(t, http.StatusOK, w.Code, w.Body.String())
	require.Equal(t, remoteName, next.origin)
}

func requireUnauthorized(t *testing.T, v *Verifier, k *SigningKey, message string) {
	t.Helper()
	next := &recordingHandler{}
	w, body := serve(v, next, signedRequest(t, k, http.MethodGet, backfillURI, nil))
	requireRejected(t, w, body, http.StatusUnauthorized, matrixerr.Unauthorized, message)
	require.Zero(t, next.calls.Load())
}

func TestDirectKeyFetchAgainstOurKeyDocument(t *testing.T) {
	clock := newFakeClock()
	k := newKey(t)
	ks := newKeyServer(t, KeyDocumentHandler(remoteName, []*SigningKey{k}, time.Hour, clock.Now))
	v := fetchingVerifier(t, ks, clock)

	requireAccepted(t, v, k)
	requireAccepted(t, v, k)
	require.EqualValues(t, 1, ks.hits.Load(), "a fetched key is cached")

	clock.Advance(59 * time.Minute)
	requireAccepted(t, v, k)
	require.EqualValues(t, 1, ks.hits.Load(), "still within valid_until_ts")

	clock.Advance(2 * time.Minute)
	requireAccepted(t, v, k)
	require.EqualValues(t, 2, ks.hits.Load(), "past valid_until_ts the key is fetched again")
}

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

func TestExpiredKeyIsNeverUsed(t *testing.T) {
	clock := newFakeClock()
	k := newKey(t)
	ks := newKeyServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		doc, err := KeyDocument(remoteName, []*SigningKey{k}, clock.Now().Add(-time.Minute))
		require.NoError(t, err)
		_, _ = w.Write(doc)
	}))
	v := fetchingVerifier(t, ks, clock)
	requireUnauthorized(t, v, k, "key "+k.ID+" of remote.example.org has expired")
}

func TestOldVerifyKeyIsNeverUsed(t *testing.T) {
	clock := newFakeClock()
	current, retired := newKey(t), newKey(t)
	ks := newKeyServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		doc := map[string]any{
			"server_name":    remoteName,
			"valid_until_ts": clock.Now().Add(time.Hour).UnixMilli(),
			"verify_keys": map[string]any{
				current.ID: map[string]string{"key": base64.RawStdEncoding.EncodeToString(current.Public())},
			},
			"old_verify_keys": map[string]any{
				retired.ID: map[string]any{
					"key":        base64.RawStdEncoding.EncodeToString(retired.Public()),
					"expired_ts": clock.Now().Add(time.Hour).UnixMilli(),
				},
			},
		}
		raw, err := json.Marshal(doc)
		require.NoError(t, err)
		signed, err := gomatrixserverlib.SignJSON(remoteName, gomatrixserverlib.KeyID(current.ID), current.Private, raw)
		require.NoError(t, err)
		_, _ = w.Write(signed)
	}))
	v := fetchingVerifier(t, ks, clock)
	requireUnauthorized(t, v, retired, "is only listed in old_verify_keys")
	requireAccepted(t, v, current)
}

func TestUnpublishedKeyIsUnknown(t *testing.T) {
	clock := newFakeClock()
	published, unpublished := newKey(t), newKey(t)
	ks := newKeyServer(t, KeyDocumentHandler(remoteName, []*SigningKey{published}, time.Hour, clock.Now))
	v := fetchingVerifier(t, ks, clock)
	requireUnauthorized(t, v, unpublished, "remote.example.org does not publish key "+unpublished.ID)
}

func TestKeyDocumentForAnotherServerIsRejected(t *testing.T) {
	clock := newFakeClock()
	k := newKey(t)
	// A server answering with someone else's (validly self-signed) keys.
	ks := newKeyServer(t, KeyDocumentHandler("impostor.example.org", []*SigningKey{k}, time.Hour, clock.Now))
	v := fetchingVerifier(t, ks, clock)
	requireUnauthorized(t, v, k, "could not fetch the origin's signing keys")
}

func TestConcurrentRequestsShareOneFetch(t *testing.T) {
	const requests = 20
	clock := newFakeClock()
	k := newKey(t)
	release := make(chan struct{})
	document := KeyDocumentHandler(remoteName, []*SigningKey{k}, time.Hour, clock.Now)
	ks := newKeyServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
		document.ServeHTTP(w, r)
	}))
	v := fetchingVerifier(t, ks, clock, func(c *VerifierConfig) { c.MaxPendingPerOrigin = requests })

	codes := make(chan int, requests)
	var wg sync.WaitGroup
	for range requests {
		wg.Go(func() {
			w, _ := serve(v, &recordingHandler{}, signedRequest(t, k, http.MethodGet, backfillURI, nil))
			codes <- w.Code
		})
	}
	// Hold the key server until every request is waiting on the one fetch.
	for forServer, _ := v.keys.waiting(remoteName); forServer < requests; forServer, _ = v.keys.waiting(remoteName) {
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	close(codes)
	for code := range codes {
		require.Equal(t, http.StatusOK, code)
	}
	require.EqualValues(t, 1, ks.hits.Load())
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

func TestNotaryIsAskedWhenTheOriginIsDown(t *testing.T) {
	const notaryName = "notary.example.org"
	clock := newFakeClock()
	k, notaryKey := newKey(t), newKey(t)
	origin := newKeyServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusBadGateway)
	}))
	notary := newKeyServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/_matrix/key/v2/query" || r.Method != http.MethodPost {
			http.NotFound(w, r)
			return
		}
		doc, err := KeyDocument(remoteName, []*SigningKey{k}, clock.Now().Add(time.Hour))
		require.NoError(t, err)
		countersigned, err := gomatrixserverlib.SignJSON(notaryName, gomatrixserverlib.KeyID(notaryKey.ID), notaryKey.Private, doc)
		require.NoError(t, err)
		_, _ = w.Write([]byte(`{"server_keys":[` + string(countersigned) + `]}`))
	}))
	v := fetchingVerifier(t, origin, clock, func(c *VerifierConfig) {
		c.Resolve[notaryName] = notary.URL
		c.Notaries = []Notary{{ServerName: notaryName, Keys: map[string]ed25519.PublicKey{notaryKey.ID: notaryKey.Public()}}}
	})
	requireAccepted(t, v, k)
	require.EqualValues(t, 1, notary.hits.Load())
}

func TestNotaryAnswerMustBeSignedByTheNotary(t *testing.T) {
	const notaryName = "notary.example.org"
	clock := newFakeClock()
	k, notaryKey := newKey(t), newKey(t)
	origin := newKeyServer(t, http.NotFoundHandler())
	notary := newKeyServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		doc, err := KeyDocument(remoteName, []*SigningKey{k}, clock.Now().Add(time.Hour))
		require.NoError(t, err)
		_, _ = w.Write([]byte(`{"server_keys":[` + string(doc) + `]}`)) // not countersigned
	}))
	v := fetchingVerifier(t, origin, clock, func(c *VerifierConfig) {
		c.Resolve[notaryName] = notary.URL
		c.Notaries = []Notary{{ServerName: notaryName, Keys: map[string]ed25519.PublicKey{notaryKey.ID: notaryKey.Public()}}}
	})
	requireUnauthorized(t, v, k, "could not fetch the origin's signing keys")
}

func TestHugeKeyResponseIsRefused(t *testing.T) {
	clock := newFakeClock()
	k := newKey(t)
	ks := newKeyServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"server_name":"`))
		chunk := make([]byte, 64<<10)
		for i := range chunk {
			chunk[i] = 'a'
		}
		for range maxKeyResponseBytes/len(chunk) + 2 {
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	v := fetchingVerifier(t, ks, clock)
	requireUnauthorized(t, v, k, "could not fetch the origin's signing keys")
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

// newTestKeyring is a keyring fetching with fetch, on clock.
func newTestKeyring(clock *fakeClock, maxServers int, fetch fetchFunc) *keyring {
	return &keyring{
		fetch:        fetch,
		timeout:      time.Minute,
		now:          clock.Now,
		logger:       slog.New(slog.DiscardHandler),
		maxPerOrigin: DefaultMaxPendingPerOrigin,
		maxPending:   DefaultMaxPendingKeyFetches,
		cache:        newKeyCache(maxServers, time.Second),
		flights:      map[string]*flight{},
	}
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

func TestKeyCacheSurvivesPanickingFetcher(t *testing.T) {
	clock := newFakeClock()
	keys := newTestKeyring(clock, 10, func(ctx context.Context, server, keyID string) (fetchResult, error) {
		panic("fetcher bug")
	})
	_, err := keys.publicKey(t.Context(), "a", "ed25519:k")
	require.ErrorIs(t, err, ErrKeyServerUnreachable)
	require.ErrorContains(t, err, "fetcher bug")
}

func TestWaiterGivesUpWithItsContext(t *testing.T) {
	clock := newFakeClock()
	release := make(chan struct{})
	defer close(release)
	keys := newTestKeyring(clock, 10, func(ctx context.Context, server, keyID string) (fetchResult, error) {
		<-release
		return fetchResult{}, errors.New("too late")
	})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := keys.publicKey(ctx, "a", "ed25519:k")
	require.ErrorIs(t, err, ErrKeyServerUnreachable)
	require.ErrorIs(t, err, context.Canceled)
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

func TestLRU(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newLRU[string, int](2)
	c.put("a", 1, now.Add(time.Minute))
	c.put("b", 2, now.Add(time.Minute))
	_, ok := c.get("a", now) // a is now the most recently used
	require.True(t, ok)
	c.put("c", 3, now.Add(time.Minute))
	_, ok = c.get("b", now)
	require.False(t, ok, "the least recently used entry is evicted")
	v, ok := c.get("a", now)
	require.True(t, ok)
	require.Equal(t, 1, v)
	require.Equal(t, 2, c.len())

	c.put("a", 10, now.Add(2*time.Minute))
	v, ok = c.get("a", now.Add(90*time.Second))
	require.True(t, ok, "put replaces the value and the expiry")
	require.Equal(t, 10, v)
	_, ok = c.get("c", now.Add(time.Minute))
	require.False(t, ok, "an entry expires at its time")
	require.Equal(t, 1, c.len(), "and is removed")

	c.remove("a")
	require.Zero(t, c.len())
}
