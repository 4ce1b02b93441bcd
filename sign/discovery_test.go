package sign

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// forgedRequest is a request from origin signed by a key nobody published:
// what anyone on the internet can send.
func forgedRequest(t *testing.T, origin string) *http.Request {
	t.Helper()
	r := newRequest(http.MethodGet, backfillURI, nil)
	require.NoError(t, newKey(t).SignRequest(r, origin, ourName))
	return r
}

// TestForgedOriginsCannotReachLoopback is the SSRF regression test: a
// forged request naming an origin on our own machine must not make us
// connect to it, by any step of discovery. On the spec's own ports (443 for
// .well-known, 8448 for the key server) when the test may listen there, as
// in CI, which runs as root; the .well-known lookup of the verifier before
// this test was written did connect there. Elsewhere the verifier is told
// the test servers' ports instead.
func TestForgedOriginsCannotReachLoopback(t *testing.T) {
	wellKnownTarget := "http://127.0.0.1:8448/_matrix/key/v2/server"
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == wellKnownPath {
			// An attacker's .well-known would send us on, anywhere.
			http.Redirect(w, r, wellKnownTarget, http.StatusFound)
			return
		}
		http.NotFound(w, r)
	})
	wellKnown, err443 := listenTLS(t, "127.0.0.1:443", handler)
	keys, err8448 := listenTLS(t, "127.0.0.1:8448", handler)
	cfg := VerifierConfig{ServerNames: []string{ourName}} // DenyNetworks: the default
	var v *Verifier
	var err error
	if err443 == nil && err8448 == nil {
		v, err = NewVerifier(cfg) // the real resolver: localhost is in /etc/hosts
	} else {
		t.Logf("cannot listen on the spec's ports (%v, %v): telling the verifier the test's", err443, err8448)
		if wellKnown == nil {
			wellKnown = newTLSServer(t, "127.0.0.1:0", handler)
		}
		if keys == nil {
			keys = newTLSServer(t, "127.0.0.1:0", handler)
		}
		resolver := newFakeResolver()
		resolver.host("localhost", "127.0.0.1")
		nw := testNetwork(t, resolver, wellKnown.port, keys.port)
		v, err = newVerifier(cfg, nw)
	}
	require.NoError(t, err)

	for _, origin := range []string{
		"localhost",                            // .well-known on 443, then SRV, then 8448
		"127.0.0.1",                            // an IP literal: 8448
		"localhost:" + strconv.Itoa(keys.port), // an explicit port
		"127.0.0.1:" + strconv.Itoa(wellKnown.port),
		"[::ffff:127.0.0.1]:" + strconv.Itoa(keys.port), // IPv4 in IPv6 clothing
	} {
		t.Run(origin, func(t *testing.T) {
			_, err := v.Authenticate(forgedRequest(t, origin))
			require.ErrorIs(t, err, ErrKeyServerUnreachable)
		})
	}
	require.Zero(t, wellKnown.accepted.Load(), "connections to the .well-known port on loopback")
	require.Zero(t, keys.accepted.Load(), "connections to the key server port on loopback")
}

