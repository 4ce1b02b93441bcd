package sign

import (
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"time"

	"github.com/fedhistory/fedhistory/internal/setting"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// Errors Authenticate returns, wrapped with details. The fedhistory handler
// answers the first group with 401 M_UNAUTHORIZED, the others as noted.
var (
	ErrMissingAuthorization   = errors.New("missing X-Matrix Authorization header")
	ErrMalformedAuthorization = errors.New("malformed X-Matrix Authorization header")
	ErrWrongDestination       = errors.New("X-Matrix destination is not this server")
	ErrUnknownKey             = errors.New("unknown signing key")
	ErrBadSignature           = errors.New("bad X-Matrix signature")
	ErrKeyServerUnreachable   = errors.New("could not fetch the origin's signing keys")

	// ErrTooManyPendingKeyFetches: the request needs a fetch of its
	// origin's keys, and VerifierConfig.MaxPendingPerOrigin or
	// MaxPendingKeyFetches requests already wait for one. 429
	// M_LIMIT_EXCEEDED: the peer may retry.
	ErrTooManyPendingKeyFetches = errors.New("too many requests are waiting for key fetches")

	ErrNotJSON  = errors.New("request body is not JSON")          // 400 M_NOT_JSON
	ErrBadJSON  = errors.New("request body is not a JSON object") // 400 M_BAD_JSON
	ErrBodyRead = errors.New("could not read request body")       // 400 M_UNKNOWN; 413 M_TOO_LARGE if it wraps *http.MaxBytesError
)

// Defaults for VerifierConfig's zero values.
const (
	DefaultKeyFetchTimeout      = 10 * time.Second
	DefaultFailureCacheTTL      = 30 * time.Second
	DefaultMaxCachedServers     = 10000
	DefaultMaxPendingPerOrigin  = 16
	DefaultMaxPendingKeyFetches = 256
)

// Notary is a trusted key server queried through /_matrix/key/v2/query
// when an origin's own key server does not give us its key.
type Notary struct {
	// ServerName is the notary's server name.
	ServerName string
	// Keys are the notary's public keys by key ID; its answers must be
	// signed by one of them.
	Keys map[string]ed25519.PublicKey
}

// VerifierConfig configures a Verifier. Every field but ServerNames may be
// left zero.
type VerifierConfig struct {
	// ServerNames are this server's names. A request whose X-Matrix header
	// names a destination must name one of them. Required.
	ServerNames []string

	// StaticKeys pins public keys: origin server name → key ID → key. An
	// origin listed here is authenticated by its pinned keys only and its
	// keys are never fetched; pinned keys do not expire. For tests and
	// private federations.
	StaticKeys map[string]map[string]ed25519.PublicKey

	// DisableKeyFetching makes StaticKeys the only keys: requests from any
	// other origin fail with ErrKeyServerUnreachable.
	DisableKeyFetching bool

	// Notaries are asked, in order, when an origin's own key server does
	// not give us the key (Synapse asks notaries first; we ask the origin
	// first because its own answer is authoritative).
	Notaries []Notary

	// KeyFetchers, when non-empty, replace the built-in key sources (the
	// origin's key server, then Notaries) entirely: for a homeserver that
	// has a key ring of its own. They make their own connections, so
	// DenyNetworks, Transport and Resolve do not apply to them.
	KeyFetchers []gomatrixserverlib.KeyFetcher

	// Transport, when set, carries key requests in place of the built-in
	// server discovery (.well-known, SRV, port 8448) and dialer. Requests
	// reach it with URLs "matrix://<server name>/_matrix/key/…"; resolving
	// the name, and refusing internal addresses, is its job: DenyNetworks
	// does not apply to it.
	Transport http.RoundTripper

	// Resolve maps server names to base URLs ("http://127.0.0.1:8448")
	// that key requests for that server go to directly, bypassing
	// discovery and, by design, DenyNetworks. For tests and tools.
	Resolve map[string]string

	// DenyNetworks are CIDR ranges ("10.0.0.0/8") no key request ever
	// connects to: not the .well-known lookup nor any of its redirects,
	// not an SRV target, not the key server, not a notary. Every address
	// is checked when it is dialled, after every resolution. Nil means
	// DefaultDenyNetworks; an empty non-nil slice allows all.
	DenyNetworks []string

	// KeyFetchTimeout bounds one key fetch, including discovery. Default
	// DefaultKeyFetchTimeout.
	KeyFetchTimeout time.Duration

	// FailureCacheTTL is how long the outcome of a key fetch that did not
	// give the wanted key is remembered (server unreachable, key unknown,
	// expired), so that a dead or hostile key server costs at most one
	// fetch per TTL, whatever key IDs requests name, rather than one per
	// request. Default DefaultFailureCacheTTL.
	FailureCacheTTL time.Duration

	// MaxCachedServers bounds each of the verifier's caches: how many
	// servers' keys it holds, how many fetch failures it remembers, and
	// how many .well-known answers. Default DefaultMaxCachedServers.
	MaxCachedServers int

	// MaxPendingPerOrigin bounds the requests claiming one origin that
	// wait for a fetch of its keys (they share the fetch); beyond it a
	// request fails with ErrTooManyPendingKeyFetches. Requests whose key
	// is pinned or cached never wait, and never count. Default
	// DefaultMaxPendingPerOrigin.
	MaxPendingPerOrigin int

	// MaxPendingKeyFetches bounds the requests waiting for key fetches,
	// all origins together, and so the fetches running: a fetch nobody
	// waits for any more is cancelled. Beyond it:
	// ErrTooManyPendingKeyFetches. Default DefaultMaxPendingKeyFetches.
	MaxPendingKeyFetches int

	// Logger receives one line per key fetch that failed (Info: server,
	// key_id, error), however many requests waited for it, and one per
	// rejected request (Debug: method, uri, origin, key_id, error).
	// Signatures and bodies are never logged. Default slog.Default(), as
	// for the fedhistory handler.
	Logger *slog.Logger

	// Trace, when set, is told of key lookups and of the pending-fetch
	// limit's decisions.
	Trace *VerifierTrace

	// Now is the clock for key validity and the caches. Default time.Now.
	Now func() time.Time
}

// Verifier authenticates incoming federation requests by their X-Matrix
// Authorization headers. It is safe for concurrent use.
type Verifier struct {
	serverNames []string
	keys        *keyring
	logger      *slog.Logger
}

// network is how the verifier reaches key servers: the resolver, the TLS
// roots and the spec's ports. Tests replace them.
type network struct {
	resolver      resolver
	tlsConfig     *tls.Config // nil: the system's roots
	wellKnownPort int
	matrixPort    int
}

var internet = network{resolver: net.DefaultResolver, wellKnownPort: 443, matrixPort: defaultMatrixPort}

// NewVerifier checks cfg and builds a Verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	return newVerifier(cfg, internet)
}

