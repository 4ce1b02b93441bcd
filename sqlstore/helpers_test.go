package sqlstore

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// postgresEnv names the environment variable that holds the DSN of a
// PostgreSQL database for the tests; without it they run on SQLite only.
const postgresEnv = "FEDHISTORY_TEST_POSTGRES"

// dialects are the databases the tests run on.
var dialects = []string{"sqlite", "postgres"}

// openTestStore opens an empty store of the dialect, closed when the test
// ends. SQLite stores live in a temporary file; PostgreSQL stores in a
// schema of their own, created here and dropped after the test, so that
// parallel runs on one database never meet.
func openTestStore(t testing.TB, dialect string) *Store {
	t.Helper()
	dsn := testDSN(t, dialect)
	s, err := Open(context.Background(), dsn, Options{Migrate: true})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, s.Close()) })
	return s
}

// testDSN returns the DSN of a fresh, empty database of the dialect.
func testDSN(t testing.TB, dialect string) string {
	t.Helper()
	if dialect == "sqlite" {
		return "sqlite:" + filepath.Join(t.TempDir(), "fedhistory.db")
	}
	base := os.Getenv(postgresEnv)
	if base == "" {
		t.Skip(postgresEnv + " not set: skipping PostgreSQL tests")
	}
	return postgresSchema(t, base)
}

// postgresSchema creates a schema with a random name in the database of
// base, drops it when the test ends, and returns base with search_path set
// to it.
func postgresSchema(t testing.TB, base string) string {
	t.Helper()
	var random [8]byte
	_, err := rand.Read(random[:])
	require.NoError(t, err)
	schema := "fedhistory_test_" + hex.EncodeToString(random[:])

	admin, err := sql.Open("pgx", base)
	require.NoError(t, err)
	t.Cleanup(func() { admin.Close() })
	_, err = admin.Exec(`CREATE SCHEMA ` + schema)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := admin.Exec(`DROP SCHEMA ` + schema + ` CASCADE`)
		require.NoError(t, err)
	})

	u, err := url.Parse(base)
	require.NoError(t, err)
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// forEachDialect runs test once per dialect, as subtests.
func forEachDialect(t *testing.T, test func(t *testing.T, s *Store)) {
	for _, d := range dialects {
		t.Run(d, func(t *testing.T) {
			test(t, openTestStore(t, d))
		})
	}
}
