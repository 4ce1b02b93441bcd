package redact_test

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/redact"
)

// Every expectation in this file is written out by hand from the spec text
// (content/rooms/fragments/*-redactions.md and the algorithm in v8.md), not
// produced by the code under test.

// roomVersions are the room versions the package knows, in order.
var roomVersions = []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}

// versionsIn expands "1-5" or "11-12" to the room versions it names.
func versionsIn(t testing.TB, span string) []string {
	t.Helper()
	lo, hi, ok := strings.Cut(span, "-")
	if !ok {
		hi = lo
	}
	from, err := strconv.Atoi(lo)
	require.NoError(t, err)
	to, err := strconv.Atoi(hi)
	require.NoError(t, err)
	var vs []string
	for v := from; v <= to; v++ {
		vs = append(vs, strconv.Itoa(v))
	}
	return vs
}

// contentCase is one event type: its content, and what each room version
// keeps of it. The event around it is skeleton (below).
type contentCase struct {
	name     string
	typ      string
	stateKey bool
	// extra is added to the top level of the input; it is removed in every
	// version (e.g. the pre-v11 top-level redacts of m.room.redaction).
	extra   string
	content string
	// want maps a span of room versions ("1-5") to the content the
	// redacted event keeps. The spans must cover 1-12 exactly once.
	want map[string]string
}

var contentCases = []contentCase{{
	// No rule for m.room.message in any version: "The content object must
	// also be stripped of all keys, unless it is one of the following event
	// types".
	name:    "plain message",
	typ:     "m.room.message",
	content: `{"body":"hello","msgtype":"m.text"}`,
	want:    map[string]string{"1-12": `{}`},
}, {
	// v1..v8: "m.room.member allows key membership".
	// v9, v11: "allows keys membership, join_authorised_via_users_server".
	name:     "member",
	typ:      "m.room.member",
	stateKey: true,
	content:  `{"avatar_url":"mxc://example.org/a","displayname":"Alice","join_authorised_via_users_server":"@bob:example.org","membership":"join","reason":"hi"}`,
	want: map[string]string{
		"1-8":  `{"membership":"join"}`,
		"9-12": `{"join_authorised_via_users_server":"@bob:example.org","membership":"join"}`,
	},
}, {
	// v11: "Additionally, it allows the signed key of the
	// third_party_invite key." Before v11 third_party_invite goes.
	name:     "member with third_party_invite",
	typ:      "m.room.member",
	stateKey: true,
	content:  `{"displayname":"Alice","membership":"invite","third_party_invite":{"display_name":"alice@example.com","signed":{"mxid":"@alice:example.org","signatures":{"id.example.org":{"ed25519:0":"c2lnbmF0dXJl"}},"token":"tok"}}}`,
	want: map[string]string{
		"1-10":  `{"membership":"invite"}`,
		"11-12": `{"membership":"invite","third_party_invite":{"signed":{"mxid":"@alice:example.org","signatures":{"id.example.org":{"ed25519:0":"c2lnbmF0dXJl"}},"token":"tok"}}}`,
	},
}, {
	// v1..v9: "m.room.create allows key creator". v11: "allows all keys".
	name:     "create",
	typ:      "m.room.create",
	stateKey: true,
	content:  `{"creator":"@alice:example.org","m.federate":true,"predecessor":{"event_id":"$old","room_id":"!old:example.org"},"room_version":"1"}`,
	want: map[string]string{
		"1-10":  `{"creator":"@alice:example.org"}`,
		"11-12": `{"creator":"@alice:example.org","m.federate":true,"predecessor":{"event_id":"$old","room_id":"!old:example.org"},"room_version":"1"}`,
	},
}, {
	// v1, v6: "allows key join_rule". v8 onwards: "allows keys join_rule,
	// allow".
	name:     "join rules",
	typ:      "m.room.join_rules",
	stateKey: true,
	content:  `{"allow":[{"room_id":"!space:example.org","type":"m.room_membership"}],"join_rule":"restricted","note":"x"}`,
	want: map[string]string{
		"1-7":  `{"join_rule":"restricted"}`,
		"8-12": `{"allow":[{"room_id":"!space:example.org","type":"m.room_membership"}],"join_rule":"restricted"}`,
	},
}, {
	// v1..v9: ban, events, events_default, kick, redact, state_default,
	// users, users_default. v11 adds invite. notifications is never kept.
	name:     "power levels",
	typ:      "m.room.power_levels",
	stateKey: true,
	content:  `{"ban":50,"events":{"m.room.name":100},"events_default":0,"invite":0,"kick":50,"notifications":{"room":50},"redact":50,"state_default":50,"users":{"@alice:example.org":100},"users_default":0}`,
	want: map[string]string{
		"1-10":  `{"ban":50,"events":{"m.room.name":100},"events_default":0,"kick":50,"redact":50,"state_default":50,"users":{"@alice:example.org":100},"users_default":0}`,
		"11-12": `{"ban":50,"events":{"m.room.name":100},"events_default":0,"invite":0,"kick":50,"redact":50,"state_default":50,"users":{"@alice:example.org":100},"users_default":0}`,
	},
}, {
	// Every version: "allows key history_visibility".
	name:     "history visibility",
	typ:      "m.room.history_visibility",
	stateKey: true,
	content:  `{"history_visibility":"shared","note":"x"}`,
	want:     map[string]string{"1-12": `{"history_visibility":"shared"}`},
}, {
	// v1 (room versions 1-5): "m.room.aliases allows key aliases"; from v6
	// "All significant meaning for m.room.aliases has been removed".
	name:     "aliases",
	typ:      "m.room.aliases",
	stateKey: true,
	content:  `{"aliases":["#a:example.org"],"note":"x"}`,
	want: map[string]string{
		"1-5":  `{"aliases":["#a:example.org"]}`,
		"6-12": `{}`,
	},
}, {
	// v11: "m.room.redaction allows key redacts" (in content). Before v11
	// redacts is a top-level key, in no version's list: removed.
	name:    "redaction",
	typ:     "m.room.redaction",
	extra:   `"redacts":"$target",`,
	content: `{"reason":"spam","redacts":"$target"}`,
	want: map[string]string{
		"1-10":  `{}`,
		"11-12": `{"redacts":"$target"}`,
	},
}}