func newVerifier(cfg VerifierConfig, nw network) (*Verifier, error) {
	if len(cfg.ServerNames) == 0 {
		return nil, errors.New("sign: VerifierConfig.ServerNames is empty")
	}
	for _, name := range cfg.ServerNames {
		if _, err := parseServerName(name); err != nil {
			return nil, fmt.Errorf("sign: VerifierConfig.ServerNames: %q is not a valid server name", name)
		}
	}
	static := map[string]map[string]ed25519.PublicKey{}
	for server, keys := range cfg.StaticKeys {
		static[server] = map[string]ed25519.PublicKey{}
		for id, key := range keys {
			if len(key) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("sign: StaticKeys[%q][%q] is %d bytes, want %d", server, id, len(key), ed25519.PublicKeySize)
			}
			static[server][id] = key
		}
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	timeout := cfg.KeyFetchTimeout
	setting.Default(&timeout, DefaultKeyFetchTimeout)
	failureTTL := cfg.FailureCacheTTL
	setting.Default(&failureTTL, DefaultFailureCacheTTL)
	maxServers := cfg.MaxCachedServers
	setting.Default(&maxServers, DefaultMaxCachedServers)
	maxPerOrigin := cfg.MaxPendingPerOrigin
	setting.Default(&maxPerOrigin, DefaultMaxPendingPerOrigin)
	maxPending := cfg.MaxPendingKeyFetches
	setting.Default(&maxPending, DefaultMaxPendingKeyFetches)

	keys := &keyring{
		static:       static,
		timeout:      timeout,
		now:          now,
		logger:       logger,
		trace:        cfg.Trace,
		maxPerOrigin: maxPerOrigin,
		maxPending:   maxPending,
		cache:        newKeyCache(maxServers, failureTTL),
		flights:      map[string]*flight{},
	}
	if !cfg.DisableKeyFetching {
		sources, err := keySources(cfg, nw, maxServers, now)
		if err != nil {
			return nil, fmt.Errorf("sign: %w", err)
		}
		keys.fetch = fetchFrom(sources, now, cfg.Trace)
	}
	return &Verifier{
		serverNames: slices.Clone(cfg.ServerNames),
		keys:        keys,
		logger:      logger,
	}, nil
}

