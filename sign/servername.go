package sign

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// serverName is a parsed Matrix server name (spec: appendices, "Server
// Name"): a hostname and an optional port.
type serverName struct {
	// host is a DNS name, or an IP literal (without brackets).
	host string
	// ip is the IP literal, when host is one.
	ip netip.Addr
	// port is the explicit port, 0 when there is none.
	port int
}

var errBadServerName = errors.New("not a valid server name")

// maxDNSNameLength is the grammar's bound on a dns-name (1*255dns-char).
const maxDNSNameLength = 255

// parseServerName parses name by the spec's grammar:
//
//	server_name = hostname [ ":" port ]
//	hostname    = IPv4address / "[" IPv6address "]" / dns-name
//	dns-name    = 1*255 ( DIGIT / ALPHA / "-" / "." )
//	port        = 1*5DIGIT
//
// where it is stricter than the grammar, it follows the spec's prose: an
// IPv4 literal is four decimal numbers from 0 to 255 (netip's reading: no
// leading zeros, which some resolvers would read as octal), and the port is
// a TCP port, 1 to 65535. A hostname made only of digits and dots must be
// an IPv4 literal: no top-level domain is numeric, and some resolvers read
// such names ("127.1") as addresses.
func parseServerName(name string) (serverName, error) {
	var s serverName
	var rest string
	if strings.HasPrefix(name, "[") {
		end := strings.IndexByte(name, ']')
		if end < 0 {
			return serverName{}, errBadServerName
		}
		literal := name[1:end]
		// IPv6address = 2*45IPv6char (digits, hex letters, ':' and '.'),
		// so no zone: a zone names an interface of the machine dialling.
		if len(literal) < 2 || len(literal) > 45 || strings.Trim(literal, "0123456789abcdefABCDEF:.") != "" {
			return serverName{}, errBadServerName
		}
		ip, err := netip.ParseAddr(literal)
		if err != nil || !ip.Is6() {
			return serverName{}, errBadServerName
		}
		s.host, s.ip, rest = literal, ip, name[end+1:]
	} else {
		host, port, hasPort := strings.Cut(name, ":")
		if !validHostname(host) {
			return serverName{}, errBadServerName
		}
		if strings.Trim(host, "0123456789.") == "" {
			ip, err := netip.ParseAddr(host)
			if err != nil || !ip.Is4() {
				return serverName{}, errBadServerName
			}
			s.ip = ip
		}
		s.host = host
		if hasPort {
			rest = ":" + port
		}
	}
	if rest != "" {
		port, ok := strings.CutPrefix(rest, ":")
		if !ok || len(port) == 0 || len(port) > 5 || strings.Trim(port, "0123456789") != "" {
			return serverName{}, errBadServerName
		}
		n, _ := strconv.Atoi(port) // at most 5 digits: no overflow
		if n < 1 || n > 65535 {
			return serverName{}, errBadServerName
		}
		s.port = n
	}
	return s, nil
}

// validHostname reports whether host is a dns-name by the grammar: 1 to
// 255 letters, digits, hyphens and dots.
func validHostname(host string) bool {
	if len(host) == 0 || len(host) > maxDNSNameLength {
		return false
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// isIP reports whether the host is an IP literal.
func (s serverName) isIP() bool { return s.ip.IsValid() }

// hostPort is the address to dial: the host and the explicit port, or
// defaultPort.
func (s serverName) hostPort(defaultPort int) string {
	port := s.port
	if port == 0 {
		port = defaultPort
	}
	return net.JoinHostPort(s.host, strconv.Itoa(port))
}

// String writes the server name back: IPv6 literals in brackets, the port
// if there is one.
func (s serverName) String() string {
	host := s.host
	if s.ip.Is6() {
		host = "[" + host + "]"
	}
	if s.port == 0 {
		return host
	}
	return host + ":" + strconv.Itoa(s.port)
}