// skeleton builds the event around a contentCase. Its top level holds every
// key some version keeps that a real event carries, plus origin (kept before
// v11) and unsigned (never kept).
func skeleton(c contentCase) string {
	stateKey := ""
	if c.stateKey {
		stateKey = `"state_key":"",`
	}
	return `{"auth_events":["$auth"],"content":` + c.content + `,"depth":3,` +
		`"hashes":{"sha256":"aGFzaA"},"origin":"example.org","origin_server_ts":1700000000000,` +
		`"prev_events":["$prev"],` + c.extra + `"room_id":"!r:example.org","sender":"@alice:example.org",` +
		`"signatures":{},` + stateKey + `"type":"` + c.typ + `","unsigned":{"age":7}}`
}

// wantSkeleton is skeleton(c) redacted in room version v with content
// content: origin goes from v11 ("The top-level origin, membership, and
// prev_state properties are no longer protected from redaction"), unsigned
// and extra always.
func wantSkeleton(c contentCase, v int, content string) string {
	stateKey := ""
	if c.stateKey {
		stateKey = `"state_key":"",`
	}
	origin := `"origin":"example.org",`
	if v >= 11 {
		origin = ""
	}
	return `{"auth_events":["$auth"],"content":` + content + `,"depth":3,` +
		`"hashes":{"sha256":"aGFzaA"},` + origin + `"origin_server_ts":1700000000000,` +
		`"prev_events":["$prev"],"room_id":"!r:example.org","sender":"@alice:example.org",` +
		`"signatures":{},` + stateKey + `"type":"` + c.typ + `"}`
}

// tableCase is one input and its expected redaction in one room version.
type tableCase struct {
	name    string
	version string
	in      string
	want    string
}

