package fedhistory

import (
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/gorilla/mux"
	"golang.org/x/sync/singleflight"

	"github.com/fedhistory/fedhistory/internal/matrixerr"
	"github.com/fedhistory/fedhistory/internal/setting"
)

// Prefix is the path under which the history endpoints live. The handler
// New returns answers both the full paths and, when a homeserver mounts it
// with http.StripPrefix(Prefix, …), the stripped ones.
const Prefix = "/_matrix/federation/v1"

// Defaults for the request limits in Config. They follow Synapse where the
// spec is silent: backfill pages of at most 100 events, get_missing_events
// answers of at most 20 (Synapse caps limit at 20 in FederationHandler too).
const (
	DefaultMaxBackfillLimit    = 100
	DefaultMaxBackfillSeeds    = 100
	DefaultMissingEventsLimit  = 10 // the spec's default for "limit"
	DefaultMaxMissingEvents    = 20
	DefaultMaxMissingEventIDs  = 1000
	DefaultMaxRequestBodyBytes = 64 << 10
)

// Authenticator authenticates a federation request: it returns the name of
// the server that sent it, or an error, and the handler answers the error
// 401 M_UNAUTHORIZED (with the error's text) before any other work. A
// *sign.Verifier checks X-Matrix signatures; a homeserver that authenticates
// federation requests itself can pass its own (see AuthenticatorFunc).
//
// The handler calls Authenticate first thing, with r.Body wrapped in
// http.MaxBytesReader (Config.MaxRequestBodyBytes) and, on servers that
// allow it, a read deadline at the request's deadline: an Authenticator
// that reads the body to check a signature needs no limits of its own, and
// must leave r.Body readable again for the endpoint. A body that is too
// large is answered 413 when the error wraps *http.MaxBytesError.
type Authenticator interface {
	Authenticate(r *http.Request) (origin string, err error)
}

// AuthenticatorFunc adapts a function to Authenticator, as
// http.HandlerFunc does for handlers.
type AuthenticatorFunc func(r *http.Request) (origin string, err error)

// Authenticate calls f(r).
func (f AuthenticatorFunc) Authenticate(r *http.Request) (string, error) { return f(r) }