// TestDenyListHoldsAfterEveryResolution puts the allowed servers on
// 127.0.0.1 and denies 127.0.0.2 only, then tries each way discovery could
// be led to a denied address: a redirect, a delegation, an SRV target, a
// name that resolves differently the second time, an IPv4-mapped address.
func TestDenyListHoldsAfterEveryResolution(t *testing.T) {
	internal, err := listenTLS(t, "127.0.0.2:0", http.NotFoundHandler())
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.2: %v", err)
	}
	internalAt := func(host string) string { return internal.hostPort(host) }
	tests := []struct {
		name      string
		origin    string // default hs.example.com
		wellKnown func(w http.ResponseWriter, r *http.Request)
		setup     func(r *fakeResolver)
	}{
		{
			name: ".well-known redirects to an internal name",
			wellKnown: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "https://"+internalAt("internal.example.com")+wellKnownPath, http.StatusFound)
			},
		},
		{
			name: ".well-known redirects to an internal address",
			wellKnown: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "https://"+internalAt("127.0.0.2")+wellKnownPath, http.StatusMovedPermanently)
			},
		},
		{
			name: ".well-known delegates to an internal name",
			wellKnown: func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, `{"m.server":%q}`, internalAt("internal.example.com"))
			},
		},
		{
			name: ".well-known delegates to an internal address",
			wellKnown: func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, `{"m.server":%q}`, internalAt("127.0.0.2"))
			},
		},
		{
			name:      "an SRV record points inside",
			wellKnown: http.NotFound,
			setup: func(r *fakeResolver) {
				r.service("hs.example.com", "matrix-fed", "internal.example.com.", internal.port)
			},
		},
		{
			// The origin's name is allowed when its .well-known is
			// fetched, and internal when its key server is.
			name:   "the origin's name resolves inside the second time (DNS rebinding)",
			origin: "rebind.example.com",
			wellKnown: func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, `{"m.server":%q}`, internal.hostPort("rebind.example.com"))
			},
			setup: func(r *fakeResolver) {
				r.answers["rebind.example.com"] = [][]netip.Addr{{netip.MustParseAddr("127.0.0.1")}, {netip.MustParseAddr("127.0.0.2")}}
			},
		},
		{
			name: "the name resolves to an IPv4-mapped internal address",
			wellKnown: func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, `{"m.server":%q}`, internal.hostPort("mapped.example.com"))
			},
			setup: func(r *fakeResolver) { r.host("mapped.example.com", "::ffff:127.0.0.2") },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := internal.accepted.Load()
			resolver := newFakeResolver()
			resolver.host("hs.example.com", "127.0.0.1")
			resolver.host("internal.example.com", "127.0.0.2")
			if tt.setup != nil {
				tt.setup(resolver)
			}
			wellKnown := newTLSServer(t, "127.0.0.1:0", http.HandlerFunc(tt.wellKnown))
			v, err := newVerifier(VerifierConfig{ServerNames: []string{ourName}, DenyNetworks: []string{"127.0.0.2/32"}},
				testNetwork(t, resolver, wellKnown.port, internal.port))
			require.NoError(t, err)

			origin := tt.origin
			if origin == "" {
				origin = "hs.example.com"
			}
			_, err = v.Authenticate(forgedRequest(t, origin))
			require.ErrorIs(t, err, ErrKeyServerUnreachable)
			require.Positive(t, wellKnown.accepted.Load(), "the allowed .well-known was asked")
			require.Equal(t, before, internal.accepted.Load(), "no connection to the denied address")
		})
	}
}

// discoveryCase is one way a server's keys are found.
type discoveryCase struct {
	name   string
	origin string // {keys}: the key server's port
	// wellKnown answers /.well-known/matrix/server (and any other path
	// the .well-known server is asked).
	wellKnown func(w http.ResponseWriter, r *http.Request, keysPort, wellKnownPort int)
	setup     func(r *fakeResolver, keysPort int)
	// What the key server must see: the Host header and the TLS server
	// name, and whether the .well-known server was asked at all.
	wantHost, wantSNI string
	wellKnownAsked    bool
}

func delegateTo(server string) func(w http.ResponseWriter, r *http.Request, keysPort, wellKnownPort int) {
	return func(w http.ResponseWriter, r *http.Request, keysPort, _ int) {
		fmt.Fprintf(w, `{"m.server":%q}`, strings.ReplaceAll(server, "{keys}", strconv.Itoa(keysPort)))
	}
}

func wellKnownStatus(status int) func(w http.ResponseWriter, r *http.Request, keysPort, wellKnownPort int) {
	return func(w http.ResponseWriter, r *http.Request, _, _ int) { w.WriteHeader(status) }
}

// redirects answers with a chain of n https redirects before delegating to
// keys.example.com.
func redirects(n int, scheme string) func(w http.ResponseWriter, r *http.Request, keysPort, wellKnownPort int) {
	return func(w http.ResponseWriter, r *http.Request, keysPort, wellKnownPort int) {
		hop := 0
		if rest, ok := strings.CutPrefix(r.URL.Path, "/hop/"); ok {
			hop, _ = strconv.Atoi(rest)
		}
		if hop < n {
			http.Redirect(w, r, fmt.Sprintf("%s://redirect.example.com:%d/hop/%d", scheme, wellKnownPort, hop+1), http.StatusFound)
			return
		}
		fmt.Fprintf(w, `{"m.server":"keys.example.com:%d"}`, keysPort)
	}
}

