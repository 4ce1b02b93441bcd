package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/roomdump"
	"github.com/fedhistory/fedhistory/memstore"
	fedotel "github.com/fedhistory/fedhistory/otel"
	"github.com/fedhistory/fedhistory/sign"
	"github.com/fedhistory/fedhistory/sqlstore"
)

func runServe(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("serve")
	listen := fs.String("listen", "127.0.0.1:8008", "`HOST:PORT` the address to listen on; port 0 picks a free port")
	serverName := fs.String("server-name", "", "`NAME` our server name (default: the --listen address, with the port actually bound)")
	keyFile := fs.String("signing-key", "", "`FILE` our signing key, Synapse format, created if it does not exist (default: an ephemeral key)")
	tlsCert := fs.String("tls-cert", "", "`FILE` a PEM certificate to serve HTTPS with (with --tls-key)")
	tlsKey := fs.String("tls-key", "", "`FILE` the PEM private key of --tls-cert")
	var rooms, trust, resolve stringList
	fs.Var(&rooms, "room", "`FILE` a room dump to load into memory (repeatable; default: generate the demo room)")
	fs.Var(&trust, "trust", "`SERVER=KEYID:BASE64KEY` pin a public key of a server, whose keys are then never fetched (repeatable)")
	fs.Var(&resolve, "resolve", "`SERVER=HOST:PORT` fetch that server's keys from that address, over plain HTTP unless given as an https:// URL (repeatable)")
	dsn := fs.String("db", "", "`DSN` a SQL database, sqlite:FILE or postgres://…, to serve the rooms of instead of loading them into memory (fill it with fedhistory import)")
	dbMaxConns := fs.Int("db-max-conns", 0, "`N` the most connections to --db (default: 2×GOMAXPROCS+8); keep the sum over every instance below PostgreSQL's max_connections")
	maxBackfill := fs.Int("max-backfill", 0, "`N` the cap on backfill's limit (default: fedhistory's, 100)")
	maxMissing := fs.Int("max-missing", 0, "`N` the cap on get_missing_events' limit (default: fedhistory's, 20)")
	drainTimeout := fs.Duration("drain-timeout", defaultDrainTimeout, "`DURATION` how long requests in flight may run on after SIGINT or SIGTERM; those still running then are cancelled and answered 503")
	maxConcurrent := fs.Int("max-concurrent-per-origin", 0, "`N` how many requests of one origin are served at once (default: fedhistory's, 3)")
	maxQueued := fs.Int("max-queued-per-origin", 0, "`N` how many more requests of one origin may wait for a turn; beyond them the origin gets 429 (default: fedhistory's, 50)")
	debugAddr := fs.String("debug-addr", "", "`HOST:PORT` a second address, serving net/http/pprof and expvar (goroutines, requests_in_flight, memstats); keep it on loopback (default: off)")
	metricsAddr := fs.String("metrics-listen", "", "`HOST:PORT` an address serving Prometheus metrics at /metrics, for a Prometheus to scrape; not for other servers (default: off)")
	otlpEndpoint := fs.String("otlp-endpoint", "", "`URL` an OpenTelemetry collector to export traces to over OTLP/HTTP, such as http://127.0.0.1:4318 (traces go to /v1/traces under an address without a path); OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT turn the export on too, and the other OTEL_EXPORTER_OTLP_* variables apply (default: off)")
	if err := parseFlags(fs, args, out.stdout, "[--listen HOST:PORT] [--server-name NAME] [--signing-key FILE] [--room FILE]… [OPTIONS]", `
Serves, under /_matrix/federation/v1 and behind X-Matrix authentication, GET
backfill and POST get_missing_events, and, as far as the store allows (both
stores here allow all of them), GET state_ids, state, event_auth, event and
timestamp_to_event; and our key document, /_matrix/key/v2/server.
Logs each room's ID, create event and newest event on stderr, and the endpoints
it serves on one line; once ready, prints "fedhistory: serving NAME on
http://HOST:PORT" on stdout, and then logs one line per request on stderr.

SIGINT or SIGTERM shuts it down: it stops accepting, lets the requests in
flight finish for up to --drain-timeout, then cancels those still running,
which are answered 503 M_UNKNOWN, and exits 0 once they are answered. A
second signal stops it at once, with status 1, as does a request still
running 5 s after it was cancelled.

The rooms come from --room dumps (held in memory), from a --db database, or,
with neither, from the generated demo room.

With --metrics-listen, prints "fedhistory: metrics on http://HOST:PORT/metrics"
once serving. With --otlp-endpoint, each request is a trace span, continuing the
trace of a traceparent header, and each request's log line carries its trace_id.`); err != nil {
		return err
	}
	// Everything the command line alone can tell is checked before anything
	// is done: no key is generated for a server that cannot start.
	if err := checkListenAddr("--listen", *listen); err != nil {
		return err
	}
	if host, _, _ := net.SplitHostPort(*listen); host == "" && *serverName == "" {
		return usageErrorf("--listen %q has no host: give --server-name", *listen)
	}
	if *debugAddr != "" {
		if err := checkListenAddr("--debug-addr", *debugAddr); err != nil {
			return err
		}
	}
	if *metricsAddr != "" {
		if err := checkListenAddr("--metrics-listen", *metricsAddr); err != nil {
			return err
		}
	}
	if *otlpEndpoint != "" {
		endpoint, err := checkOTLPEndpoint(*otlpEndpoint)
		if err != nil {
			return err
		}
		*otlpEndpoint = endpoint
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return usageErrorf("--tls-cert and --tls-key go together")
	}
	if *dsn != "" && len(rooms) > 0 {
		return usageErrorf("--room loads the in-memory store; load a --db with fedhistory import")
	}
	if *drainTimeout <= 0 {
		return usageErrorf("--drain-timeout must be positive")
	}
	if *maxBackfill < 0 || *maxMissing < 0 {
		return usageErrorf("--max-backfill and --max-missing may not be negative")
	}
	if *maxConcurrent < 0 || *maxQueued < 0 {
		return usageErrorf("--max-concurrent-per-origin and --max-queued-per-origin may not be negative")
	}
	staticKeys, err := parseTrust(trust)
	if err != nil {
		return err
	}
	resolveURLs, err := parseResolve(resolve)
	if err != nil {
		return err
	}
	// One logger for everything serve runs: the request log, the handler
	// and the verifier (see newFederationHandler).
	logHandler := slog.Handler(slog.NewTextHandler(out.stderr, nil))
	traces, err := startTracing(ctx, *otlpEndpoint)
	if err != nil {
		return err
	}
	var trace *fedhistory.Trace
	var verifierTrace *sign.VerifierTrace
	if traces != nil {
		// Failures logged during a traced request name its trace.
		logHandler = fedotel.LogHandler(logHandler)
		defer traces.shutdown(slog.New(logHandler))
		trace, verifierTrace = traces.tracer.Trace(), traces.tracer.SignTrace()
	}
	logger := slog.New(logHandler)
	if traces != nil {
		logger.Info("exporting traces over OTLP/HTTP", "endpoint", traces.target)
	}
	var metricsRegistry *prometheus.Registry
	if *metricsAddr != "" {
		reg, metrics, err := newMetrics()
		if err != nil {
			return err
		}
		metricsRegistry = reg
		trace = fedhistory.JoinTraces(metrics.Trace(), trace)
		verifierTrace = joinVerifierTraces(metrics.SignTrace(), verifierTrace)
	}

	key, err := serverKey(*keyFile, out)
	if err != nil {
		return err
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", *listen, err)
	}
	defer listener.Close() // a no-op once Shutdown closed it
	name, err := defaultServerName(*serverName, *listen, listener.Addr())
	if err != nil {
		return err
	}

	var store fedhistory.EventStore
	if *dsn != "" {
		// Serving only reads: Open checks the schema version and says to
		// run fedhistory migrate when it is behind.
		db, err := sqlstore.Open(ctx, *dsn, sqlstore.Options{MaxOpenConns: *dbMaxConns})
		if err != nil {
			return fmt.Errorf("opening --db: %w", err)
		}
		defer db.Close()
		store = db
	} else {
		mem, err := newMemoryStore(rooms, name, key, out, logger)
		if err != nil {
			return err
		}
		store = mem
	}
	if store, err = withTestStoreFaults(store, out.stderr); err != nil {
		return err
	}

	handler, endpoints, err := newFederationHandler(federationServerConfig{
		ServerName:  name,
		Key:         key,
		Store:       store,
		StaticKeys:  staticKeys,
		Resolve:     resolveURLs,
		MaxBackfill: *maxBackfill,
		MaxMissing:  *maxMissing,

		MaxConcurrentPerOrigin: *maxConcurrent,
		MaxQueuedPerOrigin:     *maxQueued,

		Logger:        logger,
		Trace:         trace,
		LogTraceIDs:   traces != nil,
		VerifierTrace: verifierTrace,
	})
	if err != nil {
		return err
	}
	// Which endpoints the store's capabilities allow, for whoever wonders
	// why a request gets 404 M_UNRECOGNIZED.
	logger.Info("serving endpoints", "endpoints", endpointList(endpoints))
	server := newHTTPServer(handler, logger)
	requests := newDrainable(server)
	scheme := "http"
	if *tlsCert != "" {
		// Load the certificate now, so that a bad one fails before we
		// claim to be serving.
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			return fmt.Errorf("loading the TLS certificate: %w", err)
		}
		server.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		scheme = "https"
	}
	var debug *loopbackServer
	if *debugAddr != "" {
		if debug, err = startDebugServer(*debugAddr, logger); err != nil {
			return err
		}
		defer debug.Close()
	}
	var metricsServer *loopbackServer
	if metricsRegistry != nil {
		if metricsServer, err = startMetricsServer(*metricsAddr, metricsRegistry, logger); err != nil {
			return err
		}
		defer metricsServer.Close()
	}
	served := make(chan error, 1)
	go func() {
		if scheme == "https" {
			served <- server.ServeTLS(listener, "", "")
		} else {
			served <- server.Serve(listener)
		}
	}()
	fmt.Fprintf(out.stdout, "fedhistory: serving %s on %s://%s\n", name, scheme, listener.Addr())
	if debug != nil {
		fmt.Fprintf(out.stdout, "fedhistory: debug server on %s\n", debug.URL)
	}
	if metricsServer != nil {
		fmt.Fprintf(out.stdout, "fedhistory: metrics on %s%s\n", metricsServer.URL, metricsPath)
	}

	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	if err := requests.drain(*drainTimeout, forced(ctx), logger); err != nil {
		return fmt.Errorf("shutting down: %w", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serving: %w", err)
	}
	return nil
}