// tableCases expands contentCases over every room version.
func tableCases(t testing.TB) []tableCase {
	var cases []tableCase
	for _, c := range contentCases {
		covered := map[string]bool{}
		for span, content := range c.want {
			for _, v := range versionsIn(t, span) {
				require.False(t, covered[v], "%s: room version %s twice", c.name, v)
				covered[v] = true
				n, _ := strconv.Atoi(v)
				cases = append(cases, tableCase{
					name:    c.name,
					version: v,
					in:      skeleton(c),
					want:    wantSkeleton(c, n, content),
				})
			}
		}
		require.Len(t, covered, len(roomVersions), "%s: every room version needs an expectation", c.name)
	}
	return cases
}

func TestEventPerRoomVersion(t *testing.T) {
	for _, c := range tableCases(t) {
		t.Run("v"+c.version+"/"+c.name, func(t *testing.T) {
			got, err := redact.Event(c.version, []byte(c.in))
			require.NoError(t, err)
			require.Equal(t, c.want, string(got))
		})
	}
}

// topLevelIn has every top-level key of the lists, and some that are in no
// list, pretty-printed: the output keeps each kept member's leading
// whitespace and the whitespace before the closing brace.
const topLevelIn = `{
  "auth_events": ["$auth"],
  "content": {"body": "hi"},
  "depth": 5,
  "event_id": "$e:example.org",
  "hashes": {"sha256": "aGFzaA"},
  "membership": "join",
  "origin": "example.org",
  "origin_server_ts": 1700000000000,
  "prev_events": ["$prev"],
  "prev_state": [],
  "redacts": "$target",
  "room_id": "!r:example.org",
  "sender": "@alice:example.org",
  "signatures": {"example.org": {"ed25519:1": "c2ln"}},
  "state_key": "",
  "type": "m.room.message",
  "unsigned": {"age": 7},
  "user_id": "@alice:example.org",
  "age_ts": 1
}
`

func TestEventTopLevel(t *testing.T) {
	// v1, v6, v8, v9 lists: event_id, type, room_id, sender, state_key,
	// content, hashes, signatures, depth, prev_events, prev_state,
	// auth_events, origin, origin_server_ts, membership.
	const wantV1 = `{
  "auth_events": ["$auth"],
  "content": {},
  "depth": 5,
  "event_id": "$e:example.org",
  "hashes": {"sha256": "aGFzaA"},
  "membership": "join",
  "origin": "example.org",
  "origin_server_ts": 1700000000000,
  "prev_events": ["$prev"],
  "prev_state": [],
  "room_id": "!r:example.org",
  "sender": "@alice:example.org",
  "signatures": {"example.org": {"ed25519:1": "c2ln"}},
  "state_key": "",
  "type": "m.room.message"
}
`
	// v11 list: the same less prev_state, origin and membership.
	const wantV11 = `{
  "auth_events": ["$auth"],
  "content": {},
  "depth": 5,
  "event_id": "$e:example.org",
  "hashes": {"sha256": "aGFzaA"},
  "origin_server_ts": 1700000000000,
  "prev_events": ["$prev"],
  "room_id": "!r:example.org",
  "sender": "@alice:example.org",
  "signatures": {"example.org": {"ed25519:1": "c2ln"}},
  "state_key": "",
  "type": "m.room.message"
}
`
	for _, v := range roomVersions {
		want := wantV1
		if n, _ := strconv.Atoi(v); n >= 11 {
			want = wantV11
		}
		got, err := redact.Event(v, []byte(topLevelIn))
		require.NoError(t, err, "room version %s", v)
		require.Equal(t, want, string(got), "room version %s", v)
	}
}

