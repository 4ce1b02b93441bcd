package sign

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
)

// XMatrix holds the parameters of one "Authorization: X-Matrix …" header
// (spec: server-server API, "Request Authentication").
type XMatrix struct {
	// Origin is the server name of the sending server.
	Origin string
	// Destination is the server name the request was signed for; empty when
	// the header has no destination parameter (sent by servers older than
	// spec v1.3).
	Destination string
	// KeyID is the signing key's ID including its algorithm, "ed25519:abc".
	KeyID string
	// Signature is the base64 signature exactly as it appeared in the header.
	Signature string
}

// ErrNotXMatrix is returned by ParseAuthorization for a header that uses
// another authorization scheme (for example Bearer). Callers that see
// several Authorization headers skip such headers.
var ErrNotXMatrix = errors.New("authorization scheme is not X-Matrix")

// errMalformedHeader is wrapped by every parse failure other than
// ErrNotXMatrix; the verifier maps it to ErrMalformedAuthorization.
var errMalformedHeader = errors.New("malformed X-Matrix header")

const xMatrixScheme = "X-Matrix"

// ParseAuthorization parses one Authorization header value of the X-Matrix
// scheme.
//
// It follows RFC 9110 section 11.4 as the spec requires: the scheme name is
// case-insensitive; parameters come in any order, their names are
// case-insensitive, spaces and tabs may surround the commas and the "=", and
// values are tokens or quoted strings in which a backslash escapes the next
// character. Unknown parameters are ignored.
//
// Where real peers bend the grammar it is lenient: an unquoted value runs to
// the next comma, so it may hold ':' (the spec asks recipients to allow this
// for older servers) or '/', '+' and '=' (Sytest sends unquoted base64
// signatures); and "signature" is accepted as a spelling of "sig" (the spec's
// parameter list names it so, every implementation sends "sig").
//
// origin, key and sig are required. A parameter given twice is an error
// rather than first- or last-wins, so that two parsers can never disagree
// about which value was authenticated.
func ParseAuthorization(header string) (XMatrix, error) {
	var x XMatrix
	header = strings.TrimLeft(header, " \t")
	scheme, rest, hasParams := cutAtWhitespace(header)
	if !strings.EqualFold(scheme, xMatrixScheme) {
		return x, ErrNotXMatrix
	}
	if !hasParams {
		return x, fmt.Errorf("%w: no parameters", errMalformedHeader)
	}

	seen := map[string]bool{}
	p := paramScanner{s: rest}
	for {
		name, value, ok, err := p.next()
		if err != nil {
			return XMatrix{}, fmt.Errorf("%w: %w", errMalformedHeader, err)
		}
		if !ok {
			break
		}
		var field *string
		switch strings.ToLower(name) {
		case "origin":
			field = &x.Origin
		case "destination":
			field = &x.Destination
		case "key":
			field = &x.KeyID
		case "sig", "signature":
			name = "sig"
			field = &x.Signature
		default:
			continue // unknown parameters are ignored (spec)
		}
		canonical := strings.ToLower(name)
		if seen[canonical] {
			return XMatrix{}, fmt.Errorf("%w: parameter %q given more than once", errMalformedHeader, canonical)
		}
		seen[canonical] = true
		*field = value
	}

	switch {
	case x.Origin == "":
		return XMatrix{}, fmt.Errorf("%w: missing origin", errMalformedHeader)
	case x.KeyID == "":
		return XMatrix{}, fmt.Errorf("%w: missing key", errMalformedHeader)
	case x.Signature == "":
		return XMatrix{}, fmt.Errorf("%w: missing sig", errMalformedHeader)
	}
	return x, nil
}

// String formats x as an Authorization header value the way the spec asks
// senders to (one space after the scheme, lower-case names, no whitespace
// around commas, every value quoted). ParseAuthorization(x.String()) returns
// x for any x whose required fields are non-empty.
func (x XMatrix) String() string {
	var b strings.Builder
	b.WriteString(xMatrixScheme)
	b.WriteString(" origin=")
	writeQuoted(&b, x.Origin)
	if x.Destination != "" {
		b.WriteString(",destination=")
		writeQuoted(&b, x.Destination)
	}
	b.WriteString(",key=")
	writeQuoted(&b, x.KeyID)
	b.WriteString(",sig=")
	writeQuoted(&b, x.Signature)
	return b.String()
}

func writeQuoted(b *strings.Builder, s string) {
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
}

