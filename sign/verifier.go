package sign

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/fedhistory/fedhistory/internal/matrixerr"
)

// Errors Verify returns, wrapped with details. Wrap answers the first
// group with 401 M_UNAUTHORIZED and the body errors as noted.
var (
	ErrMissingAuthorization   = errors.New("missing X-Matrix Authorization header")
	ErrMalformedAuthorization = errors.New("malformed X-Matrix Authorization header")
	ErrWrongDestination       = errors.New("X-Matrix destination is not this server")
	ErrUnknownKey             = errors.New("unknown signing key")
	ErrBadSignature           = errors.New("bad X-Matrix signature")
	ErrKeyServerUnreachable   = errors.New("could not fetch the origin's signing keys")

	ErrBodyTooLarge = errors.New("request body too large")            // 413 M_TOO_LARGE
	ErrNotJSON      = errors.New("request body is not JSON")          // 400 M_NOT_JSON
	ErrBadJSON      = errors.New("request body is not a JSON object") // 400 M_BAD_JSON
	ErrBodyRead     = errors.New("could not read request body")       // 400 M_UNKNOWN
)

// Defaults for VerifierConfig's zero values.
const (
	DefaultMaxBodyBytes     = 64 << 10
	DefaultKeyFetchTimeout  = 10 * time.Second
	DefaultFailureCacheTTL  = 30 * time.Second
	DefaultMaxCachedServers = 10000
)

// maxXMatrixHeaders bounds the Authorization headers one request may carry:
// each can name another origin and so cost a key fetch.
const maxXMatrixHeaders = 8

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

	// MaxBodyBytes is the largest request body accepted; bigger bodies are
	// answered 413 M_TOO_LARGE. Default DefaultMaxBodyBytes.
	MaxBodyBytes int64

	// Logger receives one line per rejected request and per key fetch
	// failure. Nil logs nothing.
	Logger *slog.Logger

	// Now is the clock for key validity. Default time.Now.
	Now func() time.Time
}

// Verifier authenticates incoming federation requests by their X-Matrix
// Authorization headers. It is safe for concurrent use.
type Verifier struct {
	serverNames  []string
	static       map[string]map[string]ed25519.PublicKey
	keys         *keyCache
	fetching     bool
	maxBodyBytes int64
	logger       *slog.Logger
}

// NewVerifier checks cfg and builds a Verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if len(cfg.ServerNames) == 0 {
		return nil, errors.New("sign: VerifierConfig.ServerNames is empty")
	}
	for _, name := range cfg.ServerNames {
		if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(name)); !ok {
			return nil, fmt.Errorf("sign: VerifierConfig.ServerNames: %q is not a valid server name", name)
		}
	}
	v := &Verifier{
		serverNames:  append([]string(nil), cfg.ServerNames...),
		static:       map[string]map[string]ed25519.PublicKey{},
		fetching:     !cfg.DisableKeyFetching,
		maxBodyBytes: cfg.MaxBodyBytes,
		logger:       cfg.Logger,
	}
	for server, keys := range cfg.StaticKeys {
		v.static[server] = map[string]ed25519.PublicKey{}
		for id, key := range keys {
			if len(key) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("sign: StaticKeys[%q][%q] is %d bytes, want %d", server, id, len(key), ed25519.PublicKeySize)
			}
			v.static[server][id] = key
		}
	}
	if v.maxBodyBytes <= 0 {
		v.maxBodyBytes = DefaultMaxBodyBytes
	}
	if v.logger == nil {
		v.logger = slog.New(slog.DiscardHandler)
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

	fetchers := cfg.KeyFetchers
	if len(fetchers) == 0 && v.fetching {
		var err error
		fetchers, err = defaultFetchers(cfg, timeout)
		if err != nil {
			return nil, err
		}
	}
	v.keys = newKeyCache(fetchWith(fetchers, now), now, failureTTL, timeout, maxServers)
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

// Wrap returns middleware that lets a request through to next only when it
// carries a valid X-Matrix signature, with the authenticated origin in its
// context (OriginFromContext). Rejected requests are answered here, with
// 401 M_UNAUTHORIZED and a message naming the failed check (or 400/413 for
// bodies, see Verify), and next never runs.
func (v *Verifier) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin, err := v.Verify(r)
		if err != nil {
			v.reject(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(ContextWithOrigin(r.Context(), origin)))
	})
}

