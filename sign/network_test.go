package sign

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// Test infrastructure for the verifier's own networking: a resolver that
// answers from maps, and TLS servers on loopback that count connections.
// httptest's certificate is valid for 127.0.0.1, ::1, example.com and
// *.example.com, so test server names live under example.com.

// fakeResolver answers A/AAAA and SRV lookups from its maps; other names
// do not exist.
type fakeResolver struct {
	mu    sync.Mutex
	hosts map[string][]netip.Addr // name → addresses; see also answers
	// answers, when set for a name, gives its addresses lookup by lookup
	// (the last one repeats): a name whose DNS changes between lookups.
	answers map[string][][]netip.Addr
	srv     map[string][]*net.SRV // "_service._tcp.name" → records
	asked   map[string]int        // lookups per name, for answers
}

func newFakeResolver() *fakeResolver {
	return &fakeResolver{
		hosts:   map[string][]netip.Addr{},
		answers: map[string][][]netip.Addr{},
		srv:     map[string][]*net.SRV{},
		asked:   map[string]int{},
	}
}

func (r *fakeResolver) host(name string, addrs ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range addrs {
		r.hosts[name] = append(r.hosts[name], netip.MustParseAddr(a))
	}
}

func (r *fakeResolver) service(name string, service, target string, port int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := "_" + service + "._tcp." + name
	r.srv[key] = append(r.srv[key], &net.SRV{Target: target, Port: uint16(port)})
}

func notFound(name string) error {
	return &net.DNSError{Err: "no such host", Name: name, IsNotFound: true}
}

func (r *fakeResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.asked[host]++
	if answers := r.answers[host]; len(answers) > 0 {
		i := min(r.asked[host], len(answers)) - 1
		return answers[i], nil
	}
	if addrs, ok := r.hosts[host]; ok {
		return addrs, nil
	}
	return nil, notFound(host)
}

func (r *fakeResolver) LookupSRV(_ context.Context, service, proto, name string) (string, []*net.SRV, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	key := "_" + service + "._" + proto + "." + name
	r.asked[key]++
	if records, ok := r.srv[key]; ok {
		return key, records, nil
	}
	return "", nil, notFound(key)
}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	accepted *atomic.Int32
}

func (l countingListener) Accept() (net.Conn, error) {
	conn, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return conn, err
}

// tlsServer is an HTTPS server on loopback that counts its connections
// and remembers the Host header and TLS server name (SNI) of its last
// request.
type tlsServer struct {
	*httptest.Server
	port     int
	accepted atomic.Int32

	mu       sync.Mutex
	lastHost string
	lastSNI  string
	requests int
}

// listenTLS starts a tlsServer on address ("127.0.0.1:0"), or returns an
// error if it cannot listen there.
func listenTLS(t *testing.T, address string, handler http.Handler) (*tlsServer, error) {
	t.Helper()
	ln, err := net.Listen("tcp", address)
	if err != nil {
		return nil, err
	}
	s := &tlsServer{}
	s.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.lastHost, s.lastSNI = r.Host, r.TLS.ServerName
		s.requests++
		s.mu.Unlock()
		handler.ServeHTTP(w, r)
	}))
	s.Listener = countingListener{Listener: ln, accepted: &s.accepted}
	s.StartTLS()
	t.Cleanup(s.Close)
	s.port = ln.Addr().(*net.TCPAddr).Port
	return s, nil
}

func newTLSServer(t *testing.T, address string, handler http.Handler) *tlsServer {
	t.Helper()
	s, err := listenTLS(t, address, handler)
	require.NoError(t, err)
	return s
}

// seen returns the Host header and SNI of the last request, and how many
// requests there were.
func (s *tlsServer) seen() (host, sni string, requests int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastHost, s.lastSNI, s.requests
}

// addr is "127.0.0.1:port" (or the server's own host) with the given host.
func (s *tlsServer) hostPort(host string) string {
	return net.JoinHostPort(host, strconv.Itoa(s.port))
}

// testRoots trusts httptest's certificate.
func testRoots(t *testing.T) *tls.Config {
	t.Helper()
	srv := httptest.NewTLSServer(http.NotFoundHandler())
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// testNetwork is a network of resolver's names, trusting httptest's
// certificate, with the .well-known and default Matrix ports given.
func testNetwork(t *testing.T, resolver *fakeResolver, wellKnownPort, matrixPort int) network {
	return network{resolver: resolver, tlsConfig: testRoots(t), wellKnownPort: wellKnownPort, matrixPort: matrixPort}
}
