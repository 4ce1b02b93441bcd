package fedhistory

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gorilla/mux"

	"github.com/fedhistory/fedhistory/internal/matrixerr"
	"github.com/fedhistory/fedhistory/sign"
)

// Prefix is the path under which the history endpoints live. The handler
// returned by New answers both the full paths and, when a homeserver mounts it
// with http.StripPrefix(Prefix, …), the stripped ones.
const Prefix = "/_matrix/federation/v1"

// Defaults for the limits in Config. They follow Synapse where the spec is
// silent: backfill pages of at most 100 events, get_missing_events answers of
// at most 20 (Synapse caps limit at 20 in FederationHandler too).
const (
	DefaultMaxBackfillLimit     = 100
	DefaultMaxBackfillSeeds     = 100
	DefaultMissingEventsLimit   = 10 // the spec's default for "limit"
	DefaultMaxMissingEvents     = 20
	DefaultMaxMissingEventIDs   = 1000
	DefaultMaxRequestBodyBytes  = 64 << 10
	DefaultWalkVisitsPerRequest = 0 // 0: the dag package's default, proportional to the limit
)

// Authenticator puts request authentication in front of the endpoints.
// *sign.Verifier implements it. Wrap must only call next for an
// authenticated request, and must put the origin's server name in the
// request context with sign.ContextWithOrigin.
type Authenticator interface {
	Wrap(next http.Handler) http.Handler
}

// Config configures the handler. Only ServerName, Store and Authenticator
// are required; every other zero value selects the documented default.
type Config struct {
	// ServerName is our server name: the "origin" of backfill transactions.
	ServerName string

	// Store holds the rooms' events. See EventStore, and storetest for a
	// conformance suite to run against your own implementation.
	Store EventStore

	// Authenticator verifies the X-Matrix signature of each request before
	// any other work is done (typically a *sign.Verifier). It is required:
	// there is no unauthenticated mode, because the endpoints hand out
	// private room history.
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

	// MaxRequestBodyBytes caps a get_missing_events body; a larger one is
	// answered 413 M_TOO_LARGE. Default 64 KiB.
	MaxRequestBodyBytes int64

	// MaxWalkVisits bounds the events one walk may fetch from the store,
	// whatever the DAG looks like (a room full of rejected events, a huge
	// fan-out of prev_events). 0 selects the dag package's default, which
	// grows with the request's limit. A store that walks itself
	// (BackfillWalker, MissingEventsWalker) gets the budget with the request.
	MaxWalkVisits int

	// MaxConcurrentPerOrigin is how many requests of one origin are served
	// at once; MaxQueuedPerOrigin how many more may wait for a turn. Beyond
	// that an origin gets 429 M_LIMIT_EXCEEDED with retry_after_ms, so one
	// noisy server cannot starve the others. Defaults 3 and 50 (Synapse's
	// federation limiter).
	MaxConcurrentPerOrigin int
	MaxQueuedPerOrigin     int

	// MaxInFlight caps the requests the handler serves at once, from all
	// origins, counted before authentication; beyond it: 429. Default 256.
	MaxInFlight int

	// RequestTimeout is the deadline of one request, including key fetching
	// and every store call (the context reaches the store). Default 30s.
	RequestTimeout time.Duration

	// MaxHeaderBytes caps the request line's URI plus all header names and
	// values; larger requests get 431 M_TOO_LARGE. Default 16 KiB. (Also set
	// http.Server.MaxHeaderBytes: it rejects before the handler runs.)
	MaxHeaderBytes int

	// Logger receives one line per failed request (store errors, recovered
	// panics, misbehaving stores). Default slog.Default().
	Logger *slog.Logger

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
	setDefault(&cfg.MaxBackfillLimit, DefaultMaxBackfillLimit)
	setDefault(&cfg.MaxBackfillSeeds, DefaultMaxBackfillSeeds)
	setDefault(&cfg.MaxMissingEvents, DefaultMaxMissingEvents)
	setDefault(&cfg.MaxMissingEventIDs, DefaultMaxMissingEventIDs)
	setDefault(&cfg.MaxRequestBodyBytes, DefaultMaxRequestBodyBytes)
	setDefault(&cfg.MaxConcurrentPerOrigin, DefaultMaxConcurrentPerOrigin)
	setDefault(&cfg.MaxQueuedPerOrigin, DefaultMaxQueuedPerOrigin)
	setDefault(&cfg.MaxInFlight, DefaultMaxInFlight)
	setDefault(&cfg.MaxHeaderBytes, DefaultMaxHeaderBytes)
	setDefault(&cfg.RequestTimeout, DefaultRequestTimeout)
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

// setDefault replaces a zero or negative limit with its default.
func setDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// New returns an http.Handler serving
//
//	GET  /_matrix/federation/v1/backfill/{roomId}
//	POST /_matrix/federation/v1/get_missing_events/{roomId}
//
// Mount it at the server's root, or behind http.StripPrefix(Prefix, …).
// Any other path gets 404 M_UNRECOGNIZED, a wrong method 405 M_UNRECOGNIZED.
func New(cfg Config) (http.Handler, error) {
	// SkipClean: gorilla/mux would answer "/a/../b" with a redirect, which
	// no federation client follows; an unclean path is simply not ours (404).
	router := mux.NewRouter().UseEncodedPath().SkipClean(true)
	if err := Register(router, cfg); err != nil {
		return nil, err
	}
	router.NotFoundHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		matrixerr.Write(w, http.StatusNotFound, matrixerr.Unrecognized, "unrecognized request")
	})
	router.MethodNotAllowedHandler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		matrixerr.Write(w, http.StatusMethodNotAllowed, matrixerr.Unrecognized, "method not allowed: "+r.Method)
	})
	return router, nil
}

