package sign

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// How /.well-known/matrix/server answers are fetched and cached. The spec
// asks for a cache honouring Cache-Control, 24 hours by default, at most
// 48, errors for up to an hour; the rest are Synapse's figures
// (synapse/http/federation/well_known_resolver.py).
const (
	wellKnownPath = "/.well-known/matrix/server"
	// maxWellKnownBytes caps the answer (Synapse: 50 KiB).
	maxWellKnownBytes = 50 << 10
	// maxWellKnownRedirects is how many redirects are followed: the spec
	// says to follow them and avoid loops; each must be https.
	maxWellKnownRedirects = 3

	wellKnownDefaultTTL = 24 * time.Hour
	wellKnownMaxTTL     = 48 * time.Hour
	wellKnownMinTTL     = 5 * time.Minute // Synapse: also what "no-store" gets
	// wellKnownFailureTTL is how long a failure is remembered.
	wellKnownFailureTTL = time.Hour
	// wellKnownDownTTL is how long a failure is remembered for a host
	// that had a valid answer lately (Synapse: 2 minutes); after a
	// temporary failure (no connection, 5xx, too large) that answer keeps
	// being used meanwhile.
	wellKnownDownTTL = 2 * time.Minute
	// wellKnownRememberValid is how long a valid answer is kept past its
	// expiry for that purpose (Synapse: 2 hours).
	wellKnownRememberValid = 2 * time.Hour
)

// wellKnownCache looks up and caches .well-known delegations.
type wellKnownCache struct {
	client *http.Client
	// port is 443; tests change it.
	port int
	now  func() time.Time

	mu      sync.Mutex
	entries *lru[string, wellKnownEntry]
}

// wellKnownEntry is what a host's .well-known said, until freshUntil.
type wellKnownEntry struct {
	delegated  serverName
	ok         bool // delegated is valid: the answer was
	freshUntil time.Time
}

func newWellKnownCache(tr http.RoundTripper, maxEntries int, now func() time.Time) *wellKnownCache {
	return &wellKnownCache{
		client: &http.Client{
			Transport: tr,
			CheckRedirect: func(r *http.Request, via []*http.Request) error {
				if len(via) > maxWellKnownRedirects {
					return fmt.Errorf("more than %d redirects", maxWellKnownRedirects)
				}
				if r.URL.Scheme != "https" {
					return fmt.Errorf("redirect to %s: only https is followed", r.URL.Scheme)
				}
				return nil
			},
		},
		port:    443,
		now:     now,
		entries: newLRU[string, wellKnownEntry](maxEntries),
	}
}

// lookup returns the server hostname delegates to, and false when its
// .well-known does not delegate (no answer, or an invalid one). Lookups of
// one host are not merged: each comes from a key fetch of its own, and
// those are already one per server at a time.
func (w *wellKnownCache) lookup(ctx context.Context, hostname string) (serverName, bool) {
	now := w.now()
	w.mu.Lock()
	previous, known := w.entries.get(hostname, now)
	w.mu.Unlock()
	if known && now.Before(previous.freshUntil) {
		return previous.delegated, previous.ok
	}

	delegated, ttl, temporary, err := w.fetch(ctx, hostname)
	if ctx.Err() != nil {
		// Our own deadline or cancellation, not the host's failure:
		// nothing to remember. A previous answer is still the best guess.
		return previous.delegated, known && previous.ok
	}
	now = w.now()
	entry := wellKnownEntry{delegated: delegated, ok: err == nil, freshUntil: now.Add(ttl)}
	switch {
	case err == nil:
	case known && previous.ok && temporary:
		entry = wellKnownEntry{delegated: previous.delegated, ok: true, freshUntil: now.Add(wellKnownDownTTL)}
	case known && previous.ok:
		entry.freshUntil = now.Add(wellKnownDownTTL)
	default:
		entry.freshUntil = now.Add(wellKnownFailureTTL)
	}
	expires := entry.freshUntil
	if entry.ok {
		expires = expires.Add(wellKnownRememberValid)
	}
	w.mu.Lock()
	w.entries.put(hostname, entry, expires)
	w.mu.Unlock()
	return entry.delegated, entry.ok
}