func TestEventKeepsBytes(t *testing.T) {
	tests := []struct {
		name     string
		versions string
		in, want string
	}{{
		// Room versions 1-5 allow integers beyond 2^53 and floats; a
		// decoder into float64 would print 123456789012345678901 as
		// 123456789012345680000 and 1.50 as 1.5.
		name:     "numbers outside canonical JSON",
		versions: "1-5",
		in:       `{"type":"m.room.power_levels","content":{"users":{"@a:x":123456789012345678901,"@b:x":1.50},"ban":-0,"kick":1e2,"redact":5E-1,"state_default":50.0,"body":1}}`,
		want:     `{"type":"m.room.power_levels","content":{"users":{"@a:x":123456789012345678901,"@b:x":1.50},"ban":-0,"kick":1e2,"redact":5E-1,"state_default":50.0}}`,
	}, {
		// Escapes stay as sent, in kept values and in kept keys; a key is
		// matched by its decoded text ("b\u0061n" is ban, "\u0075nsigned"
		// is unsigned).
		name:     "escapes",
		versions: "1-12",
		in:       `{"typ\u0065":"m.room.pow\u0065r_levels","\u0075nsigned":{},"content":{"b\u0061n":50,"users":{"@\u00e9:x":1,"@\ud83d\ude00:x":2,"@\/:x":3},"name":"\u0041"}}`,
		want:     `{"typ\u0065":"m.room.pow\u0065r_levels","content":{"b\u0061n":50,"users":{"@\u00e9:x":1,"@\ud83d\ude00:x":2,"@\/:x":3}}}`,
	}, {
		// Whitespace inside and before kept members is kept; removed
		// members go with their leading whitespace; commas are rebuilt.
		name:     "odd whitespace",
		versions: "1-10",
		in:       " \t{ \"unsigned\" :{} ,\r\n\"type\"\t:\t\"m.room.member\" , \"content\" : {\"displayname\": \"A\" ,  \"membership\"  :  \"join\"\n}\n,\"x\":[ ]}\n",
		want:     " \t{\r\n\"type\"\t:\t\"m.room.member\", \"content\" : {  \"membership\"  :  \"join\"\n}}\n",
	}, {
		// v11: third_party_invite keeps signed byte for byte, its other
		// keys go, and so do their leading whitespace and commas.
		name:     "third_party_invite whitespace",
		versions: "11-12",
		in:       `{"type":"m.room.member","content":{ "third_party_invite" : { "display_name" : "a" , "signed" : { "token" : "t" , "n" : 1.0 } , "z" : 1 } , "membership" : "join" }}`,
		want:     `{"type":"m.room.member","content":{ "third_party_invite" : { "signed" : { "token" : "t" , "n" : 1.0 } }, "membership" : "join" }}`,
	}, {
		// Everything removed: the braces and the whitespace before the
		// closing one remain.
		name:     "empty result",
		versions: "1-12",
		in:       `{ "unsigned": 1 , "type" : "m.room.message", "content" : { "body" : "x" } }`,
		want:     `{ "type" : "m.room.message", "content" : { } }`,
	}}
	for _, tt := range tests {
		for _, v := range versionsIn(t, tt.versions) {
			t.Run("v"+v+"/"+tt.name, func(t *testing.T) {
				got, err := redact.Event(v, []byte(tt.in))
				require.NoError(t, err)
				require.Equal(t, tt.want, string(got))
			})
		}
	}
}

