package sign

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// The spec's default port for federation, and how many SRV targets one
// resolution tries (in the order net.Resolver gives: by priority, then
// randomly by weight).
const (
	defaultMatrixPort = 8448
	maxSRVTargets     = 3
)

// route is one way to reach a server (spec: server-server API, "Resolving
// server names"): the address to connect to, the Host header, and the name
// the TLS certificate must be valid for.
type route struct {
	// addr is "host:port" to dial; the host may be a name, which the
	// dialer resolves (A/AAAA) when it connects.
	addr string
	// host is the Host header.
	host string
	// tlsName is the name sent as SNI and checked against the
	// certificate; for an IP literal, the address (no SNI is sent then).
	tlsName string
}

// discovery resolves server names to routes, following the spec's steps.
type discovery struct {
	resolver  resolver
	wellKnown *wellKnownCache
	// matrixPort is defaultMatrixPort; tests change it.
	matrixPort int
}

// routes resolves name (spec: "Resolving server names"); the step numbers
// below are the spec's.
func (d *discovery) routes(ctx context.Context, name string) ([]route, error) {
	s, err := parseServerName(name)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", name, err)
	}
	// 1. An IP literal: that address, the port or 8448, Host the server
	// name as given.
	if s.isIP() {
		return []route{{addr: s.hostPort(d.matrixPort), host: name, tlsName: s.host}}, nil
	}
	// 2. A hostname with a port: the hostname's address, Host the server
	// name, the certificate for the hostname.
	if s.port != 0 {
		return []route{{addr: s.hostPort(0), host: name, tlsName: s.host}}, nil
	}
	// 3. A hostname without a port: its .well-known may delegate.
	if delegated, ok := d.wellKnown.lookup(ctx, s.host); ok {
		switch {
		case delegated.isIP():
			// 3.1: the address, the port or 8448, Host the delegated
			// name (with its port, if it has one).
			return []route{{addr: delegated.hostPort(d.matrixPort), host: delegated.String(), tlsName: delegated.host}}, nil
		case delegated.port != 0:
			// 3.2: the delegated hostname's address and port.
			return []route{{addr: delegated.hostPort(0), host: delegated.String(), tlsName: delegated.host}}, nil
		default:
			// 3.3 to 3.5: SRV records of the delegated hostname, or
			// its address and 8448.
			return d.srvRoutes(ctx, delegated.host)
		}
	}
	// 4 to 6: no (valid) .well-known: SRV records of the hostname, or its
	// address and 8448.
	return d.srvRoutes(ctx, s.host)
}

// srvRoutes looks up _matrix-fed._tcp.<hostname>, then the deprecated
// _matrix._tcp.<hostname>, and falls back to hostname:8448. Whatever the
// SRV target, the Host header and the certificate are hostname's (spec:
// DNS is not trusted to delegate; TLS proves the target may serve it).
func (d *discovery) srvRoutes(ctx context.Context, hostname string) ([]route, error) {
	for _, service := range []string{"matrix-fed", "matrix"} {
		_, records, err := d.resolver.LookupSRV(ctx, service, "tcp", hostname)
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			continue
		}
		// net.Resolver returns the well-formed records along with an
		// error when some are malformed; those are used.
		if err != nil && len(records) == 0 {
			return nil, fmt.Errorf("SRV lookup _%s._tcp.%s: %w", service, hostname, err)
		}
		if len(records) == 0 {
			continue
		}
		routes, err := srvTargets(records, hostname)
		if err != nil {
			return nil, fmt.Errorf("SRV _%s._tcp.%s: %w", service, hostname, err)
		}
		return routes, nil
	}
	return []route{{addr: net.JoinHostPort(hostname, strconv.Itoa(d.matrixPort)), host: hostname, tlsName: hostname}}, nil
}

// srvTargets turns SRV records, in the resolver's order, into routes to
// hostname: at most maxSRVTargets of them, skipping targets that are not
// host names or have port 0. A single record whose target is "." means the
// service is decidedly not available (RFC 2782; Synapse fails there too).
func srvTargets(records []*net.SRV, hostname string) ([]route, error) {
	if len(records) == 1 && records[0].Target == "." {
		return nil, errors.New(`the SRV target is ".": no such service`)
	}
	var routes []route
	for _, record := range records {
		target := strings.TrimSuffix(record.Target, ".")
		if record.Port == 0 || !validHostname(target) {
			continue
		}
		routes = append(routes, route{
			addr:    net.JoinHostPort(target, strconv.Itoa(int(record.Port))),
			host:    hostname,
			tlsName: hostname,
		})
		if len(routes) == maxSRVTargets {
			break
		}
	}
	if len(routes) == 0 {
		return nil, errors.New("no usable SRV target")
	}
	return routes, nil
}
