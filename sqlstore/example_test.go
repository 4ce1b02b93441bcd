package sqlstore_test

import (
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
