package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// inspectEvent is what the tests of the inspecting subcommands need of one
// event of a dump.
type inspectEvent struct {
	ID             string
	Type           string
	StateKey       *string
	Sender         string
	OriginServerTS int64
	AuthEvents     []string
}

// inspectRoom is a generated room with its events parsed.
type inspectRoom struct {
	*dumpRoom
	events []inspectEvent
	byID   map[string]inspectEvent
}

func parseInspectRoom(t *testing.T, room *dumpRoom) *inspectRoom {
	t.Helper()
	r := &inspectRoom{dumpRoom: room, byID: make(map[string]inspectEvent)}
	for _, ev := range room.Events {
		var fields struct {
			Type           string   `json:"type"`
			StateKey       *string  `json:"state_key"`
			Sender         string   `json:"sender"`
			OriginServerTS int64    `json:"origin_server_ts"`
			AuthEvents     []string `json:"auth_events"`
		}
		require.NoError(t, json.Unmarshal(ev.JSON, &fields))
		parsed := inspectEvent{ev.ID, fields.Type, fields.StateKey, fields.Sender, fields.OriginServerTS, fields.AuthEvents}
		r.events = append(r.events, parsed)
		r.byID[ev.ID] = parsed
	}
	return r
}

// finalState is the room's state after its last event. The rooms here set
// their state once, in their setup, on no fork: the state before the last
// event is the newest event of each (type, state_key).
func (r *inspectRoom) finalState() []string {
	newest := make(map[[2]string]string)
	for _, ev := range r.events {
		if ev.StateKey != nil {
			newest[[2]string{ev.Type, *ev.StateKey}] = ev.ID
		}
	}
	return slices.Sorted(func(yield func(string) bool) {
		for _, id := range newest {
			if !yield(id) {
				return
			}
		}
	})
}

