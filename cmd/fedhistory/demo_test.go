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
