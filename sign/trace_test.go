package sign

import (
	"context"
	"crypto/ed25519"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/stretchr/testify/require"
)

// keyFetchEvent is one VerifierTrace.KeyFetch call.
type keyFetchEvent struct {
	server, source string
	err            error
}

// traceRecorder records every callback of a VerifierTrace.
type traceRecorder struct {
	mu        sync.Mutex
	fetches   []keyFetchEvent
	decisions []string
}

func (r *traceRecorder) trace(t *testing.T) *VerifierTrace {
	return &VerifierTrace{
		KeyFetch: func(server, source string, duration time.Duration, err error) {
			require.GreaterOrEqual(t, duration, time.Duration(0))
			r.mu.Lock()
			defer r.mu.Unlock()
			r.fetches = append(r.fetches, keyFetchEvent{server, source, err})
		},
		Pending: func(decision, origin string) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.decisions = append(r.decisions, decision+" "+origin)
		},
	}
}

// take returns the events so far and forgets them.
func (r *traceRecorder) take() ([]keyFetchEvent, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fetches, decisions := r.fetches, r.decisions
	r.fetches, r.decisions = nil, nil
	return fetches, decisions
}

// requireFetches checks events against want, errors by sentinel (nil:
// success).
func requireFetches(t *testing.T, want []keyFetchEvent, got []keyFetchEvent) {
	t.Helper()
	require.Len(t, got, len(want), "%+v", got)
	for i := range want {
		require.Equal(t, want[i].server, got[i].server, "event %d", i)
		require.Equal(t, want[i].source, got[i].source, "event %d", i)
		if want[i].err == nil {
			require.NoError(t, got[i].err, "event %d", i)
		} else {
			require.ErrorIs(t, got[i].err, want[i].err, "event %d", i)
		}
	}
}

func TestTraceKeyFetchPinned(t *testing.T) {
	k := newKey(t)
	recorder := &traceRecorder{}
	v, err := NewVerifier(VerifierConfig{
		ServerNames:        []string{ourName},
		StaticKeys:         map[string]map[string]ed25519.PublicKey{remoteName: {k.ID: k.Public()}},
		DisableKeyFetching: true,
		Trace:              recorder.trace(t),
	})
	require.NoError(t, err)

	_, err = v.Authenticate(signedRequest(t, k, http.MethodGet, backfillURI, nil))
	require.NoError(t, err)
	_, err = v.Authenticate(signedRequest(t, &SigningKey{ID: "ed25519:other", Private: k.Private}, http.MethodGet, backfillURI, nil))
	require.ErrorIs(t, err, ErrUnknownKey)

	fetches, decisions := recorder.take()
	requireFetches(t, []keyFetchEvent{
		{remoteName, "pinned", nil},
		{remoteName, "pinned", ErrUnknownKey},
	}, fetches)
	require.Empty(t, decisions, "pinned keys never wait")
}

