package sign

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// DefaultDenyNetworks are the address ranges keys are never fetched from
// unless VerifierConfig.DenyNetworks says otherwise: loopback, private,
// link-local, multicast and documentation ranges, as in Synapse's default
// ip_range_blacklist. Without it any peer could make us send requests into
// our own network by naming an internal address as its origin.
// IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are checked as the IPv4
// address they map.
var DefaultDenyNetworks = []string{
	"0.0.0.0/8", "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
	"100.64.0.0/10", "192.0.0.0/24", "169.254.0.0/16", "192.88.99.0/24",
	"198.18.0.0/15", "192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24",
	"224.0.0.0/4", "::/128", "::1/128", "fe80::/10", "fc00::/7", "2001:db8::/32",
	"ff00::/8", "fec0::/10",
}

// Bounds on one outbound connection and its answer's headers; the bodies
// are bounded where they are read. The whole fetch, waiting for answers
// included (a notary may have to fetch before it answers), is bounded by
// VerifierConfig.KeyFetchTimeout.
const (
	connectTimeout         = 5 * time.Second
	tlsHandshakeTimeout    = 5 * time.Second
	maxResponseHeaderBytes = 16 << 10
	// maxAddressesPerName bounds the addresses one name is dialled at.
	maxAddressesPerName = 4
)

// errDeniedAddress is wrapped by the error of a dial to an address in the
// deny list.
var errDeniedAddress = errors.New("address is in VerifierConfig.DenyNetworks")

// denyList is a parsed VerifierConfig.DenyNetworks.
type denyList []netip.Prefix

func parseDenyNetworks(cidrs []string) (denyList, error) {
	deny := make(denyList, 0, len(cidrs))
	for _, cidr := range cidrs {
		prefix, err := netip.ParsePrefix(cidr)
		if err != nil {
			return nil, fmt.Errorf("DenyNetworks: %w", err)
		}
		if addr := prefix.Addr(); addr.Is4In6() && prefix.Bits() >= 96 {
			// Addresses are checked unmapped, so a mapped range must be too.
			prefix = netip.PrefixFrom(addr.Unmap(), prefix.Bits()-96)
		}
		deny = append(deny, prefix.Masked())
	}
	return deny, nil
}

// denies reports whether ip is in the list. An IPv4-mapped IPv6 address
// is checked as its IPv4 address, and zones are ignored (netip.Prefix
// never contains a zoned address, which would otherwise slip through).
func (d denyList) denies(ip netip.Addr) bool {
	ip = ip.WithZone("").Unmap()
	for _, prefix := range d {
		if prefix.Contains(ip) {
			return true
		}
	}
	return false
}

// resolver is the part of *net.Resolver discovery and dialling use; tests
// answer for names of their own.
type resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
	LookupSRV(ctx context.Context, service, proto, name string) (cname string, addrs []*net.SRV, err error)
}

// dialer makes every outbound connection of the verifier's own key
// fetching: the .well-known lookup and each of its redirects, the origin's
// key server, notaries. Whatever name it is given, it resolves the name
// itself and checks each address it connects to against the deny list in
// the socket's Control hook, just before connect(2): the check is on the
// address actually dialled, so no resolution (DNS rebinding, a redirect,
// an SRV target, a .well-known delegation) can get around it.
type dialer struct {
	deny     denyList
	resolver resolver
	net      net.Dialer
}

func newDialer(deny denyList, r resolver) *dialer {
	d := &dialer{deny: deny, resolver: r}
	d.net = net.Dialer{Timeout: connectTimeout, ControlContext: d.control}
	return d
}

// control refuses to connect to a denied address.
func (d *dialer) control(_ context.Context, network, address string, _ syscall.RawConn) error {
	addrPort, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: cannot check %s address %q", errDeniedAddress, network, address)
	}
	if d.deny.denies(addrPort.Addr()) {
		return fmt.Errorf("%w: %s", errDeniedAddress, address)
	}
	return nil
}

// DialContext connects to address ("host:port"), trying at most
// maxAddressesPerName of the host's addresses in the resolver's order.
func (d *dialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else if addrs, err = d.resolver.LookupNetIP(ctx, "ip", host); err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, fmt.Errorf("%s has no address", host)
	}
	if len(addrs) > maxAddressesPerName {
		addrs = addrs[:maxAddressesPerName]
	}
	var errs []error
	for _, ip := range addrs {
		conn, err := d.net.DialContext(ctx, network, net.JoinHostPort(ip.String(), port))
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// transport returns an HTTP transport that connects only through d. It
// uses no proxy (a proxy would make the connection for us, out of the deny
// list's reach) and keeps no connection once its answer is read: key
// fetches are rare, and a pool shared between names would have to be keyed
// by more than the URL's host (see keyClient.send).
func (d *dialer) transport(tlsConfig *tls.Config) *http.Transport {
	return &http.Transport{
		Proxy:                  nil,
		DialContext:            d.DialContext,
		TLSClientConfig:        tlsConfig,
		TLSHandshakeTimeout:    tlsHandshakeTimeout,
		MaxResponseHeaderBytes: maxResponseHeaderBytes,
		DisableKeepAlives:      true,
	}
}
