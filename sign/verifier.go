package sign

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
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

	ErrNotJSON  = errors.New("request body is not JSON")          // 400 M_NOT_JSON
	ErrBadJSON  = errors.New("request body is not a JSON object") // 400 M_BAD_JSON
	ErrBodyRead = errors.New("could not read request body")       // 400 M_UNKNOWN; 413 M_TOO_LARGE if it wraps *http.MaxBytesError
)

// Defaults for VerifierConfig's zero values.
const (
	DefaultKeyFetchTimeout  = 10 * time.Second
	DefaultFailureCacheTTL  = 30 * time.Second
	DefaultMaxCachedServers = 10000
)

// DefaultDenyNetworks are the address ranges keys are never fetched from
// unless VerifierConfig.DenyNetworks says otherwise: loopback, private,
// link-local, multicast and documentation ranges, as in Synapse's default
// ip_range_blacklist. Without it any peer could make us send requests into
// our own network by naming an internal address as its origin.
var DefaultDenyNetworks = []string{
	"0.0.0.0/8", "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
	"100.64.0.0/10", "192.0.0.0/24", "169.254.0.0/16", "192.88.99.0/24",
	"198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
	"224.0.0.0/4", "::/128", "::1/128", "fe80::/10", "fc00::/7", "2001:db8::/32",
	"ff00::/8", "fec0::/10",
}

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

	// KeyFetchers, when non-empty, replace the built-in fetchers (direct,
	// then Notaries) entirely.
	KeyFetchers []gomatrixserverlib.KeyFetcher

	// Transport, when set, carries key requests in place of fclient's
	// server discovery (well-known, SRV, port 8448). Requests reach it with
	// URLs "matrix://<server name>/_matrix/key/…"; resolving the name is
	// its job. DenyNetworks does not apply to it.
	Transport http.RoundTripper

	// Resolve maps server names to base URLs ("http://127.0.0.1:8448")
	// that key requests for that server go to directly, bypassing
	// discovery and DenyNetworks. For tests and tools.
	Resolve map[string]string

	// DenyNetworks are CIDR ranges key servers are never fetched from. Nil
	// means DefaultDenyNetworks; an empty non-nil slice allows all.
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

	// MaxCachedServers bounds the key cache: how many servers' keys (or
	// remembered failures) it holds. Default DefaultMaxCachedServers.
	MaxCachedServers int

	// Logger receives one line per rejected request and per key fetch
	// failure. Nil logs nothing.
	Logger *slog.Logger

	// Now is the clock for key validity. Default time.Now.
	Now func() time.Time
}

// Verifier authenticates incoming federation requests by their X-Matrix
// Authorization headers. It is safe for concurrent use.
type Verifier struct {
	serverNames []string
	keys        *keyring
	logger      *slog.Logger
}

// NewVerifier checks cfg and builds a Verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
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
		logger = slog.New(slog.DiscardHandler)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	timeout := cfg.KeyFetchTimeout
	if timeout <= 0 {
		timeout = DefaultKeyFetchTimeout
	}
	failureTTL := cfg.FailureCacheTTL
	if failureTTL <= 0 {
		failureTTL = DefaultFailureCacheTTL
	}
	maxServers := cfg.MaxCachedServers
	if maxServers <= 0 {
		maxServers = DefaultMaxCachedServers
	}

	keys := &keyring{
		static:  static,
		timeout: timeout,
		now:     now,
		logger:  logger,
		cache:   newKeyCache(maxServers, failureTTL),
		flights: map[string]*flight{},
	}
	if !cfg.DisableKeyFetching {
		fetchers := cfg.KeyFetchers
		if len(fetchers) == 0 {
			var err error
			if fetchers, err = defaultFetchers(cfg, timeout); err != nil {
				return nil, err
			}
		}
		keys.fetch = fetchWith(fetchers, now)
	}
	v := &Verifier{
		serverNames: slices.Clone(cfg.ServerNames),
		keys:        keys,
		logger:      logger,
	}
	return v, nil
}

// defaultFetchers builds the direct fetcher (the origin's own
// /_matrix/key/v2/server, self-signature checked by gomatrixserverlib)
// followed by one perspective fetcher per notary.
func defaultFetchers(cfg VerifierConfig, timeout time.Duration) ([]gomatrixserverlib.KeyFetcher, error) {
	overrides, err := parseOverrides(cfg.Resolve)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	client := &keyClient{overrides: overrides}
	if cfg.Transport != nil {
		client.discovery = fclient.NewClient(fclient.WithTransport(cfg.Transport), fclient.WithTimeout(timeout))
	} else {
		deny := cfg.DenyNetworks
		if deny == nil {
			deny = DefaultDenyNetworks
		}
		options := []fclient.ClientOption{fclient.WithWellKnownSRVLookups(true), fclient.WithTimeout(timeout)}
		if len(deny) > 0 {
			// fclient allows only what the allow list names, so allow
			// everything and let the deny list carve out.
			options = append(options, fclient.WithAllowDenyNetworks([]string{"0.0.0.0/0", "::/0"}, deny))
		}
		client.discovery = fclient.NewClient(options...)
	}
	if len(overrides) > 0 {
		var plain http.RoundTripper = http.DefaultTransport
		if t, ok := plain.(*http.Transport); ok {
			plain = t.Clone() // our own connection pool
		}
		client.overridden = fclient.NewClient(
			fclient.WithTransport(&overrideTransport{overrides: overrides, next: plain}),
			fclient.WithTimeout(timeout),
		)
	}

	fetchers := []gomatrixserverlib.KeyFetcher{&gomatrixserverlib.DirectKeyFetcher{
		Client: client,
		// Our own keys are fetched like anyone's (or pinned in StaticKeys).
		IsLocalServerName: func(spec.ServerName) bool { return false },
	}}
	for _, notary := range cfg.Notaries {
		if notary.ServerName == "" || len(notary.Keys) == 0 {
			return nil, fmt.Errorf("sign: notary %q needs a server name and at least one key", notary.ServerName)
		}
		keys := map[gomatrixserverlib.KeyID]ed25519.PublicKey{}
		for id, key := range notary.Keys {
			if len(key) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("sign: notary %q key %q is %d bytes", notary.ServerName, id, len(key))
			}
			keys[gomatrixserverlib.KeyID(id)] = key
		}
		fetchers = append(fetchers, &gomatrixserverlib.PerspectiveKeyFetcher{
			PerspectiveServerName: spec.ServerName(notary.ServerName),
			PerspectiveServerKeys: keys,
			Client:                client,
		})
	}
	return fetchers, nil
}

// publicKey finds origin's key: pinned, cached, or fetched.
func (v *Verifier) publicKey(ctx context.Context, origin, keyID string) (ed25519.PublicKey, error) {
	return v.keys.publicKey(ctx, origin, keyID)
}
