package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/matrix-org/gomatrixserverlib/fclient"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/sign"
)

// maxResponseBytes bounds what the client reads of an answer. A backfill of
// the largest sensible page (a few hundred PDUs of at most 64 KiB each) fits
// with room to spare; more is a misbehaving server.
const maxResponseBytes = 64 << 20

// federationClient sends signed requests to one server, as origin.
type federationClient struct {
	// base is the URL requests go to: "http://host:port" as given, or
	// "matrix://server-name" to be resolved by the spec's server discovery.
	base        string
	destination string
	origin      string
	key         *sign.SigningKey
	send        func(*http.Request) (*http.Response, error)
}

// newFederationClient makes a client for target, which is either a base URL
// (http:// or https://, used as is) or a server name, resolved by
// gomatrixserverlib's fclient with the spec's discovery (.well-known, SRV,
// port 8448) and always spoken to over TLS. destination overrides the
// X-Matrix destination for a URL target; it defaults to the URL's
// host:port.
//
// insecure skips the verification of the server's TLS certificate, for test
// servers with self-signed certificates.
func newFederationClient(target, destination, origin string, key *sign.SigningKey, timeout time.Duration, insecure bool) (*federationClient, error) {
	c := &federationClient{origin: origin, key: key}
	if strings.HasPrefix(target, "http://") || strings.HasPrefix(target, "https://") {
		u, err := url.Parse(target)
		if err != nil || u.Host == "" {
			return nil, usageErrorf("--server %q: not a valid URL", target)
		}
		if u.RawQuery != "" || u.Fragment != "" {
			return nil, usageErrorf("--server %q: the URL may not have a query or fragment", target)
		}
		c.base = strings.TrimSuffix(target, "/")
		c.destination = destination
		if c.destination == "" {
			c.destination = u.Host
		}
		transport := http.DefaultTransport.(*http.Transport).Clone()
		if insecure {
			transport.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // asked for with --insecure
		}
		httpClient := &http.Client{Timeout: timeout, Transport: transport}
		c.send = httpClient.Do
		return c, nil
	}
	if strings.ContainsAny(target, "/?#@ ") || target == "" {
		return nil, usageErrorf("--server %q: want a server name or an http(s):// URL", target)
	}
	if destination != "" && destination != target {
		return nil, usageErrorf("--destination is only for a --server URL; a server name is its own destination")
	}
	c.base = "matrix://" + target
	c.destination = target
	discovery := fclient.NewClient(fclient.WithWellKnownSRVLookups(true), fclient.WithTimeout(timeout), fclient.WithSkipVerify(insecure))
	c.send = func(r *http.Request) (*http.Response, error) { return discovery.DoHTTPRequest(r.Context(), r) }
	return c, nil
}

// response is an answer as received.
type response struct {
	Status int
	Body   []byte
}

// matrixError is the spec's standard error body.
type matrixError struct {
	ErrCode string `json:"errcode"`
	Error   string `json:"error"`
}

// errorResponseError is an answer with a non-2xx status.
type errorResponseError struct {
	Status int
	matrixError
	Body []byte
}

func (e *errorResponseError) Error() string {
	if e.ErrCode == "" {
		body := string(e.Body)
		if len(body) > 200 {
			body = body[:200] + "…"
		}
		return fmt.Sprintf("HTTP %d: %s", e.Status, body)
	}
	return fmt.Sprintf("HTTP %d: %s: %s", e.Status, e.ErrCode, e.matrixError.Error)
}

// asError returns nil for a 2xx answer and an *errorResponseError otherwise.
func (r *response) asError() error {
	if r.Status/100 == 2 {
		return nil
	}
	e := &errorResponseError{Status: r.Status, Body: r.Body}
	_ = json.Unmarshal(r.Body, &e.matrixError) // not JSON: the raw body is reported
	return e
}

// backfillURI is the request URI of a backfill request.
func backfillURI(roomID string, from []string, limit int) string {
	query := url.Values{"v": from, "limit": {strconv.Itoa(limit)}}
	return fedhistory.Prefix + "/backfill/" + url.PathEscape(roomID) + "?" + query.Encode()
}

// missingEventsBody is the body of a get_missing_events request.
type missingEventsBody struct {
	Limit          int      `json:"limit"`
	MinDepth       int64    `json:"min_depth"`
	EarliestEvents []string `json:"earliest_events"`
	LatestEvents   []string `json:"latest_events"`
}

func missingEventsURI(roomID string) string {
	return fedhistory.Prefix + "/get_missing_events/" + url.PathEscape(roomID)
}

// Backfill sends GET /backfill.
func (c *federationClient) Backfill(ctx context.Context, roomID string, from []string, limit int) (*response, error) {
	return c.do(ctx, http.MethodGet, backfillURI(roomID, from, limit), nil)
}

