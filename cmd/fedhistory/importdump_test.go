package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestImportThenServeFromSQLite(t *testing.T) {
	dir := t.TempDir()
	forked := generate(t, dir, "forked.jsonl", "--events", "50", "--fork-every", "6", "--seed", "11")
	linear := generate(t, dir, "linear.jsonl", "--events", "20", "--seed", "12")
	fresh := generate(t, dir, "fresh.jsonl", "--events", "10", "--seed", "13")
	dsn := "sqlite:" + filepath.Join(dir, "history.db")

	res := mustRun(t, dir, "import", "--db", dsn, "--room", forked.Path, "--room", linear.Path)
	require.Contains(t, res.stderr, "imported 70 events of 2 rooms")
	// Not on a terminal: no live progress, one summary line.
	require.Regexp(t, `^fedhistory import: imported 70 events of 2 rooms and 0 erased users in \S+ \(\d+ events/s\)\n$`, res.stderr)

	t.Run("importing the same events again imports nothing", func(t *testing.T) {
		again := runCommand(t, dir, "import", "--db", dsn, "--room", linear.Path)
		require.Equal(t, exitFailure, again.code)
		requireOneLine(t, again.stderr)
		require.Contains(t, again.stderr, "nothing was imported")
	})

	t.Run("a missing dump creates no database", func(t *testing.T) {
		res := runCommand(t, dir, "import", "--db", "sqlite:"+filepath.Join(dir, "never.db"), "--room", linear.Path, "--room", "missing.jsonl")
		require.Equal(t, exitFailure, res.code)
		requireOneLine(t, res.stderr)
		require.Contains(t, res.stderr, "missing.jsonl")
		require.NoFileExists(t, filepath.Join(dir, "never.db"))
	})

	t.Run("a dump with a bad line imports nothing", func(t *testing.T) {
		good, err := os.ReadFile(fresh.Path)
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "bad.jsonl"), append(good, "not json\n"...), 0o644))
		bad := runCommand(t, dir, "import", "--db", dsn, "--room", fresh.Path, "--room", "bad.jsonl")
		require.Equal(t, exitFailure, bad.code)
		requireOneLine(t, bad.stderr)
		require.Contains(t, bad.stderr, "bad.jsonl: roomdump: line 11:")

		// The dump is written as it is read, but a bad line still wins over
		// the error the writes meet first (these events are stored).
		bad = runCommand(t, dir, "import", "--db", dsn, "--room", linear.Path, "--room", "bad.jsonl")
		require.Equal(t, exitFailure, bad.code)
		requireOneLine(t, bad.stderr)
		require.Contains(t, bad.stderr, "bad.jsonl: roomdump: line 11:")
	})

	trust := strings.TrimSpace(mustRun(t, dir, "keygen", "--out", "hs2.key").stdout)
	srv := startServer(t, dir, "--db", dsn, "--trust", asker+"="+trust)
	ask := func(room *dumpRoom, limit int) result {
		return runCommand(t, dir, "backfill", "--server", srv.URL, "--origin", asker, "--signing-key", "hs2.key",
			"--room", room.RoomID, "--v", room.last().ID, "--limit", strconv.Itoa(limit), "--raw")
	}
	for _, room := range []*dumpRoom{forked, linear} {
		res := ask(room, 12)
		require.Equal(t, exitOK, res.code, res.stderr)
		var answer backfillAnswer
		require.NoError(t, json.Unmarshal([]byte(res.stdout), &answer))
		require.Equal(t, room.expectedBackfill(room.last().ID, 12), room.pduIDs(t, answer.PDUs))
	}
	res = ask(fresh, 1)
	require.Equal(t, exitFailure, res.code)
	require.Contains(t, res.stderr, "HTTP 403: M_FORBIDDEN", "the failed import left no room behind")
}

func TestServeRefusesRoomsWithADatabase(t *testing.T) {
	res := runCommand(t, t.TempDir(), "serve", "--db", "sqlite:x.db", "--room", "r.jsonl")
	require.Equal(t, exitUsage, res.code)
	requireOneLine(t, res.stderr)
	require.Contains(t, res.stderr, "fedhistory import")
}