func TestTraceKeyFetchDirectNotaryAndCache(t *testing.T) {
	const notaryName = "notary.example.org"
	clock := newFakeClock()
	k, notaryKey := newKey(t), newKey(t)
	var originDown bool
	var mu sync.Mutex
	document := KeyDocumentHandler(remoteName, []*SigningKey{k}, time.Hour, clock.Now)
	origin := newKeyServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		down := originDown
		mu.Unlock()
		if down {
			http.Error(w, "down", http.StatusBadGateway)
			return
		}
		document.ServeHTTP(w, r)
	}))
	notary := newKeyServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		doc, err := KeyDocument(remoteName, []*SigningKey{k}, clock.Now().Add(time.Hour))
		require.NoError(t, err)
		countersigned, err := gomatrixserverlib.SignJSON(notaryName, gomatrixserverlib.KeyID(notaryKey.ID), notaryKey.Private, doc)
		require.NoError(t, err)
		_, _ = w.Write([]byte(`{"server_keys":[` + string(countersigned) + `]}`))
	}))
	recorder := &traceRecorder{}
	v := fetchingVerifier(t, origin, clock, func(c *VerifierConfig) {
		c.Resolve[notaryName] = notary.URL
		c.Notaries = []Notary{{ServerName: notaryName, Keys: map[string]ed25519.PublicKey{notaryKey.ID: notaryKey.Public()}}}
		c.FailureCacheTTL = 10 * time.Second
		c.Trace = recorder.trace(t)
	})

	// A fetch: the origin answers, the notary is not asked.
	requireAccepted(t, v, k)
	fetches, decisions := recorder.take()
	requireFetches(t, []keyFetchEvent{{remoteName, "direct", nil}}, fetches)
	require.Equal(t, []string{"admitted " + remoteName}, decisions)

	// From the cache, a key and an unknown key ID.
	requireAccepted(t, v, k)
	requireUnauthorized(t, v, &SigningKey{ID: "ed25519:forged", Private: k.Private}, "does not publish key")
	fetches, decisions = recorder.take()
	requireFetches(t, []keyFetchEvent{{remoteName, "cache", nil}, {remoteName, "cache", ErrUnknownKey}}, fetches)
	require.Empty(t, decisions)

	// The origin fails, the notary answers.
	mu.Lock()
	originDown = true
	mu.Unlock()
	clock.Advance(time.Hour + time.Second)
	requireAccepted(t, v, k)
	fetches, _ = recorder.take()
	require.Len(t, fetches, 2)
	require.Equal(t, keyFetchEvent{remoteName, "direct", fetches[0].err}, fetches[0])
	require.ErrorContains(t, fetches[0].err, "HTTP status 502")
	requireFetches(t, []keyFetchEvent{{remoteName, "notary", nil}}, fetches[1:])
}

// namedFetcher is a custom KeyFetcher answering with one key.
type namedFetcher struct {
	key *SigningKey
	now func() time.Time
}

func (f namedFetcher) FetcherName() string { return "homeserver key ring" }

func (f namedFetcher) FetchKeys(_ context.Context, requests map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp) (map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult, error) {
	results := map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult{}
	for r := range requests {
		results[gomatrixserverlib.PublicKeyLookupRequest{ServerName: r.ServerName, KeyID: gomatrixserverlib.KeyID(f.key.ID)}] = gomatrixserverlib.PublicKeyLookupResult{
			VerifyKey:    gomatrixserverlib.VerifyKey{Key: spec.Base64Bytes(f.key.Public())},
			ValidUntilTS: spec.AsTimestamp(f.now().Add(time.Hour)),
			ExpiredTS:    gomatrixserverlib.PublicKeyNotExpired,
		}
	}
	return results, nil
}

func TestTraceKeyFetchCustomFetcher(t *testing.T) {
	k := newKey(t)
	recorder := &traceRecorder{}
	v, err := NewVerifier(VerifierConfig{
		ServerNames: []string{ourName},
		KeyFetchers: []gomatrixserverlib.KeyFetcher{namedFetcher{key: k, now: time.Now}},
		Trace:       recorder.trace(t),
	})
	require.NoError(t, err)
	requireAccepted(t, v, k)
	fetches, _ := recorder.take()
	requireFetches(t, []keyFetchEvent{{remoteName, "homeserver key ring", nil}}, fetches)
}

func TestNilTraceFieldsAreSkipped(t *testing.T) {
	k := newKey(t)
	for _, trace := range []*VerifierTrace{nil, {}} {
		v, err := NewVerifier(VerifierConfig{
			ServerNames: []string{ourName},
			KeyFetchers: []gomatrixserverlib.KeyFetcher{namedFetcher{key: k, now: time.Now}},
			Trace:       trace,
		})
		require.NoError(t, err)
		requireAccepted(t, v, k)
		requireAccepted(t, v, k)
	}
}