// keySources builds the sources keys are fetched from: cfg.KeyFetchers, or
// the origin's own key server followed by the notaries, all through one
// keyClient.
func keySources(cfg VerifierConfig, nw network, maxServers int, now func() time.Time) ([]keySource, error) {
	if len(cfg.KeyFetchers) > 0 {
		sources := make([]keySource, len(cfg.KeyFetchers))
		for i, fetcher := range cfg.KeyFetchers {
			sources[i] = fetcherSource(fetcher.FetcherName(), fetcher, now)
		}
		return sources, nil
	}

	client, err := newKeyClient(cfg, nw, maxServers, now)
	if err != nil {
		return nil, err
	}
	sources := []keySource{directSource(client)}
	for _, notary := range cfg.Notaries {
		if notary.ServerName == "" || len(notary.Keys) == 0 {
			return nil, fmt.Errorf("notary %q needs a server name and at least one key", notary.ServerName)
		}
		keys := map[gomatrixserverlib.KeyID]ed25519.PublicKey{}
		for id, key := range notary.Keys {
			if len(key) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("notary %q key %q is %d bytes", notary.ServerName, id, len(key))
			}
			keys[gomatrixserverlib.KeyID(id)] = key
		}
		sources = append(sources, notarySource(&gomatrixserverlib.PerspectiveKeyFetcher{
			PerspectiveServerName: spec.ServerName(notary.ServerName),
			PerspectiveServerKeys: keys,
			Client:                client,
		}, now))
	}
	return sources, nil
}

// newKeyClient builds the client key requests go through: Resolve's
// overrides, cfg.Transport, or discovery over the guarded dialer.
func newKeyClient(cfg VerifierConfig, nw network, maxServers int, now func() time.Time) (*keyClient, error) {
	overrides, err := parseOverrides(cfg.Resolve)
	if err != nil {
		return nil, err
	}
	client := &keyClient{overrides: overrides, custom: cfg.Transport, tlsConfig: nw.tlsConfig}
	if len(overrides) > 0 {
		// Resolve is for tests and tools: a plain transport, no deny list.
		plain := &http.Transport{}
		if defaultTransport, ok := http.DefaultTransport.(*http.Transport); ok {
			plain = defaultTransport.Clone() // its timeouts, our own pool
		}
		plain.Proxy = nil
		client.overridden = plain
	}
	if cfg.Transport != nil {
		return client, nil
	}
	denyNetworks := cfg.DenyNetworks
	if denyNetworks == nil {
		denyNetworks = DefaultDenyNetworks
	}
	deny, err := parseDenyNetworks(denyNetworks)
	if err != nil {
		return nil, err
	}
	client.dialer = newDialer(deny, nw.resolver)
	wellKnownTLS := &tls.Config{MinVersion: tls.VersionTLS12}
	if nw.tlsConfig != nil {
		wellKnownTLS = nw.tlsConfig.Clone()
	}
	wellKnown := newWellKnownCache(client.dialer.transport(wellKnownTLS), maxServers, now)
	wellKnown.port = nw.wellKnownPort
	client.discovery = &discovery{resolver: nw.resolver, wellKnown: wellKnown, matrixPort: nw.matrixPort}
	return client, nil
}