// newMemoryStore loads the room dumps, or the demo room when there are
// none, into a new in-memory store.
func newMemoryStore(rooms []string, serverName string, key *sign.SigningKey, out streams, logger *slog.Logger) (*memstore.Store, error) {
	store := memstore.New()
	for _, path := range rooms {
		if err := loadDump(store, path, logger); err != nil {
			return nil, err
		}
	}
	if len(rooms) > 0 {
		return store, nil
	}
	progress := newProgress(out.stderr, "generating the demo room", progressDelay)
	room, err := buildDemoRoom(demoRoomOptions{ServerName: serverName, Key: key, Progress: progress.update})
	progress.done()
	if err != nil {
		return nil, err
	}
	if err := addRoom(store, room.Room); err != nil {
		return nil, err
	}
	landmarks := generatedLandmarks(room.Room)
	logger.Info("generated the demo room", append(landmarks.logAttrs(),
		slog.String("room_version", room.Room.Version), slog.String("member_servers", demoJoinerServer+","+demoDeniedServer))...)
	return store, nil
}

// serverKey reads or creates the key at path, or makes an ephemeral key
// when path is empty.
func serverKey(path string, out streams) (*sign.SigningKey, error) {
	if path != "" {
		return loadOrCreateKey(path, out.stderr)
	}
	key, err := sign.GenerateKey(nil)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(out.stderr, "fedhistory: no --signing-key: using the ephemeral key %s (%s), forgotten on exit\n", key.ID, encodePublicKey(key))
	return key, nil
}