// Config configures the handler. Only ServerName, Store and Authenticator
// are required; every other zero value selects the documented default.
type Config struct {
	// ServerName is our server name: the "origin" of the transactions we
	// answer with.
	ServerName string

	// Store holds the rooms' events. See EventStore, and storetest for a
	// conformance suite to run against your own implementation. The
	// optional capabilities it implements decide which endpoints are
	// served (see Handler.Endpoints).
	Store EventStore

	// Authenticator verifies each request before any other work is done
	// (typically a *sign.Verifier). It is required: there is no
	// unauthenticated mode, because the endpoints hand out private room
	// history.
	Authenticator Authenticator

	// MaxBackfillLimit caps backfill's "limit" query parameter; larger
	// values are silently lowered to it (as Synapse does). Default 100.
	MaxBackfillLimit int

	// MaxBackfillSeeds is the most "v" event IDs one backfill request may
	// name; more is answered 400 M_INVALID_PARAM. Default 100.
	MaxBackfillSeeds int

	// MaxMissingEvents caps get_missing_events' "limit"; larger values are
	// silently lowered to it. Default 20.
	MaxMissingEvents int

	// MaxMissingEventIDs is the most IDs that "earliest_events" and
	// "latest_events" may each hold; more is answered 400 M_INVALID_PARAM.
	// Default 1000.
	MaxMissingEventIDs int

	// MaxRequestBodyBytes caps a request's body, whatever the endpoint; a
	// larger one is answered 413 M_TOO_LARGE. It is the only body limit: the
	// handler hands the Authenticator the body already bounded by it.
	// Default 64 KiB.
	MaxRequestBodyBytes int64

	// MaxWalkVisits bounds the events one walk may fetch from the store,
	// whatever the DAG looks like (a room full of rejected events, a huge
	// fan-out of prev_events). 0 selects the dag package's default, which
	// grows with the request's limit. A store that walks itself
	// (BackfillWalker, MissingEventsWalker) gets the budget with the request.
	MaxWalkVisits int

	// MaxConcurrentPerOrigin is how many requests of one authenticated
	// origin are served at once; MaxQueuedPerOrigin how many more may wait
	// for a turn. Beyond that an origin gets 429 M_LIMIT_EXCEEDED with
	// retry_after_ms, so one noisy server cannot starve the others. A
	// request whose deadline passes while it waits is answered 503 (a
	// timeout, not a refusal). Defaults 3 and 50 (Synapse's federation
	// limiter).
	MaxConcurrentPerOrigin int
	MaxQueuedPerOrigin     int

	// MaxInFlight caps the authenticated requests the handler runs at once,
	// from all origins; beyond it: 429. Requests waiting in an origin's
	// queue do not count, so no origin's queue can take the others'
	// capacity. Work before authentication (key fetches) is bounded by the
	// Authenticator (sign.VerifierConfig). Default 256.
	MaxInFlight int

	// RequestTimeout is the deadline of one request, including reading its
	// body, key fetching and every store call (the context reaches the
	// store). Default 30s.
	RequestTimeout time.Duration

	// MaxHeaderBytes caps the request line's URI plus all header names and
	// values; larger requests get 431 M_TOO_LARGE. Default 16 KiB. (Also set
	// http.Server.MaxHeaderBytes: it rejects before the handler runs.)
	MaxHeaderBytes int

	// StateCacheBytes bounds the cache of /state_ids answers (the state
	// before an event and its auth chain, as IDs), which never go stale
	// (see EventStore, "Order of adds"). /state shares it for the IDs and
	// reads the events afresh. Default 64 MiB.
	StateCacheBytes int

	// Logger receives a line per failed request (store errors, cancelled
	// requests, recovered panics, misbehaving stores), with the fields
	// endpoint, origin, room_id, status, duration and error; never event
	// content or signatures. The same failure recurring (a database outage)
	// is logged once per 10 s with a count. Default slog.Default(), as for
	// sign.VerifierConfig.Logger.
	Logger *slog.Logger

	// Trace receives callbacks for metrics and tracing (see Trace and the
	// fedhistory/prom and fedhistory/otel packages). Nil costs nothing.
	Trace *Trace

	// Now is the clock used for origin_server_ts. Default time.Now.
	Now func() time.Time
}

// withDefaults validates cfg and fills in the defaults.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.ServerName == "" {
		return cfg, errors.New("fedhistory: Config.ServerName is required")
	}
	if cfg.Store == nil {
		return cfg, errors.New("fedhistory: Config.Store is required")
	}
	if cfg.Authenticator == nil {
		return cfg, errors.New("fedhistory: Config.Authenticator is required (use sign.NewVerifier)")
	}
	setting.Default(&cfg.MaxBackfillLimit, DefaultMaxBackfillLimit)
	setting.Default(&cfg.MaxBackfillSeeds, DefaultMaxBackfillSeeds)
	setting.Default(&cfg.MaxMissingEvents, DefaultMaxMissingEvents)
	setting.Default(&cfg.MaxMissingEventIDs, DefaultMaxMissingEventIDs)
	setting.Default(&cfg.MaxRequestBodyBytes, DefaultMaxRequestBodyBytes)
	setting.Default(&cfg.MaxConcurrentPerOrigin, DefaultMaxConcurrentPerOrigin)
	setting.Default(&cfg.MaxQueuedPerOrigin, DefaultMaxQueuedPerOrigin)
	setting.Default(&cfg.MaxInFlight, DefaultMaxInFlight)
	setting.Default(&cfg.MaxHeaderBytes, DefaultMaxHeaderBytes)
	setting.Default(&cfg.RequestTimeout, DefaultRequestTimeout)
	setting.Default(&cfg.StateCacheBytes, DefaultStateCacheBytes)
	if cfg.MaxWalkVisits < 0 {
		cfg.MaxWalkVisits = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return cfg, nil
}

// Handler serves the history endpoints. It is an http.Handler for the whole
// API under Prefix; Routes gives one handler per route for routers that
// dispatch themselves.
type Handler struct {
	cfg Config
	// store is cfg.Store, wrapped to report its calls when
	// cfg.Trace.StoreCall is set.
	store     EventStore
	failures  *failureLog
	perOrigin *originLimiter
	inFlight  inFlightLimit
	// routes are the endpoints the store supports, by their path segment.
	routes map[string]*route

	// stateCache holds /state_ids answers; stateLookups lets concurrent
	// requests for one event's state share one lookup.
	stateCache   *stateIDsCache
	stateLookups singleflight.Group
}