func (v *Verifier) reject(w http.ResponseWriter, r *http.Request, err error) {
	status, errcode, message := http.StatusUnauthorized, matrixerr.Unauthorized, err.Error()
	switch {
	case errors.Is(err, ErrBodyTooLarge):
		status, errcode = http.StatusRequestEntityTooLarge, matrixerr.TooLarge
	case errors.Is(err, ErrNotJSON):
		status, errcode = http.StatusBadRequest, matrixerr.NotJSON
	case errors.Is(err, ErrBadJSON):
		status, errcode = http.StatusBadRequest, matrixerr.BadJSON
	case errors.Is(err, ErrBodyRead):
		status, errcode = http.StatusBadRequest, matrixerr.Unknown
	case errors.Is(err, ErrKeyServerUnreachable):
		// The details (addresses, dial errors) stay in our log: echoing
		// them would let a peer probe our network through origin names.
		message = ErrKeyServerUnreachable.Error()
	}
	v.logger.LogAttrs(r.Context(), slog.LevelInfo, "rejected federation request",
		slog.String("method", r.Method), slog.String("uri", r.RequestURI),
		slog.Int("status", status), slog.String("error", err.Error()))
	matrixerr.Write(w, status, errcode, message)
}

// Verify authenticates r and returns the origin server name.
//
// It reads r's body (at most MaxBodyBytes) and replaces r.Body with a reader
// over the same bytes, so the next handler can parse it. A non-empty body
// must be a JSON object; it is the signed content (spec: "the JSON-parsed
// request body") whatever the method, and an empty body means no content.
// The body is checked before any signature (as Synapse does), so a bad body
// fails with ErrBodyTooLarge, ErrNotJSON or ErrBadJSON even when unsigned.
//
// The signed URI is r.RequestURI exactly as the peer sent it, never a
// re-encoded or prefix-stripped path. Every X-Matrix Authorization header is
// tried; the request is authenticated if one verifies, and otherwise the
// first header's failure is returned.
func (v *Verifier) Verify(r *http.Request) (string, error) {
	content, err := v.readBody(r)
	if err != nil {
		return "", err
	}

	uri := r.RequestURI
	if uri == "" {
		uri = r.URL.RequestURI()
	}

	var headers []parsedHeader
	for _, h := range r.Header.Values("Authorization") {
		x, err := ParseAuthorization(h)
		if errors.Is(err, ErrNotXMatrix) {
			continue // another scheme: not ours to judge
		}
		headers = append(headers, parsedHeader{x: x, err: err})
	}
	if len(headers) == 0 {
		return "", ErrMissingAuthorization
	}
	if len(headers) > maxXMatrixHeaders {
		return "", fmt.Errorf("%w: more than %d X-Matrix headers", ErrMalformedAuthorization, maxXMatrixHeaders)
	}

	var firstErr error
	for _, h := range headers {
		origin, err := v.verifyHeader(r.Context(), r.Method, uri, h, content)
		if err == nil {
			return origin, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return "", firstErr
}

func (v *Verifier) readBody(r *http.Request) ([]byte, error) {
	if r.Body == nil || r.Body == http.NoBody {
		return nil, nil
	}
	if r.ContentLength > v.maxBodyBytes {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrBodyTooLarge, r.ContentLength, v.maxBodyBytes)
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, v.maxBodyBytes+1))
	r.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBodyRead, err)
	}
	if int64(len(body)) > v.maxBodyBytes {
		return nil, fmt.Errorf("%w: the limit is %d bytes", ErrBodyTooLarge, v.maxBodyBytes)
	}
	restoreBody(r, body)
	if len(body) == 0 {
		return nil, nil
	}
	if err := checkJSONObject(body); err != nil {
		return nil, err
	}
	return body, nil
}

// checkJSONObject distinguishes Synapse's two body errors: not JSON at all
// (M_NOT_JSON, including invalid UTF-8, which Synapse fails to decode) and
// JSON that is not an object (M_BAD_JSON).
func checkJSONObject(body []byte) error {
	if !utf8.Valid(body) || !json.Valid(body) {
		return ErrNotJSON
	}
	if trimmed := bytes.TrimLeft(body, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' {
		return ErrBadJSON
	}
	return nil
}

// parsedHeader is one X-Matrix Authorization header, parsed once: x, or
// the reason it is malformed.
type parsedHeader struct {
	x   XMatrix
	err error
}

