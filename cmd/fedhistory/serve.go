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

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/roomdump"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/fedhistory/fedhistory/sign"
	"github.com/fedhistory/fedhistory/sqlstore"
)

func runServe(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("serve")
	listen := fs.String("listen", "127.0.0.1:8008", "listen on `HOST:PORT` (port 0 picks a free port)")
	serverName := fs.String("server-name", "", "our server `NAME` (default: the listen address, with the port actually bound)")
	keyFile := fs.String("signing-key", "", "our signing key `FILE` (Synapse format), created if it does not exist (default: an ephemeral key)")
	tlsCert := fs.String("tls-cert", "", "serve HTTPS with this certificate `FILE` (with --tls-key)")
	tlsKey := fs.String("tls-key", "", "the private key `FILE` of --tls-cert")
	var rooms, trust, resolve stringList
	fs.Var(&rooms, "room", "a room dump `FILE` to load (repeatable; default: generate the demo room)")
	fs.Var(&trust, "trust", "`SERVER=KEYID:BASE64KEY`: pin a public key of SERVER, whose keys are then never fetched (repeatable)")
	fs.Var(&resolve, "resolve", "`SERVER=HOST:PORT`: fetch SERVER's keys from http://HOST:PORT (repeatable)")
	dsn := fs.String("db", "", "serve the rooms of this SQL database, `sqlite:FILE|postgres://…` (fill it with fedhistory import), instead of an in-memory store")
	maxBackfill := fs.Int("max-backfill", 0, "cap backfill's limit at `N` (default: fedhistory's, 100)")
	maxMissing := fs.Int("max-missing", 0, "cap get_missing_events' limit at `N` (default: fedhistory's, 20)")
	debugAddr := fs.String("debug-addr", "", "also serve net/http/pprof and expvar (goroutines, memstats) on `HOST:PORT`; keep it on loopback (default: off)")
	if err := parseFlags(fs, args, out.stdout, "[--listen HOST:PORT] [--server-name NAME] [--signing-key FILE] [--room FILE]… [OPTIONS]", `
Serves GET /_matrix/federation/v1/backfill, POST /_matrix/federation/v1/get_missing_events
(behind X-Matrix authentication) and our key document, /_matrix/key/v2/server.
Once ready, prints "fedhistory: serving NAME on http://HOST:PORT" on stdout; logs
one line per request on stderr. SIGINT or SIGTERM shuts it down cleanly.

The rooms come from --room dumps (held in memory), from a --db database, or,
with neither, from the generated demo room.`); err != nil {
		return err
	}
	if (*tlsCert == "") != (*tlsKey == "") {
		return usageErrorf("--tls-cert and --tls-key go together")
	}
	if *dsn != "" && len(rooms) > 0 {
		return usageErrorf("--room loads the in-memory store; load a --db with fedhistory import")
	}
	if *maxBackfill < 0 || *maxMissing < 0 {
		return usageErrorf("--max-backfill and --max-missing may not be negative")
	}
	staticKeys, err := parseTrust(trust)
	if err != nil {
		return err
	}
	resolveURLs, err := parseResolve(resolve)
	if err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(out.stderr, nil))

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
		db, err := sqlstore.Open(ctx, *dsn)
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

	handler, err := newFederationHandler(federationServerConfig{
		ServerName:  name,
		Key:         key,
		Store:       store,
		StaticKeys:  staticKeys,
		Resolve:     resolveURLs,
		MaxBackfill: *maxBackfill,
		MaxMissing:  *maxMissing,
		Logger:      logger,
	})
	if err != nil {
		return err
	}
	server := newHTTPServer(handler, logger)
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

	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := server.Shutdown(shutdownCtx); err != nil {
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
	logger.Info("generated the demo room", "room_id", room.Room.ID, "room_version", room.Room.Version,
		"events", len(room.Room.Events), "latest_event", room.Latest.ID, "member_servers", demoJoinerServer+","+demoDeniedServer)
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
	rooms := make(map[string]bool)
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
		rooms[rec.RoomID] = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("loading room dump %s: %w", path, err)
	}
	for roomID := range rooms {
		logger.Info("loaded room", "file", path, "room_id", roomID)
	}
	logger.Info("loaded room dump", "file", path, "events", events, "rooms", len(rooms), "erased_users", erased)
	return nil
}