func TestEventEdgeCases(t *testing.T) {
	deep := strings.Repeat("[", 5000) + strings.Repeat("]", 5000)
	tests := []struct {
		name     string
		versions string
		in, want string
	}{{
		name:     "no content: nothing is added",
		versions: "1-12",
		in:       `{"type":"m.room.message","sender":"@a:x","unsigned":{}}`,
		want:     `{"type":"m.room.message","sender":"@a:x"}`,
	}, {
		name:     "a type with no rule strips content",
		versions: "1-12",
		in:       `{"type":"m.room.topic","content":{"topic":"t"}}`,
		want:     `{"type":"m.room.topic","content":{}}`,
	}, {
		// Keys are case-sensitive: "Type" is not type (and is removed).
		name:     "case matters",
		versions: "1-12",
		in:       `{"Type":"m.room.member","type":"m.room.member","content":{"Membership":"x","membership":"join"}}`,
		want:     `{"type":"m.room.member","content":{"membership":"join"}}`,
	}, {
		// Removal applies to every occurrence of a removed key.
		name:     "duplicate removed keys",
		versions: "1-12",
		in:       `{"unsigned":1,"type":"m.room.member","unsigned":2,"content":{"displayname":"a","membership":"join","displayname":"b"}}`,
		want:     `{"type":"m.room.member","content":{"membership":"join"}}`,
	}, {
		// Content is kept whole for m.room.create from v11, without being
		// inspected: its duplicates are the sender's, copied as sent.
		name:     "v11 create content copied whole",
		versions: "11-12",
		in:       `{"type":"m.room.create","content":{"a":1,"a":2,"creator":"@a:x"}}`,
		want:     `{"type":"m.room.create","content":{"a":1,"a":2,"creator":"@a:x"}}`,
	}, {
		// A third_party_invite that is not an object has no signed key to
		// keep: it is removed (as Synapse does).
		name:     "v11 third_party_invite not an object",
		versions: "11-12",
		in:       `{"type":"m.room.member","content":{"membership":"join","third_party_invite":"x"}}`,
		want:     `{"type":"m.room.member","content":{"membership":"join"}}`,
	}, {
		// An object without signed stays, empty: "will only contain the
		// signed key after redaction" (v11.md); Synapse does the same.
		name:     "v11 third_party_invite without signed",
		versions: "11-12",
		in:       `{"type":"m.room.member","content":{"membership":"join","third_party_invite":{"display_name":"x"}}}`,
		want:     `{"type":"m.room.member","content":{"membership":"join","third_party_invite":{}}}`,
	}, {
		name:     "third_party_invite only for m.room.member",
		versions: "11-12",
		in:       `{"type":"m.room.message","content":{"third_party_invite":{"signed":{}}}}`,
		want:     `{"type":"m.room.message","content":{}}`,
	}, {
		// Deep nesting in a removed value is skipped, not descended into.
		name:     "deep removed value",
		versions: "1-12",
		in:       `{"type":"m.room.message","x":` + deep + `,"content":{"y":` + deep + `}}`,
		want:     `{"type":"m.room.message","content":{}}`,
	}, {
		name:     "deep kept value",
		versions: "1-10",
		in:       `{"type":"m.room.power_levels","content":{"users":` + deep + `}}`,
		want:     `{"type":"m.room.power_levels","content":{"users":` + deep + `}}`,
	}, {
		// Brackets and quotes inside strings do not confuse the scanner.
		name:     "brackets in strings",
		versions: "1-12",
		in:       `{"x":"}]\"{[","type":"m.room.history_visibility","content":{"a":"\"}","history_visibility":"}\"{"}}`,
		want:     `{"type":"m.room.history_visibility","content":{"history_visibility":"}\"{"}}`,
	}}
	for _, tt := range tests {
		for _, v := range versionsIn(t, tt.versions) {
			t.Run("v"+v+"/"+tt.name, func(t *testing.T) {
				got, err := redact.Event(v, []byte(tt.in))
				require.NoError(t, err)
				require.Equal(t, tt.want, string(got))
			})
		}
	}
}

