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
// (wrapping ErrKeyServerUnreachable) only when no key server answered at
// all.
type fetchFunc func(ctx context.Context, server, wantKeyID string) (fetchResult, error)

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
