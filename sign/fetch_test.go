package sign

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/stretchr/testify/require"
)

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