// verifyHeader checks one X-Matrix header against the request.
func (v *Verifier) verifyHeader(ctx context.Context, method, uri string, header parsedHeader, content []byte) (string, error) {
	if header.err != nil {
		return "", fmt.Errorf("%w: %w", ErrMalformedAuthorization, header.err)
	}
	x := header.x
	if _, _, ok := spec.ParseAndValidateServerName(spec.ServerName(x.Origin)); !ok {
		return "", fmt.Errorf("%w: origin %q is not a valid server name", ErrMalformedAuthorization, x.Origin)
	}

	// The destination the peer signed for. Without a destination parameter
	// (servers older than spec v1.3) the spec and Synapse both take the
	// signed destination to be our own name; with several names we try
	// each, as the peer signed for whichever it addressed.
	destinations := v.serverNames
	if x.Destination != "" {
		if !v.isOurs(x.Destination) {
			// Spec: a destination that is not ours MUST be answered 401.
			return "", fmt.Errorf("%w: %q", ErrWrongDestination, x.Destination)
		}
		destinations = []string{x.Destination}
	}

	if !strings.HasPrefix(x.KeyID, ed25519Prefix) {
		return "", fmt.Errorf("%w: key %q of %s: only ed25519 keys are supported", ErrUnknownKey, x.KeyID, x.Origin)
	}
	signature, err := decodeBase64(x.Signature)
	if err != nil || len(signature) != ed25519.SignatureSize {
		// Checked before the key lookup so garbage costs no fetch.
		return "", fmt.Errorf("%w: signature is not %d bytes of base64", ErrBadSignature, ed25519.SignatureSize)
	}

	key, err := v.publicKey(ctx, x.Origin, x.KeyID)
	if err != nil {
		return "", err
	}
	for _, destination := range destinations {
		message, err := requestSigningJSON(method, uri, x.Origin, destination, content)
		if err != nil {
			return "", fmt.Errorf("%w: %w", ErrBadSignature, err)
		}
		if ed25519.Verify(key, message, signature) {
			return x.Origin, nil
		}
	}
	return "", fmt.Errorf("%w: from %s with key %s for %s %s", ErrBadSignature, x.Origin, x.KeyID, method, uri)
}

func (v *Verifier) isOurs(name string) bool {
	for _, ours := range v.serverNames {
		if name == ours {
			return true
		}
	}
	return false
}

// publicKey finds origin's key: pinned, cached, or fetched.
func (v *Verifier) publicKey(ctx context.Context, origin, keyID string) (ed25519.PublicKey, error) {
	if pinned, ok := v.static[origin]; ok {
		if key, ok := pinned[keyID]; ok {
			return key, nil
		}
		return nil, fmt.Errorf("%w: %s has no pinned key %s", ErrUnknownKey, origin, keyID)
	}
	if !v.fetching {
		return nil, fmt.Errorf("%w: key fetching is disabled and %s has no pinned keys", ErrKeyServerUnreachable, origin)
	}
	key, err := v.keys.get(ctx, origin, keyID)
	if err != nil {
		v.logger.LogAttrs(ctx, slog.LevelDebug, "key lookup failed",
			slog.String("origin", origin), slog.String("key_id", keyID), slog.String("error", err.Error()))
		return nil, err
	}
	return key, nil
}

// requestSigningJSON returns the same bytes as signedRequestJSON, the
// canonical JSON the origin signed, without its detour: signedRequestJSON
// encodes the whole object and then parses and canonicalises all of it
// again, on every request. When the four strings need no escaping
// (printable ASCII but the quote and the backslash, which every request
// line and server name is), the canonical object is written directly, keys
// in canonical order, with the content (if any) canonicalised once and
// spliced in: the canonical form of an object is made of the canonical
// forms of its values. Anything else takes signedRequestJSON's path.
func requestSigningJSON(method, uri, origin, destination string, content []byte) ([]byte, error) {
	if !plainJSONString(method) || !plainJSONString(uri) || !plainJSONString(origin) || !plainJSONString(destination) {
		return signedRequestJSON(method, uri, origin, destination, content)
	}
	var canonicalContent []byte
	if len(content) > 0 { // signedRequestJSON omits empty content
		if !json.Valid(content) {
			return signedRequestJSON(method, uri, origin, destination, content) // for its error
		}
		var err error
		if canonicalContent, err = gomatrixserverlib.CanonicalJSON(content); err != nil {
			return signedRequestJSON(method, uri, origin, destination, content)
		}
	}
	size := len(`{"content":,"destination":"","method":"","origin":"","uri":""}`) +
		len(canonicalContent) + len(destination) + len(method) + len(origin) + len(uri)
	message := make([]byte, 0, size)
	message = append(message, '{')
	if canonicalContent != nil {
		message = append(message, `"content":`...)
		message = append(message, canonicalContent...)
		message = append(message, ',')
	}
	message = append(message, `"destination":"`...)
	message = append(message, destination...)
	message = append(message, `","method":"`...)
	message = append(message, method...)
	message = append(message, `","origin":"`...)
	message = append(message, origin...)
	message = append(message, `","uri":"`...)
	message = append(message, uri...)
	return append(message, `"}`...), nil
}

// plainJSONString reports whether s is written in canonical JSON exactly as
// it is, between quotes: printable ASCII without the quote and the
// backslash. (encoding/json would escape '<', '>' and '&', but
// canonicalisation undoes that.)
func plainJSONString(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// Authenticate authenticates r and returns the origin server name, as Verify
// does: the fedhistory.Authenticator contract.
func (v *Verifier) Authenticate(r *http.Request) (string, error) { return v.Verify(r) }