// fetch asks hostname for its .well-known. temporary tells a failure that
// may pass (no connection, a 5xx status, a too large answer) from an
// answer that is not a delegation (another status, invalid JSON).
func (w *wellKnownCache) fetch(ctx context.Context, hostname string) (delegated serverName, ttl time.Duration, temporary bool, err error) {
	host := hostname
	if w.port != 443 {
		host = net.JoinHostPort(hostname, strconv.Itoa(w.port))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+host+wellKnownPath, nil)
	if err != nil {
		return serverName{}, 0, false, err
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return serverName{}, 0, true, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxWellKnownBytes+1))
	switch {
	case err != nil:
		return serverName{}, 0, true, err
	case len(body) > maxWellKnownBytes:
		return serverName{}, 0, true, fmt.Errorf("answer larger than %d bytes", maxWellKnownBytes)
	case resp.StatusCode >= 500:
		return serverName{}, 0, true, fmt.Errorf("HTTP status %d", resp.StatusCode)
	case resp.StatusCode != http.StatusOK:
		return serverName{}, 0, false, fmt.Errorf("HTTP status %d", resp.StatusCode)
	}
	delegated, err = parseWellKnown(body)
	if err != nil {
		return serverName{}, 0, false, err
	}
	return delegated, wellKnownTTL(resp.Header, w.now()), false, nil
}

// parseWellKnown reads the delegated server name out of a
// /.well-known/matrix/server answer: a JSON object whose "m.server" (the
// exact key) is a string holding a valid server name. Other members are
// ignored; with duplicate keys the last one counts (as in Python's json,
// which Synapse uses).
func parseWellKnown(body []byte) (serverName, error) {
	var object map[string]json.RawMessage
	if err := json.Unmarshal(body, &object); err != nil {
		return serverName{}, fmt.Errorf("not a JSON object: %w", err)
	}
	raw, ok := object["m.server"]
	if !ok {
		return serverName{}, errors.New(`no "m.server"`)
	}
	var name string
	if err := json.Unmarshal(raw, &name); err != nil {
		return serverName{}, fmt.Errorf(`"m.server" is not a string: %w`, err)
	}
	delegated, err := parseServerName(name)
	if err != nil {
		return serverName{}, fmt.Errorf(`"m.server": %q: %w`, name, err)
	}
	return delegated, nil
}

// wellKnownTTL is how long to cache an answer with these headers, read as
// Synapse reads them: "no-store" is 0, then max-age, then Expires (an
// invalid date is 0: RFC 9111 has it mean "already expired"), and
// without any, the default; bounded by wellKnownMinTTL and wellKnownMaxTTL.
func wellKnownTTL(header http.Header, now time.Time) time.Duration {
	ttl, ok := cacheControlTTL(header, now)
	switch {
	case !ok:
		return wellKnownDefaultTTL
	case ttl < wellKnownMinTTL:
		return wellKnownMinTTL
	case ttl > wellKnownMaxTTL:
		return wellKnownMaxTTL
	}
	return ttl
}

// cacheControlTTL reads a lifetime from Cache-Control and Expires; ok is
// false when they give none.
func cacheControlTTL(header http.Header, now time.Time) (ttl time.Duration, ok bool) {
	maxAge, hasMaxAge := "", false
	for _, value := range header.Values("Cache-Control") {
		for directive := range strings.SplitSeq(value, ",") {
			name, arg, _ := strings.Cut(directive, "=")
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "no-store":
				return 0, true
			case "max-age":
				maxAge, hasMaxAge = strings.TrimSpace(arg), true
			}
		}
	}
	if hasMaxAge {
		seconds, err := strconv.ParseInt(maxAge, 10, 64)
		switch {
		case errors.Is(err, strconv.ErrRange) && seconds > 0:
			return wellKnownMaxTTL, true
		case err == nil && seconds > int64(wellKnownMaxTTL/time.Second):
			return wellKnownMaxTTL, true
		case err == nil:
			return time.Duration(max(seconds, 0)) * time.Second, true
		}
		// Not a number: as if absent (Synapse).
	}
	if expires := header.Values("Expires"); len(expires) > 0 {
		when, err := http.ParseTime(expires[len(expires)-1])
		if err != nil {
			return 0, true
		}
		return max(when.Sub(now), 0), true
	}
	return 0, false
}
