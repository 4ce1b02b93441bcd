package sign

import "time"

// VerifierTrace holds optional callbacks that let an operator see the
// verifier's key lookups and its limit on requests waiting for key
// fetches, for metrics or tracing. Like net/http/httptrace.ClientTrace,
// every field may be nil, and a nil field costs nothing. Callbacks must be
// safe for concurrent use and return quickly: they run on the request's
// goroutine, or on the fetch's for the key servers a fetch asks.
type VerifierTrace struct {
	// KeyFetch is called once for each key lookup answered without a
	// fetch, with source "pinned" (VerifierConfig.StaticKeys) or "cache",
	// and once for each key server a fetch asks, with source "direct"
	// (the origin's own), "notary", or a KeyFetchers entry's
	// FetcherName(). Requests that share a fetch share its calls. server
	// is the origin whose keys were looked up; duration is how long the
	// lookup or request took; err is nil on success, else why: for
	// "pinned" and "cache", why there is no usable key (ErrUnknownKey,
	// or a remembered ErrKeyServerUnreachable); for a key server, why it
	// gave no answer (an answer without the key is a success).
	KeyFetch func(server, source string, duration time.Duration, err error)

	// Pending is called for each request that needs a key fetch, with
	// the limiter's decision: "admitted" (it waits for the fetch),
	// "rejected_origin" (VerifierConfig.MaxPendingPerOrigin requests
	// already wait for that origin's keys) or "rejected_total"
	// (VerifierConfig.MaxPendingKeyFetches requests already wait). origin
	// is the origin the request claims.
	Pending func(decision, origin string)
}

// keyFetch calls t.KeyFetch, if set, with the time since start.
func (t *VerifierTrace) keyFetch(server, source string, start time.Time, err error) {
	if t != nil && t.KeyFetch != nil {
		t.KeyFetch(server, source, time.Since(start), err)
	}
}

// pending calls t.Pending, if set.
func (t *VerifierTrace) pending(decision, origin string) {
	if t != nil && t.Pending != nil {
		t.Pending(decision, origin)
	}
}