func TestDiscovery(t *testing.T) {
	// Resolution without .well-known delegation ends at the hostname and
	// the default port (the key server's here): Host hs.example.com.
	const fallbackHost = "hs.example.com"
	tests := []discoveryCase{
		{name: "IP literal with a port", origin: "127.0.0.1:{keys}",
			wantHost: "127.0.0.1:{keys}", wantSNI: ""},
		{name: "IP literal: the default port", origin: "127.0.0.1",
			wantHost: "127.0.0.1", wantSNI: ""},
		{name: "hostname with a port: no .well-known", origin: "hs.example.com:{keys}",
			wantHost: "hs.example.com:{keys}", wantSNI: "hs.example.com"},
		{name: ".well-known delegates to a hostname and port", origin: "hs.example.com",
			wellKnown: delegateTo("keys.example.com:{keys}"), wellKnownAsked: true,
			wantHost: "keys.example.com:{keys}", wantSNI: "keys.example.com"},
		{name: ".well-known delegates to an IP literal and port", origin: "hs.example.com",
			wellKnown: delegateTo("127.0.0.1:{keys}"), wellKnownAsked: true,
			wantHost: "127.0.0.1:{keys}", wantSNI: ""},
		{name: ".well-known delegates to an IP literal: the default port", origin: "hs.example.com",
			wellKnown: delegateTo("127.0.0.1"), wellKnownAsked: true,
			wantHost: "127.0.0.1", wantSNI: ""},
		{name: ".well-known delegates to a hostname with a _matrix-fed SRV record", origin: "hs.example.com",
			wellKnown: delegateTo("delegated.example.com"), wellKnownAsked: true,
			setup: func(r *fakeResolver, port int) {
				r.service("delegated.example.com", "matrix-fed", "keys.example.com.", port)
				r.service("delegated.example.com", "matrix", "nowhere.example.com.", 1)
			},
			wantHost: "delegated.example.com", wantSNI: "delegated.example.com"},
		{name: ".well-known delegates to a hostname with a deprecated _matrix SRV record", origin: "hs.example.com",
			wellKnown: delegateTo("delegated.example.com"), wellKnownAsked: true,
			setup: func(r *fakeResolver, port int) {
				r.service("delegated.example.com", "matrix", "keys.example.com.", port)
			},
			wantHost: "delegated.example.com", wantSNI: "delegated.example.com"},
		{name: ".well-known delegates to a hostname without SRV: the default port", origin: "hs.example.com",
			wellKnown: delegateTo("delegated.example.com"), wellKnownAsked: true,
			setup:    func(r *fakeResolver, port int) { r.host("delegated.example.com", "127.0.0.1") },
			wantHost: "delegated.example.com", wantSNI: "delegated.example.com"},
		{name: "no .well-known, a _matrix-fed SRV record", origin: "hs.example.com",
			wellKnown: wellKnownStatus(http.StatusNotFound), wellKnownAsked: true,
			setup: func(r *fakeResolver, port int) {
				r.service("hs.example.com", "matrix-fed", "keys.example.com.", port)
			},
			wantHost: fallbackHost, wantSNI: "hs.example.com"},
		{name: "no .well-known, a deprecated _matrix SRV record", origin: "hs.example.com",
			wellKnown: wellKnownStatus(http.StatusNotFound), wellKnownAsked: true,
			setup: func(r *fakeResolver, port int) {
				r.service("hs.example.com", "matrix", "keys.example.com.", port)
			},
			wantHost: fallbackHost, wantSNI: "hs.example.com"},
		{name: "no .well-known, no SRV: the default port", origin: "hs.example.com",
			wellKnown: wellKnownStatus(http.StatusNotFound), wellKnownAsked: true,
			wantHost: fallbackHost, wantSNI: "hs.example.com"},
		{name: ".well-known fails: the default port", origin: "hs.example.com",
			wellKnown: wellKnownStatus(http.StatusServiceUnavailable), wellKnownAsked: true,
			wantHost: fallbackHost, wantSNI: "hs.example.com"},
		{name: ".well-known is not JSON", origin: "hs.example.com",
			wellKnown:      func(w http.ResponseWriter, r *http.Request, _, _ int) { fmt.Fprint(w, `{"m.server":`) },
			wellKnownAsked: true, wantHost: fallbackHost, wantSNI: "hs.example.com"},
		{name: ".well-known's m.server is not a server name", origin: "hs.example.com",
			wellKnown: delegateTo("keys.example.com:{keys}:1"), wellKnownAsked: true,
			wantHost: fallbackHost, wantSNI: "hs.example.com"},
		{name: ".well-known is too large", origin: "hs.example.com",
			wellKnown: func(w http.ResponseWriter, r *http.Request, keysPort, _ int) {
				fmt.Fprintf(w, `{"m.server":"keys.example.com:%d","pad":"%s"}`, keysPort, bytes.Repeat([]byte{'x'}, maxWellKnownBytes))
			},
			wellKnownAsked: true, wantHost: fallbackHost, wantSNI: "hs.example.com"},
		{name: ".well-known redirects over https, three times", origin: "hs.example.com",
			wellKnown: redirects(maxWellKnownRedirects, "https"), wellKnownAsked: true,
			wantHost: "keys.example.com:{keys}", wantSNI: "keys.example.com"},
		{name: ".well-known redirects four times: not followed", origin: "hs.example.com",
			wellKnown: redirects(maxWellKnownRedirects+1, "https"), wellKnownAsked: true,
			wantHost: fallbackHost, wantSNI: "hs.example.com"},
		{name: ".well-known redirects to plain http: not followed", origin: "hs.example.com",
			wellKnown: redirects(1, "http"), wellKnownAsked: true,
			wantHost: fallbackHost, wantSNI: "hs.example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			k := newKey(t)
			var origin string
			keys := newTLSServer(t, "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/_matrix/key/v2/server" {
					http.NotFound(w, r)
					return
				}
				KeyDocumentHandler(origin, []*SigningKey{k}, time.Hour, clock.Now).ServeHTTP(w, r)
			}))
			var wellKnown *tlsServer
			wellKnown = newTLSServer(t, "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tt.wellKnown == nil {
					http.NotFound(w, r)
					return
				}
				tt.wellKnown(w, r, keys.port, wellKnown.port)
			}))
			ports := strings.NewReplacer("{keys}", strconv.Itoa(keys.port))
			origin = ports.Replace(tt.origin)

			resolver := newFakeResolver()
			for _, name := range []string{"hs.example.com", "keys.example.com", "redirect.example.com"} {
				resolver.host(name, "127.0.0.1")
			}
			if tt.setup != nil {
				tt.setup(resolver, keys.port)
			}
			v, err := newVerifier(VerifierConfig{ServerNames: []string{ourName}, DenyNetworks: []string{}, Now: clock.Now},
				testNetwork(t, resolver, wellKnown.port, keys.port))
			require.NoError(t, err)

			r := newRequest(http.MethodGet, backfillURI, nil)
			require.NoError(t, k.SignRequest(r, origin, ourName))
			got, err := v.Authenticate(r)
			require.NoError(t, err)
			require.Equal(t, origin, got)

			host, sni, requests := keys.seen()
			require.Equal(t, 1, requests)
			require.Equal(t, ports.Replace(tt.wantHost), host, "Host header")
			require.Equal(t, tt.wantSNI, sni, "TLS server name")
			_, _, wellKnownRequests := wellKnown.seen()
			require.Equal(t, tt.wellKnownAsked, wellKnownRequests > 0)
		})
	}
}