// MissingEvents sends POST /get_missing_events.
func (c *federationClient) MissingEvents(ctx context.Context, roomID string, body missingEventsBody) (*response, error) {
	content, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	return c.do(ctx, http.MethodPost, missingEventsURI(roomID), content)
}

// stateURI is the request URI of /state_ids (ids) or /state: the state
// before eventID in roomID, and its auth chain.
func stateURI(ids bool, roomID, eventID string) string {
	endpoint := "/state/"
	if ids {
		endpoint = "/state_ids/"
	}
	return fedhistory.Prefix + endpoint + url.PathEscape(roomID) + "?" + url.Values{"event_id": {eventID}}.Encode()
}

// eventAuthURI is the request URI of /event_auth: the auth chain of one
// event.
func eventAuthURI(roomID, eventID string) string {
	return fedhistory.Prefix + "/event_auth/" + url.PathEscape(roomID) + "/" + url.PathEscape(eventID)
}

// eventURI is the request URI of /event: one event, as a transaction.
func eventURI(eventID string) string {
	return fedhistory.Prefix + "/event/" + url.PathEscape(eventID)
}

// timestampURI is the request URI of /timestamp_to_event: the event of
// roomID nearest ts (milliseconds since the Unix epoch) in direction dir,
// "f" or "b".
func timestampURI(roomID string, ts int64, dir string) string {
	query := url.Values{"ts": {strconv.FormatInt(ts, 10)}, "dir": {dir}}
	return fedhistory.Prefix + "/timestamp_to_event/" + url.PathEscape(roomID) + "?" + query.Encode()
}

// StateIDs sends GET /state_ids.
func (c *federationClient) StateIDs(ctx context.Context, roomID, eventID string) (*response, error) {
	return c.do(ctx, http.MethodGet, stateURI(true, roomID, eventID), nil)
}

// State sends GET /state.
func (c *federationClient) State(ctx context.Context, roomID, eventID string) (*response, error) {
	return c.do(ctx, http.MethodGet, stateURI(false, roomID, eventID), nil)
}

// EventAuth sends GET /event_auth.
func (c *federationClient) EventAuth(ctx context.Context, roomID, eventID string) (*response, error) {
	return c.do(ctx, http.MethodGet, eventAuthURI(roomID, eventID), nil)
}

// Event sends GET /event.
func (c *federationClient) Event(ctx context.Context, eventID string) (*response, error) {
	return c.do(ctx, http.MethodGet, eventURI(eventID), nil)
}

// TimestampToEvent sends GET /timestamp_to_event.
func (c *federationClient) TimestampToEvent(ctx context.Context, roomID string, ts int64, dir string) (*response, error) {
	return c.do(ctx, http.MethodGet, timestampURI(roomID, ts, dir), nil)
}

// do sends one request, signed when the client has a key.
func (c *federationClient) do(ctx context.Context, method, requestURI string, body []byte) (*response, error) {
	var reader io.Reader
	if body != nil {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+requestURI, reader)
	if err != nil {
		return nil, fmt.Errorf("building request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.key != nil {
		if err := c.key.SignRequest(req, c.origin, c.destination); err != nil {
			return nil, fmt.Errorf("signing request: %w", err)
		}
	}
	resp, err := c.send(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, requestURI, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s %s: reading the answer: %w", method, requestURI, err)
	}
	if len(data) > maxResponseBytes {
		return nil, fmt.Errorf("%s %s: answer larger than %d bytes", method, requestURI, maxResponseBytes)
	}
	return &response{Status: resp.StatusCode, Body: data}, nil
}

// clientFlags are the options the client subcommands share.
type clientFlags struct {
	server, destination, origin, signingKey string
	room                                    string
	raw, insecure                           bool
	timeout                                 time.Duration
}

// register adds the shared options to fs, --room among them: every
// client subcommand but event names a room.
func (f *clientFlags) register(fs *flag.FlagSet) {
	f.registerRoomless(fs)
	fs.StringVar(&f.room, "room", "", "`ID` the room (required)")
}

// registerRoomless adds the shared options but --room.
func (f *clientFlags) registerRoomless(fs *flag.FlagSet) {
	fs.StringVar(&f.server, "server", "", "`NAME|URL` the server to ask: an http(s):// URL is used as is, a server name is found by the spec's discovery (required)")
	fs.StringVar(&f.destination, "destination", "", "`NAME` the destination server signed into the request when --server is a URL (default: the URL's host:port)")
	fs.StringVar(&f.origin, "origin", "", "`NAME` our server, signed into the request (required)")
	fs.StringVar(&f.signingKey, "signing-key", "", "`FILE` our signing key, Synapse format (required)")
	fs.BoolVar(&f.raw, "raw", false, "print the answer's bytes as received instead of pretty JSON")
	fs.BoolVar(&f.insecure, "insecure", false, "do not verify the server's TLS certificate (for test servers with self-signed certificates)")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "`DURATION` how long to wait for the answer")
}