// route is one endpoint: GET or POST Prefix/name/{params…}.
type route struct {
	name   string
	method string
	params []string // the path parameters' names, in order
	// serve runs the endpoint; params are the path parameters, still
	// percent-encoded.
	serve func(req *request, params []string)
}

// New returns a Handler serving, under Prefix,
//
//	GET  /backfill/{roomId}
//	POST /get_missing_events/{roomId}
//
// and, when cfg.Store implements the capability each needs (see
// Handler.Endpoints),
//
//	GET  /state_ids/{roomId}, /state/{roomId}, /event_auth/{roomId}/{eventId}   (StateStore)
//	GET  /event/{eventId}                                                       (EventLookupStore)
//	GET  /timestamp_to_event/{roomId}                                           (TimestampStore)
//
// Mount it at the server's root or behind http.StripPrefix(Prefix, …). Any
// other path gets 404 M_UNRECOGNIZED, a wrong method 405 M_UNRECOGNIZED.
// Every path also accepts a trailing slash, as Synapse does.
func New(cfg Config) (*Handler, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	h := &Handler{
		cfg:        cfg,
		store:      cfg.Store,
		failures:   newFailureLog(cfg.Logger),
		perOrigin:  newOriginLimiter(cfg.MaxConcurrentPerOrigin, cfg.MaxQueuedPerOrigin),
		inFlight:   make(inFlightLimit, cfg.MaxInFlight),
		routes:     make(map[string]*route),
		stateCache: newStateIDsCache(cfg.StateCacheBytes),
	}
	if cfg.Trace != nil && cfg.Trace.StoreCall != nil {
		h.store = &tracedStore{inner: cfg.Store, call: cfg.Trace.StoreCall}
	}
	add := func(method, name string, params []string, serve func(*request, []string)) {
		h.routes[name] = &route{name: name, method: method, params: params, serve: serve}
	}
	add(http.MethodGet, "backfill", []string{"roomId"}, h.backfill)
	add(http.MethodPost, "get_missing_events", []string{"roomId"}, h.getMissingEvents)
	if _, ok := cfg.Store.(StateStore); ok {
		add(http.MethodGet, "state_ids", []string{"roomId"}, h.stateIDs)
		add(http.MethodGet, "state", []string{"roomId"}, h.state)
		add(http.MethodGet, "event_auth", []string{"roomId", "eventId"}, h.eventAuth)
	}
	if _, ok := cfg.Store.(EventLookupStore); ok {
		add(http.MethodGet, "event", []string{"eventId"}, h.event)
	}
	if _, ok := cfg.Store.(TimestampStore); ok {
		add(http.MethodGet, "timestamp_to_event", []string{"roomId"}, h.timestampToEvent)
	}
	return h, nil
}

// Endpoint is one route a Handler serves: its method and its path, in the
// pattern syntax of http.ServeMux and gorilla/mux.
type Endpoint struct {
	Method string // "GET" or "POST"
	Path   string // "/_matrix/federation/v1/backfill/{roomId}"
}

// Endpoints lists the routes h serves, sorted by path: the two walks always,
// the others as far as the store's capabilities allow.
func (h *Handler) Endpoints() []Endpoint {
	var out []Endpoint
	for _, name := range slices.Sorted(maps.Keys(h.routes)) {
		rt := h.routes[name]
		out = append(out, Endpoint{Method: rt.method, Path: rt.path()})
	}
	return out
}

func (rt *route) path() string {
	p := Prefix + "/" + rt.name
	for _, param := range rt.params {
		p += "/{" + param + "}"
	}
	return p
}

// Route is one route with its own handler, for mounting on a router that
// dispatches by pattern.
type Route struct {
	// Pattern is an http.ServeMux pattern: "GET /_matrix/federation/v1/backfill/{roomId}",
	// or the same path with a trailing slash ("…/{roomId}/{$}").
	Pattern string
	Handler http.Handler
}

