package sign

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// maxKeyResponseBytes caps a key server's answer. A key document is well
// under a kilobyte; without a cap a hostile server could stream an endless
// body at us.
const maxKeyResponseBytes = 512 << 10

var errKeyResponseTooLarge = errors.New("key server response too large")

// keyClient makes the verifier's requests to key servers: an origin's
// /_matrix/key/v2/server and notaries' /_matrix/key/v2/query. It
// implements gomatrixserverlib.KeyClient, which PerspectiveKeyFetcher
// fetches through.
//
// A server's requests go, in order of precedence, to its base URL in
// overrides (VerifierConfig.Resolve), through custom
// (VerifierConfig.Transport), or to the routes discovery finds, over
// connections made by dialer. No redirect is followed (as Synapse's
// federation client follows none).
type keyClient struct {
	overrides  map[string]*url.URL
	overridden http.RoundTripper // carries requests to overrides
	custom     http.RoundTripper

	discovery *discovery
	dialer    *dialer
	tlsConfig *tls.Config // nil: the system's roots
}

var _ gomatrixserverlib.KeyClient = (*keyClient)(nil)

// GetServerKeys fetches server's own key document (/_matrix/key/v2/server).
// Its self-signature is checked by the caller (directKeys).
func (c *keyClient) GetServerKeys(ctx context.Context, server spec.ServerName) (gomatrixserverlib.ServerKeys, error) {
	var keys gomatrixserverlib.ServerKeys
	body, err := c.do(ctx, string(server), http.MethodGet, "/_matrix/key/v2/server", nil)
	if err != nil {
		return keys, err
	}
	if err := json.Unmarshal(body, &keys); err != nil {
		return keys, fmt.Errorf("key document from %s: %w", server, err)
	}
	return keys, nil
}

// LookupServerKeys asks notary for keys (/_matrix/key/v2/query).
func (c *keyClient) LookupServerKeys(
	ctx context.Context, notary spec.ServerName,
	requests map[gomatrixserverlib.PublicKeyLookupRequest]spec.Timestamp,
) ([]gomatrixserverlib.ServerKeys, error) {
	type criteria struct {
		MinimumValidUntilTS spec.Timestamp `json:"minimum_valid_until_ts"`
	}
	query := map[spec.ServerName]map[gomatrixserverlib.KeyID]criteria{}
	for r, ts := range requests {
		if query[r.ServerName] == nil {
			query[r.ServerName] = map[gomatrixserverlib.KeyID]criteria{}
		}
		if r.KeyID != "" {
			query[r.ServerName][r.KeyID] = criteria{ts}
		}
	}
	reqBody, err := json.Marshal(map[string]any{"server_keys": query})
	if err != nil {
		return nil, fmt.Errorf("key query to %s: %w", notary, err)
	}
	body, err := c.do(ctx, string(notary), http.MethodPost, "/_matrix/key/v2/query", reqBody)
	if err != nil {
		return nil, err
	}
	var response struct {
		ServerKeys []json.RawMessage `json:"server_keys"`
	}
	if err := json.Unmarshal(body, &response); err != nil {
		return nil, fmt.Errorf("key query answer from %s: %w", notary, err)
	}
	var results []gomatrixserverlib.ServerKeys
	for _, raw := range response.ServerKeys {
		var keys gomatrixserverlib.ServerKeys
		// An entry that does not decode is skipped; the others may still
		// hold the key we want, and each is signature-checked by the caller.
		if err := json.Unmarshal(raw, &keys); err == nil {
			results = append(results, keys)
		}
	}
	return results, nil
}

// do sends one request to server and returns the body of its 200 answer.
func (c *keyClient) do(ctx context.Context, server, method, path string, body []byte) ([]byte, error) {
	if base, ok := c.overrides[server]; ok {
		target := *base
		target.Path = strings.TrimSuffix(base.Path, "/") + path
		return c.send(ctx, c.overridden, method, target.String(), "", body)
	}
	if c.custom != nil {
		target := url.URL{Scheme: "matrix", Host: server, Path: path}
		return c.send(ctx, c.custom, method, target.String(), "", body)
	}
	routes, err := c.discovery.routes(ctx, server)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", server, err)
	}
	var errs []error
	for _, rt := range routes {
		answer, err := c.sendRoute(ctx, rt, method, path, body)
		if err == nil {
			return answer, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// sendRoute sends a request along one route. The transport is the route's
// own, made for this request: it dials the route's address whatever the
// URL says, and checks the certificate against the route's TLS name, which
// may be neither the URL's host nor the dialled host (SRV). A pool shared
// between routes would have to be keyed by all three.
func (c *keyClient) sendRoute(ctx context.Context, rt route, method, path string, body []byte) ([]byte, error) {
	tlsConfig := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.tlsConfig != nil {
		tlsConfig = c.tlsConfig.Clone()
	}
	tlsConfig.ServerName = rt.tlsName
	tr := c.dialer.transport(tlsConfig)
	tr.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return c.dialer.DialContext(ctx, network, rt.addr)
	}
	defer tr.CloseIdleConnections()
	target := url.URL{Scheme: "https", Host: rt.host, Path: path}
	answer, err := c.send(ctx, tr, method, target.String(), rt.host, body)
	if err != nil {
		return nil, fmt.Errorf("via %s: %w", rt.addr, err)
	}
	return answer, nil
}

// send makes one request through rt and reads its answer, at most
// maxKeyResponseBytes of it; any status but 200 is an error.
func (c *keyClient) send(ctx context.Context, rt http.RoundTripper, method, target, host string, body []byte) ([]byte, error) {
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, reader)
	if err != nil {
		return nil, err
	}
	if host != "" {
		req.Host = host
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	client := &http.Client{Transport: rt, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxKeyResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading answer: %w", method, target, err)
	}
	if len(answer) > maxKeyResponseBytes {
		return nil, fmt.Errorf("%s %s: %w", method, target, errKeyResponseTooLarge)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: HTTP status %d", method, target, resp.StatusCode)
	}
	return answer, nil
}

// parseOverrides checks VerifierConfig.Resolve.
func parseOverrides(resolve map[string]string) (map[string]*url.URL, error) {
	overrides := make(map[string]*url.URL, len(resolve))
	for server, base := range resolve {
		u, err := url.Parse(base)
		if err != nil {
			return nil, fmt.Errorf("Resolve[%q]: %w", server, err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("Resolve[%q]: want an http:// or https:// base URL, got %q", server, base)
		}
		overrides[server] = u
	}
	return overrides, nil
}
