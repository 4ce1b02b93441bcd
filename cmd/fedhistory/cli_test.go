package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/roomdump"
)

func TestMissingOrUnknownSubcommandPrintsUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // the first line of stderr
	}{
		{"no subcommand", nil, "fedhistory: missing subcommand"},
		{"unknown subcommand", []string{"frobnicate", "--help"}, `fedhistory: unknown subcommand "frobnicate"`},
		{"help for an unknown subcommand", []string{"help", "frobnicate"}, `fedhistory: unknown subcommand "frobnicate"`},
		{"help for two subcommands", []string{"help", "gen", "serve"}, "fedhistory: help takes one subcommand"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := runCommand(t, t.TempDir(), tt.args...)
			require.Equal(t, exitUsage, res.code)
			require.Empty(t, res.stdout)
			first, rest, _ := strings.Cut(res.stderr, "\n")
			require.Equal(t, tt.want, first)
			require.Contains(t, rest, "Usage: fedhistory SUBCOMMAND")
			for _, cmd := range subcommands() {
				require.Contains(t, rest, "  "+cmd.name+" ", "the usage lists every subcommand")
			}
		})
	}
}

func TestHelpSubcommandShowsTheSubcommandsHelp(t *testing.T) {
	for _, cmd := range subcommands() {
		t.Run(cmd.name, func(t *testing.T) {
			t.Parallel()
			viaHelp := runCommand(t, t.TempDir(), "help", cmd.name)
			viaFlag := runCommand(t, t.TempDir(), cmd.name, "--help")
			require.Equal(t, exitOK, viaHelp.code, viaHelp.stderr)
			require.Empty(t, viaHelp.stderr)
			require.Equal(t, viaFlag.stdout, viaHelp.stdout)
			require.True(t, strings.HasPrefix(viaHelp.stdout, "Usage: fedhistory "+cmd.name), viaHelp.stdout)
		})
	}
}

var versionLine = regexp.MustCompile(`^fedhistory (devel|v\S+)( \(revision [0-9a-f]+(, modified)?\))?\n$`)

func TestVersionFlagAndSubcommand(t *testing.T) {
	dir := t.TempDir()
	want := mustRun(t, dir, "version")
	require.Regexp(t, versionLine, want.stdout)
	require.Empty(t, want.stderr)
	for _, spelling := range []string{"--version", "-version"} {
		res := mustRun(t, dir, spelling)
		require.Equal(t, want.stdout, res.stdout, spelling)
		require.Empty(t, res.stderr)
	}
}

func TestVersionString(t *testing.T) {
	tests := []struct {
		name string
		info *debug.BuildInfo
		want string
	}{
		{"no build information", nil, "devel"},
		{"a work tree build without VCS stamping", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "devel"},
		{"a released module", &debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}}, "v1.4.0"},
		{"a work tree build with VCS stamping", &debug.BuildInfo{
			Main: debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{
				{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: "0123abcd"}, {Key: "vcs.modified", Value: "false"},
			},
		}, "devel (revision 0123abcd)"},
		{"uncommitted changes", &debug.BuildInfo{
			Main:     debug.Module{Version: "v0.0.0-20260101000000-0123abcd0123+dirty"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123abcd0123"}, {Key: "vcs.modified", Value: "true"}},
		}, "v0.0.0-20260101000000-0123abcd0123+dirty (revision 0123abcd0123, modified)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := versionString(tt.info)
			require.Equal(t, tt.want, got)
			require.Regexp(t, versionLine, "fedhistory "+got+"\n")
		})
	}
}

// TestFlagHelpNamesEachValueOnce reads every subcommand's --help: a flag
// that takes a value names it once, after the flag, with a placeholder
// chosen for it (not a Go type name), and its description says what the
// value is without repeating the placeholder.
func TestFlagHelpNamesEachValueOnce(t *testing.T) {
	optionLine := regexp.MustCompile(`^  --([a-z-]+)(?: (\S+))?$`)
	typeNames := map[string]bool{"string": true, "int": true, "int64": true, "uint": true, "float": true, "duration": true, "value": true}
	for _, cmd := range subcommands() {
		t.Run(cmd.name, func(t *testing.T) {
			t.Parallel()
			res := mustRun(t, t.TempDir(), cmd.name, "--help")
			_, options, _ := strings.Cut(res.stdout, "\nOptions:\n")
			lines := strings.Split(strings.TrimSuffix(options, "\n"), "\n")
			if options == "" {
				return // a subcommand without options
			}
			require.Zero(t, len(lines)%2, "each option takes two lines:\n%s", options)
			for i := 0; i < len(lines); i += 2 {
				m := optionLine.FindStringSubmatch(lines[i])
				require.NotNil(t, m, "option line %q", lines[i])
				name, placeholder := m[1], m[2]
				description, ok := strings.CutPrefix(lines[i+1], "        ")
				require.True(t, ok && description != "", "--%s has no description", name)
				require.False(t, typeNames[placeholder], "--%s shows the Go type %q as its placeholder", name, placeholder)
				if placeholder != "" {
					repeated := regexp.MustCompile(`(^|\W)` + regexp.QuoteMeta(placeholder) + `($|\W)`)
					require.NotRegexp(t, repeated, description, "--%s %s repeats its placeholder", name, placeholder)
				}
				require.LessOrEqual(t, strings.Count(description, "(default"), 1, "--%s: %s", name, description)
			}
		})
	}
}

