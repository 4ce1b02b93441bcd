package main

import (
	"context"
	"fmt"

	"github.com/fedhistory/fedhistory/sqlstore"
)

// runMigrate brings a database's schema up to date. serve never changes
// the schema (so that it can run with a read-only role or on a replica):
// this, or import, does.
func runMigrate(ctx context.Context, out streams, args []string) error {
	fs := newFlagSet("migrate")
	dsn := fs.String("db", "", "`DSN` the database, sqlite:FILE or postgres://…, to create or bring up to date (required)")
	if err := parseFlags(fs, args, out.stdout, "--db DSN", `
Creates fedhistory's tables in an empty database, or brings an older schema up
to date. Run it with a role that may change the schema, before serve --db
(which only reads, and refuses a database whose schema is behind). It is
idempotent, and safe while other processes migrate or serve the database.`); err != nil {
		return err
	}
	if err := requireFlags(fs, "db"); err != nil {
		return err
	}
	if err := sqlstore.Migrate(ctx, *dsn); err != nil {
		return fmt.Errorf("migrating --db: %w", err)
	}
	fmt.Fprintln(out.stdout, "fedhistory migrate: the schema is up to date")
	return nil
}