// checkListenAddr checks that addr, the value of flag, is a HOST:PORT to
// listen on, with a numeric port. An empty host listens on every address.
func checkListenAddr(flag, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return usageErrorf("%s %q: want HOST:PORT: %v", flag, addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return usageErrorf("%s %q: the port must be a number from 0 to 65535", flag, addr)
	}
	return nil
}

// defaultServerName returns the server name: flagValue when given, else the
// listen address as given, with the port actually bound when it asked for
// port 0 (a server named "host:0" could never be addressed).
func defaultServerName(flagValue, listen string, bound net.Addr) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", usageErrorf("--listen %q: %v", listen, err)
	}
	if port == "0" {
		if tcp, ok := bound.(*net.TCPAddr); ok {
			port = strconv.Itoa(tcp.Port)
		}
	}
	if host == "" {
		return "", usageErrorf("--listen %q has no host: give --server-name", listen)
	}
	return net.JoinHostPort(host, port), nil
}

// loadDump loads the room dump at path into store. roomdump validates every
// line before the first event is added, so a bad line fails the load with
// its line number and adds nothing.
func loadDump(store *memstore.Store, path string, logger *slog.Logger) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("loading room dump: %w", err)
	}
	defer f.Close()
	var events, erased int
	var rooms landmarkFinder
	err = roomdump.Load(f, func(rec roomdump.Record) error {
		if rec.ErasedUser != "" {
			store.EraseUser(rec.ErasedUser)
			erased++
			return nil
		}
		id, err := store.Add(rec.RoomVersion, rec.Event, rec.Options())
		if err != nil {
			return err
		}
		if id != rec.EventID {
			return fmt.Errorf("%w: %s, want %s", roomdump.ErrEventIDMismatch, id, rec.EventID)
		}
		events++
		rooms.add(rec.RoomID, rec.EventID, rec.Event, rec.Rejected, rec.Outlier)
		return nil
	})
	if err != nil {
		return fmt.Errorf("loading room dump %s: %w", path, err)
	}
	// Each room with the IDs a first backfill needs.
	for _, room := range rooms.rooms {
		logger.Info("loaded room", append([]any{slog.String("file", path)}, room.logAttrs()...)...)
	}
	logger.Info("loaded room dump", "file", path, "events", events, "rooms", len(rooms.rooms), "erased_users", erased)
	return nil
}
