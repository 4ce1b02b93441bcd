package sign

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// fetchFunc fetches server's keys, wantKeyID first among them. It fails
// (wrapping ErrKeyServerUnreachable) only when no key source answered at
// all.
type fetchFunc func(ctx context.Context, server, wantKeyID string) (fetchResult, error)

// keyLookups is what a key source answers: keys by server and key ID.
type keyLookups = map[gomatrixserverlib.PublicKeyLookupRequest]gomatrixserverlib.PublicKeyLookupResult

// keySource is one place keys are fetched from.
type keySource struct {
	// name says which: "direct" (the origin's own key server), "notary",
	// or a custom fetcher's FetcherName.
	name  string
	fetch func(ctx context.Context, server, keyID string) (keyLookups, error)
}

// directSource fetches a server's keys from the server itself
// (/_matrix/key/v2/server), checking the document is the server's and
// signed by each of its keys.
func directSource(client *keyClient) keySource {
	return keySource{name: "direct", fetch: func(ctx context.Context, server, _ string) (keyLookups, error) {
		keys, err := client.GetServerKeys(ctx, spec.ServerName(server))
		if err != nil {
			return nil, err
		}
		// The epoch as "now": validity is judged by fetchFrom, not here.
		checks, _ := gomatrixserverlib.CheckKeys(spec.ServerName(server), time.Unix(0, 0), keys)
		if !checks.AllChecksOK {
			return nil, fmt.Errorf("key document of %s is not its own or not self-signed by each key", server)
		}
		return lookupResults(keys), nil
	}}
}

// lookupResults lists a checked key document's keys: current ones valid
// until its valid_until_ts, old ones with their expired_ts.
func lookupResults(keys gomatrixserverlib.ServerKeys) keyLookups {
	results := keyLookups{}
	for id, key := range keys.VerifyKeys {
		results[gomatrixserverlib.PublicKeyLookupRequest{ServerName: keys.ServerName, KeyID: id}] = gomatrixserverlib.PublicKeyLookupResult{
			VerifyKey: key, ValidUntilTS: keys.ValidUntilTS, ExpiredTS: gomatrixserverlib.PublicKeyNotExpired,
		}
	}
	// A key listed in both is taken as retired.
	for id, key := range keys.OldVerifyKeys {
		results[gomatrixserverlib.PublicKeyLookupRequest{ServerName: keys.ServerName, KeyID: id}] = gomatrixserverlib.PublicKeyLookupResult{
			VerifyKey: key.VerifyKey, ValidUntilTS: gomatrixserverlib.PublicKeyNotValid, ExpiredTS: key.ExpiredTS,
		}
	}
	return results
}

// notarySource asks a notary (/_matrix/key/v2/query) through
// gomatrixserverlib's PerspectiveKeyFetcher, which checks the answer is
// signed by the notary and each document by its server.
func notarySource(fetcher *gomatrixserverlib.PerspectiveKeyFetcher, now func() time.Time) keySource {
	return fetcherSource("notary", fetcher, now)
}

// fetcherSource asks a gomatrixserverlib.KeyFetcher.
func fetcherSource(name string, fetcher gomatrixserverlib.KeyFetcher, now func() time.Time) keySource {
	return keySource{name: name, fetch: func(ctx context.Context, server, keyID string) (keyLookups, error) {
		return fetcher.FetchKeys(ctx, map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp{
			{ServerName: spec.ServerName(server), KeyID: gomatrixserverlib.KeyID(keyID)}: spec.AsTimestamp(now()),
		})
	}}
}

// fetchFrom returns a fetchFunc that asks each source in turn until one
// gives a current, unexpired wantKeyID, merging what they say. Keys listed
// only in old_verify_keys are never usable: they remain valid for old event
// signatures, not for authenticating new requests. trace is told of each
// source asked.
func fetchFrom(sources []keySource, now func() time.Time, trace *VerifierTrace) fetchFunc {
	return func(ctx context.Context, server, wantKeyID string) (fetchResult, error) {
		result := fetchResult{keys: map[string]fetchedKey{}, expired: map[string]bool{}, old: map[string]bool{}}
		want := gomatrixserverlib.PublicKeyLookupRequest{ServerName: spec.ServerName(server), KeyID: gomatrixserverlib.KeyID(wantKeyID)}
		var failures []error
		answered := false
		for _, source := range sources {
			start := time.Now()
			found, err := source.fetch(ctx, server, wantKeyID)
			trace.keyFetch(server, source.name, start, err)
			if err != nil {
				failures = append(failures, fmt.Errorf("%s: %w", source.name, err))
				continue
			}
			for r, k := range found {
				if r.ServerName != want.ServerName {
					continue
				}
				answered = true
				id := string(r.KeyID)
				_, known := result.keys[id]
				switch {
				case known:
				case len(result.keys)+len(result.expired)+len(result.old) >= maxKeysPerServer && r != want:
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
				break // a later source (a notary) is only asked when needed
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