// requiredClientFlags are the options of clientFlags that must be given
// (registerRoomless leaves out the last).
var requiredClientFlags = []string{"server", "origin", "signing-key", "room"}

// requiredRoomlessFlags are those of registerRoomless. Its capacity ends
// with it, so that appending to it never writes into requiredClientFlags.
var requiredRoomlessFlags = requiredClientFlags[: len(requiredClientFlags)-1 : len(requiredClientFlags)-1]

// client checks the shared options (requireFlags has checked that the
// required ones were given) and builds the client.
func (f *clientFlags) client() (*federationClient, error) {
	if f.timeout <= 0 {
		return nil, usageErrorf("--timeout must be positive")
	}
	key, err := sign.ReadKeyFile(f.signingKey)
	if err != nil {
		return nil, err
	}
	return newFederationClient(f.server, f.destination, f.origin, key, f.timeout, f.insecure)
}

// printResponse writes a 2xx answer to stdout (indented unless raw) or
// returns the error answer, which run reports on stderr.
func printResponse(stdout io.Writer, resp *response, raw bool) error {
	if err := resp.asError(); err != nil {
		return err
	}
	if raw {
		_, err := stdout.Write(resp.Body)
		return err
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, resp.Body, "", "  "); err != nil {
		return fmt.Errorf("the answer is not JSON (use --raw to see it): %w", err)
	}
	pretty.WriteByte('\n')
	_, err := pretty.WriteTo(stdout)
	return err
}

const clientDescription = `
Sends a request signed with X-Matrix as --origin and prints the answer's JSON.
An error answer prints its errcode and error on stderr and exits with status 1.`

func runBackfill(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("backfill")
	var flags clientFlags
	flags.register(fs)
	var from stringList
	fs.Var(&from, "v", "`EVENT` the ID of an event to backfill from (repeatable; at least one)")
	limit := fs.Int("limit", 10, "`N` the most events to return")
	if err := parseFlags(fs, args, out.stdout,
		"--server NAME|URL --origin NAME --signing-key FILE --room ID --v EVENT [--v EVENT…] [--limit N]",
		"GET /_matrix/federation/v1/backfill/{roomId}: the events before (and including) the --v events."+clientDescription); err != nil {
		return err
	}
	if err := requireFlags(fs, append(requiredClientFlags, "v")...); err != nil {
		return err
	}
	if *limit < 0 {
		return usageErrorf("--limit may not be negative")
	}
	client, err := flags.client()
	if err != nil {
		return err
	}
	resp, err := client.Backfill(ctx, flags.room, from, *limit)
	if err != nil {
		return err
	}
	return printResponse(out.stdout, resp, flags.raw)
}

func runMissing(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("missing")
	var flags clientFlags
	flags.register(fs)
	var latest, earliest stringList
	fs.Var(&latest, "latest", "`EVENT` the ID of an event to walk back from (repeatable; at least one)")
	fs.Var(&earliest, "earliest", "`EVENT` the ID of an event we already have, where the walk stops (repeatable)")
	limit := fs.Int("limit", fedhistory.DefaultMissingEventsLimit, "`N` the most events to return")
	minDepth := fs.Int64("min-depth", 0, "`N` the lowest depth of an event to return")
	if err := parseFlags(fs, args, out.stdout,
		"--server NAME|URL --origin NAME --signing-key FILE --room ID --latest EVENT… [--earliest EVENT…] [--limit N] [--min-depth N]",
		"POST /_matrix/federation/v1/get_missing_events/{roomId}: the events between --earliest and --latest."+clientDescription); err != nil {
		return err
	}
	if err := requireFlags(fs, append(requiredClientFlags, "latest")...); err != nil {
		return err
	}
	if *limit < 0 || *minDepth < 0 {
		return usageErrorf("--limit and --min-depth may not be negative")
	}
	client, err := flags.client()
	if err != nil {
		return err
	}
	resp, err := client.MissingEvents(ctx, flags.room, missingEventsBody{
		Limit:          *limit,
		MinDepth:       *minDepth,
		EarliestEvents: nonNil(earliest),
		LatestEvents:   latest,
	})
	if err != nil {
		return err
	}
	return printResponse(out.stdout, resp, flags.raw)
}

// nonNil makes an empty list encode as [] rather than null, which some
// servers refuse.
func nonNil(l []string) []string {
	if l == nil {
		return []string{}
	}
	return l
}