// Register adds the two endpoints to an existing router, for a homeserver
// that already routes its federation API with gorilla/mux:
//
//	err := fedhistory.Register(router, cfg)
//
// Both the full paths and the paths without Prefix are registered. Call
// router.UseEncodedPath() on your router if room IDs may hold "%2F".
func Register(router *mux.Router, cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	endpoints := []struct {
		method, name string
		handler      http.Handler
	}{
		{http.MethodGet, "backfill", &backfillHandler{cfg: cfg, txnPrefix: transactionPrefix(cfg.ServerName)}},
		{http.MethodPost, "get_missing_events", &missingEventsHandler{cfg: cfg}},
	}
	// Every request passes, in order: panic recovery, the header cap and
	// deadline, the handler-wide in-flight cap, authentication, the
	// per-origin limiter, and then the endpoint itself.
	perOrigin := newOriginLimiter(cfg.MaxConcurrentPerOrigin, cfg.MaxQueuedPerOrigin)
	inFlight := newInFlightLimit(cfg.MaxInFlight)
	guard := func(endpoint http.Handler) http.Handler {
		h := perOrigin.wrap(endpoint)
		h = cfg.Authenticator.Wrap(h)
		h = inFlight(h)
		h = requestGuard(cfg.RequestTimeout, cfg.MaxHeaderBytes, h)
		return recoverPanics(cfg.Logger, h)
	}
	for _, e := range endpoints {
		h := guard(e.handler)
		for _, prefix := range []string{Prefix, ""} {
			// The trailing-slash form is what Sytest sends; Synapse accepts it.
			for _, suffix := range []string{"", "/"} {
				router.Handle(prefix+"/"+e.name+"/{roomId}"+suffix, h).Methods(e.method)
			}
		}
	}
	return nil
}

// roomIDFromRequest returns the {roomId} path variable, percent-decoded.
// gomatrixserverlib's client sends "!" and ":" raw, others encode them; both
// decode to the same ID.
func roomIDFromRequest(r *http.Request) (string, error) {
	raw := mux.Vars(r)["roomId"]
	roomID, err := url.PathUnescape(raw)
	if err != nil {
		return "", fmt.Errorf("room ID is not percent-encoded correctly: %w", err)
	}
	if !strings.HasPrefix(roomID, "!") || len(roomID) > 255 {
		return "", errors.New("not a room ID")
	}
	return roomID, nil
}

// requestRoom is where both endpoints start: the origin the Authenticator
// vouched for and the {roomId} of the path. When it returns false it has
// answered the request.
func requestRoom(w http.ResponseWriter, r *http.Request) (origin, roomID string, ok bool) {
	if origin, ok = requestOrigin(w, r); !ok {
		return "", "", false
	}
	roomID, err := roomIDFromRequest(r)
	if err != nil {
		matrixerr.Write(w, http.StatusBadRequest, matrixerr.InvalidParam, err.Error())
		return "", "", false
	}
	return origin, roomID, true
}

// authorise applies the room-level rules (authorizeRoom: server ACL, a
// joined user of origin now) and returns the room's version, which the
// filter's redaction algorithm needs.
func authorise(ctx context.Context, store EventStore, roomID, origin string) (roomVersion string, err error) {
	if err := authorizeRoom(ctx, store, roomID, origin); err != nil {
		return "", err
	}
	return store.RoomVersion(ctx, roomID)
}

// requestOrigin returns the server the Authenticator vouched for.
func requestOrigin(w http.ResponseWriter, r *http.Request) (string, bool) {
	origin, ok := sign.OriginFromContext(r.Context())
	if !ok {
		// Only reachable with a custom Authenticator that forgot
		// sign.ContextWithOrigin: fail closed.
		matrixerr.Write(w, http.StatusUnauthorized, matrixerr.Unauthorized, "request is not authenticated")
		return "", false
	}
	return origin, true
}

// writeStoreError answers a failure of authorisation or of the store. The
// body never carries internal detail; the log line does.
func writeStoreError(w http.ResponseWriter, r *http.Request, logger *slog.Logger, endpoint string, err error) {
	if errors.Is(err, ErrForbidden) {
		matrixerr.Write(w, http.StatusForbidden, matrixerr.Forbidden, forbiddenReason(err))
		return
	}
	if r.Context().Err() != nil {
		// The client went away or the deadline passed; nobody reads a body.
		logger.LogAttrs(r.Context(), slog.LevelInfo, "fedhistory: request abandoned",
			slog.String("endpoint", endpoint), slog.String("error", err.Error()))
		matrixerr.Write(w, http.StatusServiceUnavailable, matrixerr.Unknown, "request cancelled")
		return
	}
	logger.LogAttrs(r.Context(), slog.LevelError, "fedhistory: store error",
		slog.String("endpoint", endpoint), slog.String("path", r.URL.Path), slog.String("error", err.Error()))
	matrixerr.Write(w, http.StatusInternalServerError, matrixerr.Unknown, "internal server error")
}

// recoverPanics turns a panic below it (in a store, say) into a 500 and a
// logged stack, so that one bad request cannot take the process down.
func recoverPanics(logger *slog.Logger, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				logger.LogAttrs(r.Context(), slog.LevelError, "fedhistory: panic serving request",
					slog.String("path", r.URL.Path), slog.Any("panic", p), slog.String("stack", stack()))
				matrixerr.Write(w, http.StatusInternalServerError, matrixerr.Unknown, "internal server error")
			}
		}()
		next.ServeHTTP(w, r)
	})
}