// cutAtWhitespace splits "scheme params" at the first run of spaces or tabs.
// found reports whether anything follows the whitespace.
func cutAtWhitespace(s string) (before, after string, found bool) {
	i := strings.IndexAny(s, " \t")
	if i < 0 {
		return s, "", false
	}
	after = strings.TrimLeft(s[i:], " \t")
	return s[:i], after, after != ""
}

// paramScanner walks a comma-separated auth-param list.
type paramScanner struct {
	s   string
	pos int
}

func (p *paramScanner) skipWhitespace() {
	for p.pos < len(p.s) && (p.s[p.pos] == ' ' || p.s[p.pos] == '\t') {
		p.pos++
	}
}

// next returns the next name=value pair; ok is false at the end of input.
// Empty list elements (", ,") are skipped, as RFC 9110's #rule allows.
func (p *paramScanner) next() (name, value string, ok bool, err error) {
	for {
		p.skipWhitespace()
		if p.pos >= len(p.s) {
			return "", "", false, nil
		}
		if p.s[p.pos] != ',' {
			break
		}
		p.pos++
	}

	start := p.pos
	for p.pos < len(p.s) && isTokenChar(p.s[p.pos]) {
		p.pos++
	}
	name = p.s[start:p.pos]
	if name == "" {
		return "", "", false, fmt.Errorf("unexpected character %q at offset %d", p.s[p.pos], p.pos)
	}
	p.skipWhitespace()
	if p.pos >= len(p.s) || p.s[p.pos] != '=' {
		return "", "", false, fmt.Errorf("parameter %q has no value", name)
	}
	p.pos++
	p.skipWhitespace()

	if p.pos < len(p.s) && p.s[p.pos] == '"' {
		value, err = p.quoted()
		if err != nil {
			return "", "", false, fmt.Errorf("parameter %q: %w", name, err)
		}
		p.skipWhitespace()
		if p.pos < len(p.s) && p.s[p.pos] != ',' {
			return "", "", false, fmt.Errorf("parameter %q: text after closing quote", name)
		}
		return name, value, true, nil
	}

	// Unquoted: lenient, the value runs to the next comma (see
	// ParseAuthorization) minus trailing whitespace.
	start = p.pos
	for p.pos < len(p.s) && p.s[p.pos] != ',' {
		p.pos++
	}
	value = strings.TrimRight(p.s[start:p.pos], " \t")
	if value == "" {
		return "", "", false, fmt.Errorf("parameter %q has an empty value", name)
	}
	if strings.ContainsAny(value, "\" \t") {
		return "", "", false, fmt.Errorf("parameter %q: unquoted value contains a quote or whitespace", name)
	}
	return name, value, true, nil
}

// quoted reads a quoted-string starting at the opening quote and returns it
// unescaped: a backslash-character pair stands for the character.
func (p *paramScanner) quoted() (string, error) {
	p.pos++ // opening quote
	// Senders quote plain values (server names, key IDs, base64): without
	// a backslash the value is a substring of the header, no copy needed.
	// Unescaping, byte by byte, is only for the rest.
	rest := p.s[p.pos:]
	if end := strings.IndexAny(rest, `"\`); end >= 0 && rest[end] == '"' {
		p.pos += end + 1
		return rest[:end], nil
	}
	var b strings.Builder
	for p.pos < len(p.s) {
		c := p.s[p.pos]
		switch c {
		case '"':
			p.pos++
			return b.String(), nil
		case '\\':
			if p.pos+1 >= len(p.s) {
				return "", errors.New("backslash at end of header")
			}
			b.WriteByte(p.s[p.pos+1])
			p.pos += 2
		default:
			b.WriteByte(c)
			p.pos++
		}
	}
	return "", errors.New("unterminated quoted string")
}

// isTokenChar reports whether c is a tchar (RFC 9110 section 5.6.2).
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// signedRequestJSON builds the canonical JSON object the spec has servers
// sign for a request: method, uri, origin, destination and, for a request
// with a body, content (the body, which must be JSON).
func signedRequestJSON(method, uri, origin, destination string, content []byte) ([]byte, error) {
	object := struct {
		Method      string          `json:"method"`
		URI         string          `json:"uri"`
		Origin      string          `json:"origin"`
		Destination string          `json:"destination"`
		Content     json.RawMessage `json:"content,omitempty"`
	}{method, uri, origin, destination, content}
	raw, err := json.Marshal(object)
	if err != nil {
		return nil, fmt.Errorf("encoding request for signing: %w", err)
	}
	canonical, err := gomatrixserverlib.CanonicalJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("canonicalising request for signing: %w", err)
	}
	return canonical, nil
}
