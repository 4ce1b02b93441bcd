package main

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/sqlstore"
)

// TestMigrate: serving refuses a database without schema, saying what to
// run; migrate creates the schema, and running it again changes nothing.
func TestMigrate(t *testing.T) {
	dir := t.TempDir()
	dsn := "sqlite:" + filepath.Join(dir, "history.db")
	ctx := context.Background()

	_, err := sqlstore.Open(ctx, dsn, sqlstore.Options{})
	require.ErrorIs(t, err, sqlstore.ErrSchemaTooOld)
	require.ErrorContains(t, err, "fedhistory migrate --db")

	for range 2 {
		res := mustRun(t, dir, "migrate", "--db", dsn)
		require.Contains(t, res.stdout, "the schema is up to date")
	}
	store, err := sqlstore.Open(ctx, dsn, sqlstore.Options{})
	require.NoError(t, err)
	require.NoError(t, store.Close())

	bad := runCommand(t, dir, "migrate")
	require.NotEqual(t, 0, bad.code)
	require.Contains(t, bad.stderr, "--db")
}