// Routes returns a pattern and a handler for each route h serves, with and
// without a trailing slash, for http.ServeMux:
//
//	for _, route := range h.Routes() {
//		mux.Handle(route.Pattern, route.Handler)
//	}
//
// Each handler reads its parameters from the end of the request's path, so
// it works under any prefix. (Mounting h itself, mux.Handle(Prefix+"/", h),
// works too, but claims every path under Prefix.)
func (h *Handler) Routes() []Route {
	var out []Route
	for _, name := range slices.Sorted(maps.Keys(h.routes)) {
		rt := h.routes[name]
		handler := h.routeHandler(rt)
		out = append(out,
			Route{Pattern: rt.method + " " + rt.path(), Handler: handler},
			Route{Pattern: rt.method + " " + rt.path() + "/{$}", Handler: handler})
	}
	return out
}

// Register adds the routes New(cfg) serves, each under Prefix (never at the
// router's root) and with an optional trailing slash, to a gorilla/mux
// router, for a homeserver that routes its federation API with it. Call
// router.UseEncodedPath() if room IDs may hold "%2F".
func Register(router *mux.Router, cfg Config) (*Handler, error) {
	h, err := New(cfg)
	if err != nil {
		return nil, err
	}
	for _, name := range slices.Sorted(maps.Keys(h.routes)) {
		rt := h.routes[name]
		handler := h.routeHandler(rt)
		router.Handle(rt.path(), handler).Methods(rt.method)
		router.Handle(rt.path()+"/", handler).Methods(rt.method)
	}
	return h, nil
}

// routeHandler serves rt alone, taking its parameters from the end of the
// path.
func (h *Handler) routeHandler(rt *route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		segments := strings.Split(strings.TrimSuffix(r.URL.EscapedPath(), "/"), "/")
		if len(segments) < len(rt.params) {
			writeUnrecognized(w)
			return
		}
		h.serve(w, r, rt, segments[len(segments)-len(rt.params):])
	})
}

// ServeHTTP routes a request under Prefix (or with Prefix stripped) to its
// endpoint.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt, params := h.route(r.URL.EscapedPath())
	switch {
	case rt == nil:
		writeUnrecognized(w)
	case r.Method != rt.method:
		matrixerr.Write(w, http.StatusMethodNotAllowed, matrixerr.Unrecognized, "method not allowed: "+r.Method)
	default:
		h.serve(w, r, rt, params)
	}
}

// route finds the endpoint of an escaped path: Prefix (optional), the
// endpoint's name, then exactly its parameters, each a non-empty segment,
// and an optional trailing slash. The parameters stay percent-encoded, so
// an encoded "/" in a room ID never splits it.
func (h *Handler) route(path string) (*route, []string) {
	if rest, ok := strings.CutPrefix(path, Prefix); ok && strings.HasPrefix(rest, "/") {
		path = rest
	}
	path, ok := strings.CutPrefix(path, "/")
	if !ok {
		return nil, nil
	}
	segments := strings.Split(strings.TrimSuffix(path, "/"), "/")
	rt := h.routes[segments[0]]
	if rt == nil || len(segments)-1 != len(rt.params) {
		return nil, nil
	}
	for _, s := range segments[1:] {
		if s == "" {
			return nil, nil
		}
	}
	return rt, segments[1:]
}

func writeUnrecognized(w http.ResponseWriter) {
	matrixerr.Write(w, http.StatusNotFound, matrixerr.Unrecognized, "unrecognized request")
}

// pathRoomID decodes a {roomId} path parameter. gomatrixserverlib's client
// sends "!" and ":" raw, others encode them; both decode to the same ID.
func pathRoomID(raw string) (string, *paramError) {
	roomID, err := url.PathUnescape(raw)
	if err != nil {
		return "", &paramError{matrixerr.InvalidParam, "room ID is not percent-encoded correctly"}
	}
	if !strings.HasPrefix(roomID, "!") || len(roomID) > 255 {
		return "", &paramError{matrixerr.InvalidParam, "not a room ID"}
	}
	return roomID, nil
}

// pathEventID decodes an {eventId} path parameter.
func pathEventID(raw string) (string, *paramError) {
	eventID, err := url.PathUnescape(raw)
	if err != nil {
		return "", &paramError{matrixerr.InvalidParam, "event ID is not percent-encoded correctly"}
	}
	if !strings.HasPrefix(eventID, "$") || len(eventID) > 255 {
		return "", &paramError{matrixerr.InvalidParam, "not an event ID"}
	}
	return eventID, nil
}