func TestServeChecksListenBeforeDoingAnything(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no port", []string{"--listen", "localhost"}, `--listen "localhost": want HOST:PORT`},
		{"a port out of range", []string{"--listen", "127.0.0.1:65536"}, `--listen "127.0.0.1:65536": the port must be a number`},
		{"a port that is not a number", []string{"--listen", "127.0.0.1:http"}, `--listen "127.0.0.1:http": the port must be a number`},
		{"no host and no server name", []string{"--listen", ":8008"}, `--listen ":8008" has no host: give --server-name`},
		{"a bad debug address", []string{"--listen", "127.0.0.1:0", "--debug-addr", "127.0.0.1"}, `--debug-addr "127.0.0.1": want HOST:PORT`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			res := runCommand(t, dir, append([]string{"serve", "--signing-key", "hs1.key"}, tt.args...)...)
			require.Equal(t, exitUsage, res.code)
			requireOneLine(t, res.stderr)
			require.Contains(t, res.stderr, tt.want)
			require.Empty(t, res.stdout)
			require.NoFileExists(t, filepath.Join(dir, "hs1.key"), "no key is made for a server that cannot start")
		})
	}
}

func TestGenWritesAReadableDumpAndAPrivateKey(t *testing.T) {
	dir := t.TempDir()
	mustRun(t, dir, "gen", "--events", "10", "--out", "room.jsonl", "--signing-key", "creator.key")
	for file, want := range map[string]os.FileMode{"room.jsonl": 0o644, "creator.key": 0o600} {
		info, err := os.Stat(filepath.Join(dir, file))
		require.NoError(t, err)
		require.Equal(t, want, info.Mode().Perm(), file)
	}
}

// parseLandmarks reads gen's NAME=VALUE lines.
func parseLandmarks(t *testing.T, stdout string) map[string]string {
	t.Helper()
	values := make(map[string]string)
	for line := range strings.Lines(stdout) {
		name, value, ok := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
		require.True(t, ok, "line %q of %q", line, stdout)
		values[name] = value
	}
	return values
}

// TestGenAndServeTellTheIDsToAskFor follows a new user: gen tells the
// room's ID, its create event and its newest event; serve --room logs the
// same on stderr, keeping stdout to the line that says it is ready; and a
// backfill from the newest event reaches back to the create event.
func TestGenAndServeTellTheIDsToAskFor(t *testing.T) {
	dir := t.TempDir()
	res := mustRun(t, dir, "gen", "--events", "30", "--fork-every", "4", "--seed", "21", "--out", "room.jsonl")
	ids := parseLandmarks(t, res.stdout)
	require.Len(t, ids, 3, res.stdout)

	f, err := os.Open(filepath.Join(dir, "room.jsonl"))
	require.NoError(t, err)
	records, err := roomdump.Read(f)
	f.Close()
	require.NoError(t, err)
	var create string
	for _, rec := range records {
		var fields struct {
			Type string `json:"type"`
		}
		require.NoError(t, json.Unmarshal(rec.Event, &fields))
		if fields.Type == "m.room.create" {
			create = rec.EventID
		}
	}
	require.Equal(t, records[0].RoomID, ids["room_id"])
	require.Equal(t, create, ids["create_event"])
	require.Equal(t, records[len(records)-1].EventID, ids["latest_event"])

	trust := strings.TrimSpace(mustRun(t, dir, "keygen", "--out", "hs2.key").stdout)
	srv := startServer(t, dir, "--room", "room.jsonl", "--trust", asker+"="+trust)

	answer := mustRun(t, dir, "backfill", "--server", srv.URL, "--origin", asker, "--signing-key", "hs2.key",
		"--room", ids["room_id"], "--v", ids["latest_event"], "--limit", "100", "--raw")
	var txn backfillAnswer
	require.NoError(t, json.Unmarshal([]byte(answer.stdout), &txn))
	require.Len(t, txn.PDUs, 30)
	var oldest struct {
		Type string `json:"type"`
	}
	require.NoError(t, json.Unmarshal(txn.PDUs[len(txn.PDUs)-1], &oldest))
	require.Equal(t, "m.room.create", oldest.Type)

	require.Equal(t, exitOK, srv.stop(t), srv.stderr.String())
	require.Equal(t, "fedhistory: serving "+srv.Name+" on "+srv.URL+"\n", srv.stdout.String(),
		"serve's stdout is the one line scripts wait for")
	// Read once serve has exited (see server.stderr).
	require.Contains(t, srv.stderr.String(), `msg="loaded room" file=room.jsonl room_id=`+ids["room_id"]+
		" create_event="+ids["create_event"]+" latest_event="+ids["latest_event"]+" events=30")
}