func TestDiscoveryOverIPv6(t *testing.T) {
	k := newKey(t)
	origin := ""
	keys, err := listenTLS(t, "[::1]:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		KeyDocumentHandler(origin, []*SigningKey{k}, time.Hour, nil).ServeHTTP(w, r)
	}))
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	origin = "[::1]:" + strconv.Itoa(keys.port)
	v, err := newVerifier(VerifierConfig{ServerNames: []string{ourName}, DenyNetworks: []string{}},
		testNetwork(t, newFakeResolver(), 1, 1))
	require.NoError(t, err)
	r := newRequest(http.MethodGet, backfillURI, nil)
	require.NoError(t, k.SignRequest(r, origin, ourName))
	_, err = v.Authenticate(r)
	require.NoError(t, err)
	host, sni, _ := keys.seen()
	require.Equal(t, origin, host)
	require.Empty(t, sni, "no SNI for an IP address")
}

func TestDiscoveryFailures(t *testing.T) {
	resolver := newFakeResolver()
	resolver.service("dot.example.com", "matrix-fed", ".", 0)
	d := &discovery{resolver: resolver, matrixPort: defaultMatrixPort,
		wellKnown: newWellKnownCache(http.DefaultTransport, 10, time.Now)}
	d.wellKnown.client.Transport = roundTripFunc(func(*http.Request) (*http.Response, error) {
		return nil, net.ErrClosed // no .well-known anywhere
	})
	_, err := d.routes(t.Context(), "dot.example.com")
	require.ErrorContains(t, err, "no such service", `an SRV target of "." means no service`)
	_, err = d.routes(t.Context(), "bad name")
	require.ErrorIs(t, err, errBadServerName)
}

