package main

import (
	"context"
	"fmt"
	"os"

	"github.com/fedhistory/fedhistory/internal/roomdump"
	"github.com/fedhistory/fedhistory/sqlstore"
)

func runImport(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("import")
	dsn := fs.String("db", "", "`DSN` the database, sqlite:FILE or postgres://…, created or migrated as needed (required)")
	var rooms stringList
	fs.Var(&rooms, "room", "`FILE` a room dump to import (repeatable; at least one)")
	if err := parseFlags(fs, args, out.stdout, "--db DSN --room FILE [--room FILE…]", `
Imports room dumps into a SQL database for serve --db. Every line of every dump
is validated first; the events are then added in one transaction, so a bad line
or a failed add (an event already in the database, say) imports nothing.`); err != nil {
		return err
	}
	if err := requireFlags(fs, "db", "room"); err != nil {
		return err
	}

	var pending []sqlstore.Pending
	var erased []string
	roomIDs := make(map[string]bool)
	for _, path := range rooms {
		records, err := readDump(path)
		if err != nil {
			return err
		}
		for _, rec := range records {
			if rec.ErasedUser != "" {
				erased = append(erased, rec.ErasedUser)
				continue
			}
			roomIDs[rec.RoomID] = true
			pending = append(pending, sqlstore.Pending{
				RoomVersion: rec.RoomVersion,
				PDU:         rec.Event,
				Options:     sqlstore.AddOptions{Rejected: rec.Rejected, Outlier: rec.Outlier},
			})
		}
	}

	store, err := sqlstore.Open(ctx, *dsn)
	if err != nil {
		return fmt.Errorf("opening --db: %w", err)
	}
	defer store.Close()
	if err := store.AddBatch(ctx, pending); err != nil {
		return fmt.Errorf("importing (nothing was imported): %w", err)
	}
	for _, user := range erased {
		if err := store.EraseUser(ctx, user); err != nil {
			return fmt.Errorf("marking %s erased: %w", user, err)
		}
	}
	fmt.Fprintf(out.stderr, "fedhistory import: imported %d events of %d rooms and %d erased users\n", len(pending), len(roomIDs), len(erased))
	return store.Close()
}

// readDump reads and validates a whole room dump.
func readDump(path string) ([]roomdump.Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading room dump: %w", err)
	}
	defer f.Close()
	records, err := roomdump.Read(f)
	if err != nil {
		return nil, fmt.Errorf("reading room dump %s: %w", path, err)
	}
	return records, nil
}
