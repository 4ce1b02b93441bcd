package sqlstore_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/fedhistory/fedhistory/sign"
	"github.com/fedhistory/fedhistory/sqlstore"
)

// Serve history from SQL: the schema is created or upgraded once, by a
// role that may change it (Migrate, or "fedhistory migrate --db …"); a
// serving process opens the store without migrating, so that it can run on
// a read-only role or a replica. A PostgreSQL DSN
// ("postgres://user@host/db") works the same way.
func Example() {
	dir, err := os.MkdirTemp("", "fedhistory-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	dsn := "sqlite:" + filepath.Join(dir, "history.db")
	ctx := context.Background()

	// Once, as the schema's owner, then the homeserver's writes.
	if err := sqlstore.Migrate(ctx, dsn); err != nil {
		log.Fatal(err)
	}
	writer, err := sqlstore.Open(ctx, dsn, sqlstore.Options{})
	if err != nil {
		log.Fatal(err)
	}
	room, err := roomgen.Generate(roomgen.Options{Events: 20, ServerName: "hs1.example", OtherServers: []string{"hs2.example"}})
	if err != nil {
		log.Fatal(err)
	}
	for _, ev := range room.Events {
		if _, err := writer.Add(ctx, room.Version, ev.JSON, fedhistory.AddOptions{}); err != nil {
			log.Fatal(err)
		}
	}
	writer.Close()

	// The serving process: a pool of at most 16 connections.
	store, err := sqlstore.Open(ctx, dsn, sqlstore.Options{MaxOpenConns: 16})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()
	verifier, err := sign.NewVerifier(sign.VerifierConfig{ServerNames: []string{"hs1.example"}})
	if err != nil {
		log.Fatal(err)
	}
	handler, err := fedhistory.New(fedhistory.Config{ServerName: "hs1.example", Store: store, Authenticator: verifier})
	if err != nil {
		log.Fatal(err)
	}
	// sqlstore has every capability, so every endpoint is served.
	for _, e := range handler.Endpoints() {
		fmt.Println(e.Method, e.Path)
	}
	// Output:
	// GET /_matrix/federation/v1/backfill/{roomId}
	// GET /_matrix/federation/v1/event/{eventId}
	// GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}
	// POST /_matrix/federation/v1/get_missing_events/{roomId}
	// GET /_matrix/federation/v1/state/{roomId}
	// GET /_matrix/federation/v1/state_ids/{roomId}
	// GET /_matrix/federation/v1/timestamp_to_event/{roomId}
}

// Import a room of any size in one transaction without holding it in
// memory: AddSeq takes the events a chunk at a time from a sequence, here
// PDUs read one per line from a file (an export of your own). A bad line
// ends the sequence with an error, and nothing is stored.
func ExampleStore_AddSeq() {
	dir, err := os.MkdirTemp("", "fedhistory-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	store, err := sqlstore.Open(ctx, "sqlite:"+filepath.Join(dir, "history.db"), sqlstore.Options{Migrate: true})
	if err != nil {
		log.Fatal(err)
	}
	defer store.Close()

	// An export: one PDU per line.
	room, err := roomgen.Generate(roomgen.Options{Version: "11", Events: 500})
	if err != nil {
		log.Fatal(err)
	}
	export := filepath.Join(dir, "export.jsonl")
	var lines []byte
	for _, ev := range room.Events {
		lines = append(append(lines, ev.JSON...), '\n')
	}
	if err := os.WriteFile(export, lines, 0o600); err != nil {
		log.Fatal(err)
	}

	f, err := os.Open(export)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	events := func(yield func(sqlstore.Pending, error) bool) {
		scanner := bufio.NewScanner(f)
		scanner.Buffer(nil, 1<<20)
		for scanner.Scan() {
			// AddSeq holds the PDU until it returns: a fresh copy per line,
			// since the scanner reuses its buffer.
			pdu := bytes.Clone(scanner.Bytes())
			if !yield(sqlstore.Pending{RoomVersion: room.Version, PDU: pdu}, nil) {
				return
			}
		}
		if err := scanner.Err(); err != nil {
			yield(sqlstore.Pending{}, fmt.Errorf("reading the export: %w", err))
		}
	}
	if err := store.AddSeq(ctx, events); err != nil {
		log.Fatal(err)
	}
	version, err := store.RoomVersion(ctx, room.ID)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("room version", version)
	// Output:
	// room version 11
}