// TestKeyServerRedirectsAreNotFollowed: only .well-known follows
// redirects; a key server's redirect is its failure.
func TestKeyServerRedirectsAreNotFollowed(t *testing.T) {
	k := newKey(t)
	elsewhere := newTLSServer(t, "127.0.0.1:0", KeyDocumentHandler("hs.example.com", []*SigningKey{k}, time.Hour, nil))
	keys := newTLSServer(t, "127.0.0.1:0", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "https://"+elsewhere.hostPort("keys.example.com")+r.URL.Path, http.StatusFound)
	}))
	resolver := newFakeResolver()
	resolver.host("keys.example.com", "127.0.0.1")
	v, err := newVerifier(VerifierConfig{ServerNames: []string{ourName}, DenyNetworks: []string{}},
		testNetwork(t, resolver, 1, keys.port))
	require.NoError(t, err)
	r := newRequest(http.MethodGet, backfillURI, nil)
	require.NoError(t, k.SignRequest(r, "hs.example.com:"+strconv.Itoa(keys.port), ourName))
	_, err = v.Authenticate(r)
	require.ErrorIs(t, err, ErrKeyServerUnreachable)
	require.Zero(t, elsewhere.accepted.Load())
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestSRVTargets(t *testing.T) {
	srv := func(target string, port uint16) *net.SRV { return &net.SRV{Target: target, Port: port} }
	tests := []struct {
		name    string
		records []*net.SRV
		want    []route
		wantErr string
	}{
		{"one target", []*net.SRV{srv("a.example.com.", 443)},
			[]route{{addr: "a.example.com:443", host: "hs.example.com", tlsName: "hs.example.com"}}, ""},
		{"targets in order, at most three", []*net.SRV{srv("a.", 1), srv("b.", 2), srv("c.", 3), srv("d.", 4)},
			[]route{{"a:1", "hs.example.com", "hs.example.com"}, {"b:2", "hs.example.com", "hs.example.com"}, {"c:3", "hs.example.com", "hs.example.com"}}, ""},
		{"port 0 and non-hostnames are skipped", []*net.SRV{srv("a.", 0), srv("b c.", 2), srv("d.", 4)},
			[]route{{"d:4", "hs.example.com", "hs.example.com"}}, ""},
		{"a lone \".\" target: no service", []*net.SRV{srv(".", 0)}, nil, "no such service"},
		{"nothing usable", []*net.SRV{srv("", 1)}, nil, "no usable SRV target"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := srvTargets(tt.records, "hs.example.com")
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestDenyList(t *testing.T) {
	deny, err := parseDenyNetworks(DefaultDenyNetworks)
	require.NoError(t, err)
	for _, tt := range []struct {
		addr   string
		denied bool
	}{
		{"127.0.0.1", true},
		{"10.1.2.3", true},
		{"::1", true},
		{"::ffff:127.0.0.1", true},
		{"::ffff:10.0.0.1", true},
		{"fe80::1%eth0", true},
		{"0.0.0.0", true},
		{"::", true},
		{"8.8.8.8", false},
		{"2606:4700::1111", false},
		{"::ffff:8.8.8.8", false},
	} {
		require.Equal(t, tt.denied, deny.denies(netip.MustParseAddr(tt.addr)), tt.addr)
	}

	mapped, err := parseDenyNetworks([]string{"::ffff:10.0.0.0/104"})
	require.NoError(t, err)
	require.True(t, mapped.denies(netip.MustParseAddr("10.9.9.9")), "a mapped range is checked unmapped")
	require.False(t, mapped.denies(netip.MustParseAddr("11.0.0.1")))

	_, err = parseDenyNetworks([]string{"10.0.0.0"})
	require.ErrorContains(t, err, "DenyNetworks")
	_, err = NewVerifier(VerifierConfig{ServerNames: []string{ourName}, DenyNetworks: []string{"nonsense"}})
	require.ErrorContains(t, err, "DenyNetworks")

	d := newDialer(deny, newFakeResolver())
	require.ErrorIs(t, d.control(t.Context(), "tcp", "127.0.0.1:443", nil), errDeniedAddress)
	require.ErrorIs(t, d.control(t.Context(), "unix", "/run/socket", nil), errDeniedAddress, "what cannot be checked is refused")
	require.NoError(t, d.control(t.Context(), "tcp", "[2606:4700::1111]:443", nil))
}

// TestDialerResolvesAndChecksEachAddress: a name with a denied and an
// allowed address is reached at the allowed one.
func TestDialerResolvesAndChecksEachAddress(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	resolver := newFakeResolver()
	resolver.host("mixed.example.com", "127.0.0.2", "127.0.0.1")
	deny, err := parseDenyNetworks([]string{"127.0.0.2/32"})
	require.NoError(t, err)
	d := newDialer(deny, resolver)
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	conn, err := d.DialContext(t.Context(), "tcp", net.JoinHostPort("mixed.example.com", port))
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", conn.RemoteAddr().(*net.TCPAddr).IP.String())
	conn.Close()

	_, err = d.DialContext(t.Context(), "tcp", net.JoinHostPort("127.0.0.2", port))
	require.ErrorIs(t, err, errDeniedAddress)
	_, err = d.DialContext(t.Context(), "tcp", net.JoinHostPort("missing.example.com", port))
	require.Error(t, err)
}