func TestEventMalformed(t *testing.T) {
	tests := []struct {
		name     string
		versions string
		in       string
	}{
		{"empty", "1-12", ``},
		{"whitespace", "1-12", " \n"},
		{"not an object", "1-12", `["type"]`},
		{"string", "1-12", `"{}"`},
		{"truncated", "1-12", `{"type":"m.room.message","content":{}`},
		{"trailing garbage", "1-12", `{"type":"m.room.message"}x`},
		{"two objects", "1-12", `{"type":"a"}{"type":"b"}`},
		{"trailing comma", "1-12", `{"type":"m.room.message",}`},
		{"bad escape", "1-12", `{"type":"m.room.message","x":"\q"}`},
		{"too deep", "1-12", `{"type":"m.room.message","x":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`},
		{"no type", "1-12", `{"content":{}}`},
		{"type not a string", "1-12", `{"type":1,"content":{}}`},
		{"type null", "1-12", `{"type":null}`},
		{"content not an object", "1-12", `{"type":"m.room.message","content":"x"}`},
		{"content null", "1-12", `{"type":"m.room.message","content":null}`},
		// A receiver may take either occurrence (or refuse); which one
		// decides what is kept.
		{"duplicate type", "1-12", `{"type":"m.room.member","type":"m.room.message","content":{"membership":"join"}}`},
		{"duplicate type escaped", "1-12", `{"type":"m.room.member","t\u0079pe":"m.room.message","content":{}}`},
		{"duplicate content", "1-12", `{"type":"m.room.message","content":{},"content":{}}`},
		{"duplicate kept top-level key", "1-12", `{"type":"m.room.message","sender":"@a:x","sender":"@b:x"}`},
		{"duplicate origin", "1-10", `{"type":"m.room.message","origin":"a","origin":"b"}`},
		{"duplicate kept content key", "1-12", `{"type":"m.room.member","content":{"membership":"join","membership":"leave"}}`},
		{"duplicate join_authorised_via_users_server", "9-12", `{"type":"m.room.member","content":{"join_authorised_via_users_server":"@a:x","join_authorised_via_users_server":"@b:x"}}`},
		{"duplicate third_party_invite", "11-12", `{"type":"m.room.member","content":{"third_party_invite":{},"third_party_invite":{"signed":{}}}}`},
		{"duplicate third_party_invite non-object", "11-12", `{"type":"m.room.member","content":{"third_party_invite":1,"third_party_invite":{"signed":{}}}}`},
		{"duplicate signed", "11-12", `{"type":"m.room.member","content":{"third_party_invite":{"signed":{},"signed":{"mxid":"@a:x"}}}}`},
	}
	for _, tt := range tests {
		for _, v := range versionsIn(t, tt.versions) {
			t.Run("v"+v+"/"+tt.name, func(t *testing.T) {
				got, err := redact.Event(v, []byte(tt.in))
				require.ErrorIs(t, err, redact.ErrMalformed)
				require.Nil(t, got)
			})
		}
	}
	// A duplicate of a key the version removes is no ambiguity.
	for _, v := range versionsIn(t, "11-12") {
		got, err := redact.Event(v, []byte(`{"type":"m.room.message","origin":"a","origin":"b"}`))
		require.NoError(t, err)
		require.Equal(t, `{"type":"m.room.message"}`, string(got))
	}
}

func TestEventUnknownRoomVersion(t *testing.T) {
	for _, v := range []string{"", "0", "13", "01", " 1", "1 ", "v1", "org.matrix.msc2176", "org.matrix.hydra.11"} {
		t.Run(fmt.Sprintf("%q", v), func(t *testing.T) {
			got, err := redact.Event(v, []byte(`{"type":"m.room.message","content":{}}`))
			require.ErrorIs(t, err, redact.ErrUnknownRoomVersion)
			require.NotErrorIs(t, err, redact.ErrMalformed)
			require.Nil(t, got)
		})
	}
}

// TestHashable: what the reference hash covers is the redacted event
// without its signatures and event_id, every other kept key as Event keeps
// it.
func TestHashable(t *testing.T) {
	for _, v := range roomVersions {
		redacted, err := redact.Event(v, []byte(topLevelIn))
		require.NoError(t, err)
		hashable, err := redact.Hashable(v, []byte(topLevelIn))
		require.NoError(t, err)
		var want, got map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(redacted, &want))
		require.NoError(t, json.Unmarshal(hashable, &got))
		require.Contains(t, want, "signatures", "room version %s", v)
		delete(want, "signatures")
		delete(want, "event_id")
		require.Equal(t, want, got, "room version %s", v)
	}
	_, err := redact.Hashable("10", []byte(`{"type":"m.room.message","content":{},"signatures":{},"signatures":{}}`))
	require.ErrorIs(t, err, redact.ErrMalformed, "a duplicate of a key it leaves out is as ambiguous as any")
}
