package sign

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/stretchr/testify/require"
)

func FuzzParseAuthorization(f *testing.F) {
	for _, seed := range []string{
		`X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF..."`,
		`x-matrix ORIGIN=o.example:8448,key=ed25519:a_b,signature=abc+/==`,
		"X-Matrix\t origin = \"o\\\"x\" ,\tkey=\"ed25519:k\",sig=\"s\",foo=\"a,b\"",
		`X-Matrix ,origin="a",,key="k",sig="s",`,
		`X-Matrix origin="a",origin="b"`,
		`X-Matrix origin="unterminated`,
		`X-Matrix origin="a\`,
		`Bearer token`,
		`X-Matrix`,
		``,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, header string) {
		x, err := ParseAuthorization(header)
		if err != nil {
			if !errors.Is(err, ErrNotXMatrix) && !errors.Is(err, errMalformedHeader) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if x.Origin == "" || x.KeyID == "" || x.Signature == "" {
			t.Fatalf("accepted a header without a required field: %+v", x)
		}
		// Whatever we parse, we can write back and read again unchanged.
		again, err := ParseAuthorization(x.String())
		if err != nil {
			t.Fatalf("re-parsing %q: %v", x.String(), err)
		}
		if again != x {
			t.Fatalf("round trip changed %+v into %+v", x, again)
		}
	})
}

// fuzzKey is fixed so the corpus can hold validly signed requests for the
// fuzzer to mutate.
var fuzzKey = &SigningKey{ID: "ed25519:fuzz", Private: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{42}, 32))}

func FuzzMiddleware(f *testing.F) {
	add := func(method, uri string, body []byte, headers ...string) {
		f.Add(method, uri, strings.Join(headers, "\n"), body)
	}
	sign := func(method, uri, destination string, body []byte) string {
		message, err := signedRequestJSON(method, uri, remoteName, destination, body)
		if err != nil {
			f.Fatal(err)
		}
		return XMatrix{Origin: remoteName, Destination: destination, KeyID: fuzzKey.ID,
			Signature: encodeSignature(ed25519.Sign(fuzzKey.Private, message))}.String()
	}
	body := []byte(missingBody)
	add("GET", backfillURI, nil, sign("GET", backfillURI, ourName, nil))
	add("POST", missingURI, body, sign("POST", missingURI, ourName, body))
	add("POST", missingURI, body, "Bearer x", sign("POST", missingURI, "", body))
	add("GET", backfillURI, nil, sign("GET", backfillURI, "elsewhere.example.org", nil))
	add("PUT", "/x?y=%20", []byte(`{"a":[1,2,{"b":null}]}`), `X-Matrix origin=remote.example.org,key=ed25519:fuzz,sig=AAAA`)
	add("POST", missingURI, []byte(`[1]`), `X-Matrix origin="remote.example.org",key="ed25519:fuzz",sig="x"`)
	add("POST", missingURI, []byte("{\"a\":\"\xff\"}"))
	add("GET", "*", nil, "X-Matrix")

	v, err := NewVerifier(VerifierConfig{
		ServerNames:        []string{ourName, "alias.example.org"},
		StaticKeys:         map[string]map[string]ed25519.PublicKey{remoteName: {fuzzKey.ID: fuzzKey.Public()}},
		DisableKeyFetching: true,
	})
	if err != nil {
		f.Fatal(err)
	}

	f.Fuzz(func(t *testing.T, method, uri, headers string, body []byte) {
		if !validMethod(method) {
			return // net/http never hands a handler such a request
		}
		r := &http.Request{
			Method:     method,
			RequestURI: uri,
			URL:        &url.URL{Path: "/"},
			Header:     http.Header{},
			Body:       http.NoBody,
		}
		if len(body) > 0 {
			r.Body = readCloser{bytes.NewReader(body)}
			r.ContentLength = int64(len(body))
		}
		for _, h := range strings.Split(headers, "\n") {
			if h != "" {
				r.Header.Add("Authorization", h)
			}
		}

		next := &recordingHandler{}
		w := httptest.NewRecorder()
		authHandler(v, next).ServeHTTP(w, r) // bounds the body to testBodyLimit

		authenticated := next.calls.Load() > 0
		if authenticated != (w.Code/100 == 2) {
			t.Fatalf("status %d but handler called=%v", w.Code, authenticated)
		}
		if authenticated && !independentlySigned(method, uri, r.Header.Values("Authorization"), body) {
			t.Fatalf("request authenticated without a valid signature: %s %q %q %q", method, uri, headers, body)
		}
		if !authenticated && w.Code != 401 && w.Code != 400 && w.Code != 413 {
			t.Fatalf("unexpected status %d", w.Code)
		}
	})
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

func encodeSignature(sig []byte) string {
	return spec.Base64Bytes(sig).Encode()
}

func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		if !isTokenChar(m[i]) {
			return false
		}
	}
	return true
}

// independentlySigned is the fuzz oracle: it has gomatrixserverlib sign
// the request object (built here as a map, not with signedRequestJSON) with
// fuzzKey, and reports whether a header carries that signature for one of
// our server names. ed25519 signatures are deterministic, so a valid
// signature over the same object is exactly this one.
func independentlySigned(method, uri string, headers []string, body []byte) bool {
	for _, destination := range []string{ourName, "alias.example.org"} {
		object := map[string]any{"method": method, "uri": uri, "origin": remoteName, "destination": destination}
		if len(body) > 0 {
			object["content"] = json.RawMessage(body)
		}
		raw, err := json.Marshal(object)
		if err != nil {
			continue
		}
		signed, err := gomatrixserverlib.SignJSON(remoteName, gomatrixserverlib.KeyID(fuzzKey.ID), fuzzKey.Private, raw)
		if err != nil {
			continue
		}
		var parsed struct {
			Signatures map[string]map[string]spec.Base64Bytes `json:"signatures"`
		}
		if err := json.Unmarshal(signed, &parsed); err != nil {
			continue
		}
		want := []byte(parsed.Signatures[remoteName][fuzzKey.ID])
		for _, h := range headers {
			x, err := ParseAuthorization(h)
			if err != nil || x.Origin != remoteName || x.KeyID != fuzzKey.ID {
				continue
			}
			if x.Destination != "" && x.Destination != destination {
				continue
			}
			if got, err := decodeBase64(x.Signature); err == nil && bytes.Equal(got, want) {
				return true
			}
		}
	}
	return false
}

// FuzzParseServerName feeds server names as peers send them (X-Matrix
// origins, .well-known m.server values, SRV targets) to the parser.
func FuzzParseServerName(f *testing.F) {
	for _, seed := range []string{
		"matrix.org", "matrix.org:8448", "1.2.3.4:1", "[::1]", "[::ffff:127.0.0.1]:8448", "[fe80::1%eth0]:1",
		"a.b.", "127.1", "01.2.3.4", "host:0", "host:65536", "host:08448", "[::1]:", ":", "[", "]", "",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, name string) {
		s, err := parseServerName(name)
		if err == nil {
			again, err := parseServerName(s.String())
			require.NoError(t, err, "re-parsing %q", s.String())
			require.Equal(t, s, again)
			require.True(t, s.port >= 0 && s.port <= 65535)
			if s.isIP() {
				ip, err := netip.ParseAddr(s.host)
				require.NoError(t, err)
				require.Equal(t, s.ip, ip)
				require.Empty(t, ip.Zone())
			}
			host, port, err := net.SplitHostPort(s.hostPort(8448))
			require.NoError(t, err)
			require.Equal(t, s.host, host)
			require.NotEqual(t, "0", port)
			// Whatever we accept, gomatrixserverlib accepts too.
			_, _, valid := spec.ParseAndValidateServerName(spec.ServerName(name))
			require.True(t, valid, "%q", name)
		}

		// The same text as an SRV target.
		routes, err := srvTargets([]*net.SRV{{Target: name, Port: 8448}}, "hs.example.com")
		if err == nil {
			require.Len(t, routes, 1)
			host, _, err := net.SplitHostPort(routes[0].addr)
			require.NoError(t, err)
			require.True(t, validHostname(host), "%q", host)
		}
	})
}

// FuzzWellKnown feeds /.well-known/matrix/server answers, body and caching
// headers, to their parsers.
func FuzzWellKnown(f *testing.F) {
	f.Add([]byte(`{"m.server":"matrix.example.org:443"}`), "max-age=3600", "")
	f.Add([]byte(`{"m.server":"[::1]","m.server":"a"}`), "no-store, max-age=1", "Thu, 01 Jan 1970 00:00:00 GMT")
	f.Add([]byte(`{"m.server":null}`), `max-age="60"`, "0")
	f.Add([]byte(`[]`), "", "Wed, 21 Oct 2037 07:28:00 GMT")
	f.Fuzz(func(t *testing.T, body []byte, cacheControl, expires string) {
		s, err := parseWellKnown(body)
		if err == nil {
			again, err := parseServerName(s.String())
			require.NoError(t, err)
			require.Equal(t, s, again)
		}
		header := http.Header{}
		if cacheControl != "" {
			header.Set("Cache-Control", cacheControl)
		}
		if expires != "" {
			header.Set("Expires", expires)
		}
		ttl := wellKnownTTL(header, time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))
		require.GreaterOrEqual(t, ttl, wellKnownMinTTL)
		require.LessOrEqual(t, ttl, wellKnownMaxTTL)
	})
}