// authChain is the union of the auth events of ids, transitively.
func (r *inspectRoom) authChain(ids ...string) []string {
	seen := make(map[string]bool)
	queue := slices.Clone(ids)
	for len(queue) > 0 {
		id := queue[0]
		queue = queue[1:]
		for _, auth := range r.byID[id].AuthEvents {
			if !seen[auth] {
				seen[auth] = true
				queue = append(queue, auth)
			}
		}
	}
	var out []string
	for id := range seen {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// firstOf returns the first event of the room with the type and sender.
func (r *inspectRoom) firstOf(t *testing.T, typ, sender string) inspectEvent {
	t.Helper()
	for _, ev := range r.events {
		if ev.Type == typ && ev.Sender == sender {
			return ev
		}
	}
	t.Fatalf("no %s from %s in the room", typ, sender)
	return inspectEvent{}
}

// inspectWorld is one "fedhistory serve" holding two generated rooms:
//
//   - erased, room version 10, whose creator @alice:hs1.example is erased,
//     so that her events are served redacted (and its m.room.create event
//     loses room_version, which version 10's redaction removes);
//   - plain, room version 11, created on hs3.example, where nothing is
//     hidden.
//
// @bob:hs2.example, the asker's user, is joined to both.
type inspectWorld struct {
	dir           string
	erased, plain *inspectRoom
	server        *server
}

// newInspectWorld serves the two rooms from memory ("memory") or from a
// SQLite database filled by import ("sqlite").
func newInspectWorld(t *testing.T, store string) *inspectWorld {
	t.Helper()
	dir := t.TempDir()
	w := &inspectWorld{dir: dir}
	w.erased = parseInspectRoom(t, generate(t, dir, "erased.jsonl", "--events", "40", "--fork-every", "7", "--seed", "3", "--room-version", "10"))
	w.plain = parseInspectRoom(t, generate(t, dir, "plain.jsonl", "--events", "30", "--seed", "8", "--room-version", "11", "--server-name", "hs3.example"))
	f, err := os.OpenFile(w.erased.Path, os.O_APPEND|os.O_WRONLY, 0)
	require.NoError(t, err)
	_, err = f.WriteString(`{"erased_user": "@alice:hs1.example"}` + "\n")
	require.NoError(t, err)
	require.NoError(t, f.Close())

	trust := strings.TrimSpace(mustRun(t, dir, "keygen", "--out", "hs2.key").stdout)
	args := []string{"--server-name", "hs1.test", "--trust", asker + "=" + trust}
	switch store {
	case "memory":
		args = append(args, "--room", w.erased.Path, "--room", w.plain.Path)
	case "sqlite":
		dsn := "sqlite:" + filepath.Join(dir, "history.db")
		mustRun(t, dir, "import", "--db", dsn, "--room", w.erased.Path, "--room", w.plain.Path)
		args = append(args, "--db", dsn)
	default:
		t.Fatalf("unknown store %q", store)
	}
	w.server = startServer(t, dir, args...)
	return w
}

// run runs a client subcommand against the server as the asker, adding
// --room room unless room is nil.
func (w *inspectWorld) run(t *testing.T, room *inspectRoom, subcommand string, args ...string) result {
	t.Helper()
	base := []string{subcommand, "--server", w.server.URL, "--destination", "hs1.test", "--origin", asker, "--signing-key", "hs2.key"}
	if room != nil {
		base = append(base, "--room", room.RoomID)
	}
	return runCommand(t, w.dir, append(base, args...)...)
}

func (w *inspectWorld) mustRun(t *testing.T, room *inspectRoom, subcommand string, args ...string) string {
	t.Helper()
	res := w.run(t, room, subcommand, args...)
	require.Equal(t, exitOK, res.code, "fedhistory %s %v: %s", subcommand, args, res.stderr)
	require.Empty(t, res.stderr)
	return res.stdout
}

// pduRow is one line of a PDU table.
type pduRow struct {
	depth                                     int64
	id, typ, stateKey, sender, form, contents string
}

var pduRowLine = regexp.MustCompile(`^\s+(\d+)  (\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(whole|redacted|altered|not whole|no hash)\s+(.*)$`)

// pduTables reads the PDU tables of an output, each under the line that
// ends with its title (a colon), or under "" when untitled.
func pduTables(t *testing.T, out string) map[string][]pduRow {
	t.Helper()
	tables := make(map[string][]pduRow)
	title := ""
	for line := range strings.Lines(out) {
		line = strings.TrimSuffix(line, "\n")
		if strings.HasSuffix(line, ":") && !strings.HasPrefix(line, " ") {
			title = strings.TrimSuffix(line, ":")
			continue
		}
		m := pduRowLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		depth, err := strconv.ParseInt(m[1], 10, 64)
		require.NoError(t, err)
		tables[title] = append(tables[title], pduRow{depth, m[2], m[3], m[4], m[5], m[6], m[7]})
	}
	return tables
}

func rowIDs(rows []pduRow) []string {
	ids := make([]string, len(rows))
	for i, row := range rows {
		ids[i] = row.id
	}
	slices.Sort(ids)
	return ids
}

func TestInspectingSubcommands(t *testing.T) {
	w := newInspectWorld(t, "memory")
	erased, plain := w.erased, w.plain

	t.Run("state-ids prints the counts and the IDs, sorted", func(t *testing.T) {
		out := w.mustRun(t, erased, "state-ids", "--event", erased.last().ID)
		state := erased.finalState()
		chain := erased.authChain(state...)
		require.True(t, strings.HasPrefix(out, "State before "+erased.last().ID+" in "+erased.RoomID+": "+
			strconv.Itoa(len(state))+" state events, and "+strconv.Itoa(len(chain))+" events in their auth chain.\n"), out)
		want := "\nState (pdu_ids):\n  " + strings.Join(state, "\n  ") + "\n" +
			"\nAuth chain (auth_chain_ids):\n  " + strings.Join(chain, "\n  ") + "\n"
		require.True(t, strings.HasSuffix(out, want), "%s\nwant it to end with\n%s", out, want)

		var raw struct {
			PDUIDs       []string `json:"pdu_ids"`
			AuthChainIDs []string `json:"auth_chain_ids"`
		}
		require.NoError(t, json.Unmarshal([]byte(w.mustRun(t, erased, "state-ids", "--event", erased.last().ID, "--raw")), &raw))
		require.ElementsMatch(t, state, raw.PDUIDs)
		require.ElementsMatch(t, chain, raw.AuthChainIDs)
	})

	t.Run("state reads the room version from the create event", func(t *testing.T) {
		out := w.mustRun(t, plain, "state", "--event", plain.last().ID)
		require.Contains(t, out, "Room version 11, from the m.room.create event.\n")
		tables := pduTables(t, out)
		state, chain := plain.finalState(), plain.authChain(plain.finalState()...)
		require.Equal(t, state, rowIDs(tables["State"]), "every ID is computed, and right")
		require.Equal(t, chain, rowIDs(tables["Auth chain"]))
		for _, row := range slices.Concat(tables["State"], tables["Auth chain"]) {
			ev := plain.byID[row.id]
			require.Equal(t, "whole", row.form, "nothing of the plain room is hidden: %+v", row)
			require.Equal(t, ev.Type, row.typ)
			require.Equal(t, strconv.Quote(*ev.StateKey), row.stateKey)
			require.Equal(t, ev.Sender, row.sender)
		}
		require.Contains(t, out, ": "+strconv.Itoa(len(state))+" state events ("+strconv.Itoa(len(state))+" whole, 0 redacted)")
		for i := 1; i < len(tables["Auth chain"]); i++ {
			require.LessOrEqual(t, tables["Auth chain"][i-1].depth, tables["Auth chain"][i].depth, "the auth chain is by depth")
		}
	})

	t.Run("state marks the erased sender's PDUs redacted", func(t *testing.T) {
		out := w.mustRun(t, erased, "state", "--event", erased.last().ID, "--room-version", "10")
		require.Contains(t, out, "Room version 10, from --room-version.\n")
		rows := pduTables(t, out)["State"]
		require.Equal(t, erased.finalState(), rowIDs(rows))
		forms := make(map[string]string)
		for _, row := range rows {
			forms[row.typ+" "+row.stateKey] = row.form
		}
		// Version 10's redaction keeps only creator of a create event's
		// content, and drops invite and notifications of power levels; what
		// it leaves of the others is all they hold, so they are whole.
		require.Equal(t, map[string]string{
			`m.room.create ""`:                   "redacted",
			`m.room.power_levels ""`:             "redacted",
			`m.room.join_rules ""`:               "whole",
			`m.room.history_visibility ""`:       "whole",
			`m.room.member "@alice:hs1.example"`: "whole",
			`m.room.member "@bob:hs2.example"`:   "whole",
		}, forms)
		for _, row := range rows {
			if row.typ == "m.room.create" {
				require.Equal(t, "creator", row.contents, "the redacted create event keeps creator alone")
			}
		}
	})

	t.Run("state without the room version says so and cannot tell redacted from altered", func(t *testing.T) {
		out := w.mustRun(t, erased, "state", "--event", erased.last().ID)
		require.Contains(t, out, "Room version unknown: no m.room.create event in the answer tells it; give --room-version.\n")
		rows := pduTables(t, out)["State"]
		require.Len(t, rows, len(erased.finalState()))
		for _, row := range rows {
			require.Equal(t, "?", row.id, "version 10's IDs cannot be computed without the version")
			if row.typ == "m.room.create" {
				require.Equal(t, "not whole", row.form)
			}
		}
	})

	t.Run("event-auth prints the auth chain of the event, by depth", func(t *testing.T) {
		ev := plain.firstOf(t, "m.room.message", "@bob:hs2.example")
		out := w.mustRun(t, plain, "event-auth", "--event", ev.ID)
		chain := plain.authChain(ev.ID)
		require.True(t, strings.HasPrefix(out, "Auth chain of "+ev.ID+" in "+plain.RoomID+": "+
			strconv.Itoa(len(chain))+" events ("+strconv.Itoa(len(chain))+" whole, 0 redacted).\n"), out)
		rows := pduTables(t, out)[""]
		require.Equal(t, chain, rowIDs(rows))
		require.Equal(t, "m.room.create", rows[0].typ)
	})

	t.Run("event prints the event and its PDU", func(t *testing.T) {
		create := plain.events[0]
		out := w.mustRun(t, nil, "event", "--event", create.ID)
		require.Contains(t, out, "Event "+create.ID+", from hs1.test:\n")
		require.Contains(t, out, "  event_id          "+create.ID+" (computed from the PDU)\n")
		require.Contains(t, out, "  type              m.room.create\n")
		require.Contains(t, out, "  state_key         \"\"\n")
		require.Contains(t, out, "  form              whole\n")
		require.Contains(t, out, "  origin_server_ts  "+strconv.FormatInt(create.OriginServerTS, 10)+" ("+
			time.UnixMilli(create.OriginServerTS).UTC().Format(time.RFC3339)+")\n")
		require.Contains(t, out, "  room version      11 (from the m.room.create event)\n")
		_, pdu, ok := strings.Cut(out, "\n\n")
		require.True(t, ok, out)
		require.JSONEq(t, string(plain.dumpRoom.byID[create.ID].JSON), pdu, "the PDU, whole, indented")
	})

	t.Run("event tells a redacted PDU given the room version", func(t *testing.T) {
		hidden := erased.firstOf(t, "m.room.message", "@alice:hs1.example")
		out := w.mustRun(t, nil, "event", "--event", hidden.ID)
		require.Contains(t, out, "  event_id          not computed (the room version is unknown)\n")
		require.Contains(t, out, "  form              not whole\n")

		out = w.mustRun(t, nil, "event", "--event", hidden.ID, "--room-version", "10")
		require.Contains(t, out, "  event_id          "+hidden.ID+" (computed from the PDU)\n")
		require.Contains(t, out, "  form              redacted\n")
		require.Contains(t, out, "  content           (empty)\n")

		seen := erased.firstOf(t, "m.room.message", "@bob:hs2.example")
		out = w.mustRun(t, nil, "event", "--event", seen.ID, "--room-version", "10")
		require.Contains(t, out, "  form              whole\n")
		require.Contains(t, out, "  content           body msgtype\n")
	})

	t.Run("timestamp takes milliseconds and RFC 3339 times", func(t *testing.T) {
		// Generated events are one second apart: half a second after the
		// tenth, b finds the tenth and f the eleventh.
		tenth, eleventh := erased.events[9], erased.events[10]
		ms := tenth.OriginServerTS + 500
		rfc := time.UnixMilli(ms).UTC().Format(time.RFC3339Nano)
		offset := time.UnixMilli(ms).In(time.FixedZone("", -(3*3600 + 30*60))).Format(time.RFC3339Nano)
		for _, ts := range []string{strconv.FormatInt(ms, 10), rfc, offset, strings.ToLower(rfc)} {
			for dir, want := range map[string]inspectEvent{"b": tenth, "f": eleventh} {
				out := w.mustRun(t, erased, "timestamp", "--ts", ts, "--dir", dir)
				require.Equal(t, "event_id          "+want.ID+"\n"+
					"origin_server_ts  "+strconv.FormatInt(want.OriginServerTS, 10)+" ("+
					time.UnixMilli(want.OriginServerTS).UTC().Format(time.RFC3339)+", 500ms "+
					map[string]string{"b": "before", "f": "after"}[dir]+" "+time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.999Z07:00")+")\n",
					out, "--ts %s --dir %s", ts, dir)
			}
		}
		out := w.mustRun(t, erased, "timestamp", "--ts", strconv.FormatInt(tenth.OriginServerTS, 10), "--dir", "f")
		require.Contains(t, out, "event_id          "+tenth.ID+"\n", "the time itself is included")
		require.Contains(t, out, ", exactly at ")

		var raw timestampAnswer
		require.NoError(t, json.Unmarshal([]byte(w.mustRun(t, erased, "timestamp", "--ts", rfc, "--dir", "b", "--raw")), &raw))
		require.Equal(t, timestampAnswer{tenth.ID, tenth.OriginServerTS}, raw)
	})
}

func TestInspectingSubcommandsPrintErrorAnswers(t *testing.T) {
	w := newInspectWorld(t, "memory")
	room := w.plain
	unknown := "$unknownEventAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	tests := []struct {
		name       string
		room       *inspectRoom
		subcommand string
		args       []string
		want       string
	}{
		{"state-ids of an unknown event", room, "state-ids", []string{"--event", unknown}, "HTTP 404: M_NOT_FOUND: "},
		{"state of an unknown event", room, "state", []string{"--event", unknown}, "HTTP 404: M_NOT_FOUND: "},
		{"state of no event ID", room, "state", []string{"--event", "not-an-event"}, "HTTP 400: M_INVALID_PARAM: event_id is not an event ID"},
		{"event-auth of an unknown event", room, "event-auth", []string{"--event", unknown}, "HTTP 404: M_NOT_FOUND: event not found"},
		{"event-auth of another room's event", room, "event-auth", []string{"--event", w.erased.last().ID}, "HTTP 404: M_NOT_FOUND: event not found"},
		{"event unknown", nil, "event", []string{"--event", unknown}, "HTTP 404: M_NOT_FOUND: event not found"},
		{"timestamp before the room", room, "timestamp", []string{"--ts", "1970-01-01T00:00:00Z", "--dir", "b"}, "HTTP 404: M_NOT_FOUND: event not found"},
		{"timestamp in a room the server does not hold", nil, "timestamp",
			[]string{"--room", "!nowhere:hs1.test", "--ts", "0", "--dir", "f"}, "HTTP 403: M_FORBIDDEN: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := w.run(t, tt.room, tt.subcommand, tt.args...)
			require.Equal(t, exitFailure, res.code, res.stdout)
			requireOneLine(t, res.stderr)
			require.True(t, strings.HasPrefix(res.stderr, "fedhistory "+tt.subcommand+": "+tt.want), res.stderr)
			require.Empty(t, res.stdout)
		})
	}
}

func TestInspectingSubcommandsUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"state-ids without --event", []string{"state-ids", "--server", "http://127.0.0.1:1", "--origin", "a", "--signing-key", "k", "--room", "!r:a"}, "--event is required"},
		{"event needs no --room", []string{"event"}, "--server, --origin, --signing-key and --event are required"},
		{"event takes no --room", []string{"event", "--room", "!r:a"}, "flag provided but not defined: -room"},
		{"timestamp without --ts and --dir", []string{"timestamp", "--server", "http://127.0.0.1:1", "--origin", "a", "--signing-key", "k", "--room", "!r:a"}, "--ts and --dir are required"},
		{"timestamp with a bad --ts", []string{"timestamp", "--server", "http://127.0.0.1:1", "--origin", "a", "--signing-key", "k", "--room", "!r:a", "--ts", "yesterday", "--dir", "b"}, `--ts "yesterday": want milliseconds since 1970-01-01T00:00:00Z`},
		{"timestamp with a bad --dir", []string{"timestamp", "--server", "http://127.0.0.1:1", "--origin", "a", "--signing-key", "k", "--room", "!r:a", "--ts", "5", "--dir", "up"}, `--dir "up": want f (forwards) or b (backwards)`},
		{"state with an unknown --room-version", []string{"state", "--server", "http://127.0.0.1:1", "--origin", "a", "--signing-key", "k", "--room", "!r:a", "--event", "$e", "--room-version", "99"}, `--room-version "99" is not a room version this tool knows`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := runCommand(t, t.TempDir(), tt.args...)
			require.Equal(t, exitUsage, res.code)
			requireOneLine(t, res.stderr)
			require.Contains(t, res.stderr, tt.want)
			require.Empty(t, res.stdout)
		})
	}
}
