package main

import (
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDemoShowsRedactedHistoryAndRefusals(t *testing.T) {
	res := runCommand(t, t.TempDir(), "demo")
	require.Equal(t, exitOK, res.code, res.stderr)
	out := res.stdout

	require.Contains(t, out, "→ 200 OK, a transaction from hs1.example")
	require.Contains(t, out, "[redacted: history_visibility=joined and hs2.example had no joined user then]")
	require.Contains(t, out, "@bob:hs2.example → join", "the late join itself is visible to its server")
	require.Contains(t, out, "⤙ merges", "the DAG forks and merges")
	require.Contains(t, out, "→ HTTP 401: M_UNAUTHORIZED: missing X-Matrix Authorization header")
	require.Contains(t, out, "→ HTTP 403: M_FORBIDDEN: server is banned by the room's server ACL")

	// Every event line of the backfill is either served whole (a message
	// body in quotes, or a state summary) or marked redacted; none both.
	eventLine := regexp.MustCompile(`^\s+\d+\s+\$\S{8}\s`)
	var whole, redacted int
	for _, line := range strings.Split(out, "\n") {
		if !eventLine.MatchString(line) {
			continue
		}
		if strings.Contains(line, "[redacted:") {
			redacted++
			require.NotContains(t, line, `"`, "a redacted message keeps no body: %s", line)
		} else {
			whole++
		}
	}
	require.Positive(t, redacted)
	require.Positive(t, whole)
	require.Regexp(t, `Summary: backfill returned 40 events \(\d+ whole, \d+ redacted\)`, out)
}

func TestDemoShowsStateIDsAndAJumpToDate(t *testing.T) {
	res := runCommand(t, t.TempDir(), "demo")
	require.Equal(t, exitOK, res.code, res.stderr)
	out := res.stdout

	// state_ids at the event the backfill started from: counts, and one ID
	// of each list, named by type.
	state := regexp.MustCompile(`(?m)^State at (\$\S{8}) \(depth \d+\) as hs2\.example:\n` +
		`  GET /_matrix/federation/v1/state_ids/\S+\?event_id=\S+\n` +
		`  → 200 OK, (\d+) state event IDs and (\d+) auth chain IDs; the first of each, by ID:\n` +
		`    state       \$\S{8}  m\.room\.\S+.*\n` +
		`    auth chain  \$\S{8}  m\.room\.\S+.*\n`).FindStringSubmatch(out)
	require.NotNil(t, state, out)
	require.Contains(t, out, "Backfill as hs2.example from "+state[1], "the state is the backfill's starting point's")
	// The demo room's state: create, power levels, join rules, history
	// visibility, server ACL and four members.
	require.Equal(t, "9", state[2])

	// The jump: timestamp_to_event finds an event at or before the middle
	// of the room, event fetches it, and a backfill from it starts with it.
	jump := regexp.MustCompile(`(?m)^Jump to date: the room's events run from \S+ to \S+; the middle is \S+\.\n` +
		`  GET /_matrix/federation/v1/timestamp_to_event/\S+\?dir=b&ts=\d+\n` +
		`  → 200 OK, (\$\S{8}), sent \S+ \((?:exactly at|\S+ before) the middle\)\n` +
		`  GET /_matrix/federation/v1/event/(\$\S+)\n` +
		`  → 200 OK, m\.room\.\S+ from @\S+ at depth (\d+): .+\n` +
		`  GET /_matrix/federation/v1/backfill/\S+\?limit=5&v=%24(\S+)\n` +
		`  → 200 OK, 5 PDUs, newest first:\n` +
		`  depth  event .*\n` +
		`\s+(\d+)  (\$\S{8})  .*\n` +
		`(?:\s+\d+  \$\S{8}  .*\n){4}\n`).FindStringSubmatch(out)
	require.NotNil(t, jump, out)
	found, fetched, depth, from, firstDepth, first := jump[1], jump[2], jump[3], jump[4], jump[5], jump[6]
	require.Equal(t, found, shortID(fetched), "event fetches the event found")
	require.Equal(t, fetched, "$"+from, "the backfill starts from it")
	require.Equal(t, found, first, "and returns it first")
	require.Equal(t, depth, firstDepth)
}

func TestDemoRunsOnOtherRoomVersions(t *testing.T) {
	for _, version := range []string{"1", "12"} {
		t.Run("version "+version, func(t *testing.T) {
			t.Parallel()
			res := runCommand(t, t.TempDir(), "demo", "--room-version", version)
			require.Equal(t, exitOK, res.code, res.stderr)
			require.Contains(t, res.stdout, "(room version "+version+")")
			require.Contains(t, res.stdout, "[redacted: history_visibility=joined")
		})
	}
}
