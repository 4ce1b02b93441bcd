package sign

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
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
	v := fetchingVerifier(t, ks, clock)

	codes := make(chan int, requests)
	var wg sync.WaitGroup
	for range requests {
		wg.Go(func() {
			w, _ := serve(v, &recordingHandler{}, signedRequest(t, k, http.MethodGet, backfillURI, nil))
			codes <- w.Code
		})
	}
	// Hold the key server until every request is waiting on the one fetch.
	for v.keys.waiting(remoteName) < requests-1 {
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

func TestKeyCacheStaysBounded(t *testing.T) {
	clock := newFakeClock()
	key := make(ed25519.PublicKey, ed25519.PublicKeySize)
	var fetches atomic.Int32
	cache := newKeyCache(func(ctx context.Context, server, keyID string) (fetchResult, error) {
		fetches.Add(1)
		return fetchResult{keys: map[string]fetchedKey{keyID: {key: key, validUntil: clock.Now().Add(time.Hour)}}}, nil
	}, clock.Now, time.Second, time.Second, 3)
	for _, server := range []string{"a", "b", "c", "d", "e"} {
		got, err := cache.get(t.Context(), server, "ed25519:k")
		require.NoError(t, err)
		require.Equal(t, key, got)
		require.LessOrEqual(t, len(cache.servers), 3)
	}
	require.EqualValues(t, 5, fetches.Load())
}

func TestKeyCacheSurvivesPanickingFetcher(t *testing.T) {
	clock := newFakeClock()
	cache := newKeyCache(func(ctx context.Context, server, keyID string) (fetchResult, error) {
		panic("fetcher bug")
	}, clock.Now, time.Second, time.Second, 10)
	_, err := cache.get(t.Context(), "a", "ed25519:k")
	require.ErrorIs(t, err, ErrKeyServerUnreachable)
	require.ErrorContains(t, err, "fetcher bug")
}

func TestWaiterGivesUpWithItsContext(t *testing.T) {
	clock := newFakeClock()
	release := make(chan struct{})
	defer close(release)
	cache := newKeyCache(func(ctx context.Context, server, keyID string) (fetchResult, error) {
		<-release
		return fetchResult{}, errors.New("too late")
	}, clock.Now, time.Second, time.Minute, 10)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err := cache.get(ctx, "a", "ed25519:k")
	require.ErrorIs(t, err, ErrKeyServerUnreachable)
	require.ErrorIs(t, err, context.Canceled)
}
