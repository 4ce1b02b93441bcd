package sign

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// maxKeyResponseBytes caps a key server's answer. A key document is well
// under a kilobyte; fclient's own client decodes without any limit, so a
// hostile server could otherwise stream an endless body at us.
const maxKeyResponseBytes = 512 << 10

var errKeyResponseTooLarge = errors.New("key server response too large")

// keyClient implements gomatrixserverlib.KeyClient (what DirectKeyFetcher
// and PerspectiveKeyFetcher fetch through) on top of fclient's HTTP client
// and server discovery, with a cap on response size and a per-server
// override of where requests go.
type keyClient struct {
	// discovery carries requests for servers not in overrides: fclient's
	// resolution (well-known, SRV, port 8448), or Config.Transport.
	discovery *fclient.Client
	// overridden carries requests for servers in overrides.
	overridden *fclient.Client
	overrides  map[string]*url.URL
}

var _ gomatrixserverlib.KeyClient = (*keyClient)(nil)

func (c *keyClient) clientFor(server spec.ServerName) *fclient.Client {
	if _, ok := c.overrides[string(server)]; ok {
		return c.overridden
	}
	return c.discovery
}

// GetServerKeys fetches server's own key document (/_matrix/key/v2/server).
// Its self-signature is checked by the caller (DirectKeyFetcher).
func (c *keyClient) GetServerKeys(ctx context.Context, server spec.ServerName) (gomatrixserverlib.ServerKeys, error) {
	var keys gomatrixserverlib.ServerKeys
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, matrixURL(server, "/_matrix/key/v2/server"), nil)
	if err != nil {
		return keys, fmt.Errorf("key request for %s: %w", server, err)
	}
	body, err := c.do(ctx, server, req)
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
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, matrixURL(notary, "/_matrix/key/v2/query"), bytes.NewReader(reqBody))
	if err != nil {
		return nil, fmt.Errorf("key query to %s: %w", notary, err)
	}
	req.Header.Set("Content-Type", "application/json")
	body, err := c.do(ctx, notary, req)
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

func (c *keyClient) do(ctx context.Context, server spec.ServerName, req *http.Request) ([]byte, error) {
	resp, err := c.clientFor(server).DoHTTPRequest(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxKeyResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading answer: %w", req.Method, req.URL, err)
	}
	if len(body) > maxKeyResponseBytes {
		return nil, fmt.Errorf("%s %s: %w", req.Method, req.URL, errKeyResponseTooLarge)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: HTTP status %d", req.Method, req.URL, resp.StatusCode)
	}
	return body, nil
}

// matrixURL is the form of URL fclient's transport resolves: the Matrix
// server name as host, resolved to an address only when sent.
func matrixURL(server spec.ServerName, path string) string {
	return (&url.URL{Scheme: "matrix", Host: string(server), Path: path}).String()
}

// overrideTransport sends requests for matrix://<server>/… to a fixed base
// URL per server (Config.Resolve), bypassing discovery; used by tests and by
// tools that point a server name at a loopback address.
type overrideTransport struct {
	overrides map[string]*url.URL
	next      http.RoundTripper
}

func (t *overrideTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	base, ok := t.overrides[r.URL.Host]
	if !ok {
		return nil, fmt.Errorf("no address configured for server %q", r.URL.Host)
	}
	out := r.Clone(r.Context())
	out.URL.Scheme = base.Scheme
	out.URL.Host = base.Host
	out.URL.Path = strings.TrimSuffix(base.Path, "/") + r.URL.Path
	out.URL.RawPath = ""
	out.Host = base.Host
	return t.next.RoundTrip(out)
}

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
