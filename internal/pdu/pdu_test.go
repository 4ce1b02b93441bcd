package pdu

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
)

const (
	alice = "@alice:hs1.example"
	bob   = "@bob:hs2.example"
	carol = "@carol:hs2.example"
)

// event builds a trusted PDU of version from the given fields (room ID,
// auth and prev events are filled in).
func event(t *testing.T, version, fields string) gomatrixserverlib.PDU {
	t.Helper()
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	require.NoError(t, err)
	var js string
	switch version {
	case "1", "2":
		js = `{"event_id":"$` + fmt.Sprint(len(fields)) + `:hs1.example","room_id":"!r:hs1.example","auth_events":[],"prev_events":[],"depth":1,"origin_server_ts":5,"hashes":{"sha256":"x"},"signatures":{},` + fields + `}`
	case "12":
		js = `{"room_id":"!abc","auth_events":[],"prev_events":[],"depth":1,"origin_server_ts":5,"hashes":{"sha256":"x"},"signatures":{},` + fields + `}`
	default:
		js = `{"room_id":"!r:hs1.example","auth_events":[],"prev_events":[],"depth":1,"origin_server_ts":5,"hashes":{"sha256":"x"},"signatures":{},` + fields + `}`
	}
	pdu, err := verImpl.NewEventFromTrustedJSON([]byte(js), false)
	require.NoError(t, err)
	return pdu
}

func TestMayRedact(t *testing.T) {
	createV10 := `"type":"m.room.create","state_key":"","sender":"` + alice + `","content":{"creator":"` + bob + `"}`
	createV11 := `"type":"m.room.create","state_key":"","sender":"` + alice + `","content":{}`
	createV12 := `"type":"m.room.create","state_key":"","sender":"` + alice + `","content":{"additional_creators":["` + carol + `"]}`
	pl := func(body string) string {
		return `"type":"m.room.power_levels","state_key":"","sender":"` + alice + `","content":` + body
	}
	tests := []struct {
		name, version, create, powerLevels, sender string
		want                                       bool
	}{
		{"v10 without power levels: content.creator has 100", "10", createV10, "", bob, true},
		{"v10 without power levels: the create event's sender is not the creator", "10", createV10, "", alice, false},
		{"v11 without power levels: the create event's sender is the creator", "11", createV11, "", alice, true},
		{"v11 without power levels: others have 0", "11", createV11, "", bob, false},
		{"user level at the redact level", "11", createV11, pl(`{"users":{"` + bob + `":50}}`), bob, true},
		{"user level below a raised redact level", "11", createV11, pl(`{"redact":60,"users":{"` + bob + `":50}}`), bob, false},
		{"users_default counts", "10", createV10, pl(`{"users_default":50}`), carol, true},
		{"string levels in old rooms", "1", createV10, pl(`{"redact":"10","users":{"` + bob + `":"20"}}`), bob, true},
		{"v12: a creator outranks any power levels", "12", createV12, pl(`{"redact":100}`), alice, true},
		{"v12: additional creators too", "12", createV12, pl(`{"redact":100}`), carol, true},
		{"v12: others by their level", "12", createV12, pl(`{"redact":100,"users":{"` + bob + `":99}}`), bob, false},
		{"unknown state: nobody", "11", "", "", alice, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var create, powerLevels gomatrixserverlib.PDU
			if tc.create != "" {
				create = event(t, tc.version, tc.create)
			}
			if tc.powerLevels != "" {
				powerLevels = event(t, tc.version, tc.powerLevels)
			}
			require.Equal(t, tc.want, MayRedact(tc.version, create, powerLevels, tc.sender))
		})
	}
}

func TestRedactionApplies(t *testing.T) {
	target := &fedhistory.Event{ID: "$m", RoomID: "!r", Type: "m.room.message", Sender: alice}
	redaction := func(sender string, mod func(*fedhistory.Event)) *fedhistory.Event {
		ev := &fedhistory.Event{ID: "$r", RoomID: "!r", Type: TypeRedaction, Sender: sender, Redacts: "$m"}
		if mod != nil {
			mod(ev)
		}
		return ev
	}
	empty := ""
	create := &fedhistory.Event{ID: "$m", RoomID: "!r", Type: TypeCreate, StateKey: &empty, Sender: alice}
	tests := []struct {
		name      string
		version   string
		redaction *fedhistory.Event
		mayRedact bool
		target    *fedhistory.Event
		want      bool
	}{
		{"v1: an accepted redaction applies", "1", redaction(bob, nil), false, target, true},
		{"v2: likewise", "2", redaction(bob, nil), false, target, true},
		{"v3+: the sender's own server", "10", redaction("@alice2:hs1.example", nil), false, target, true},
		{"v3+: another server without the redact level", "11", redaction(bob, nil), false, target, false},
		{"v3+: another server with the redact level", "12", redaction(bob, nil), true, target, true},
		{"a rejected redaction never", "1", redaction(alice, func(e *fedhistory.Event) { e.Rejected = true }), true, target, false},
		{"another room's event never", "10", redaction(alice, func(e *fedhistory.Event) { e.RoomID = "!other" }), true, target, false},
		{"the create event never", "1", redaction(alice, nil), true, create, false},
		{"another target never", "10", redaction(alice, func(e *fedhistory.Event) { e.Redacts = "$x" }), true, target, false},
		{"servers compared with their port", "10", redaction("@a:hs1.example:8448", nil), false, target, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, RedactionApplies(tc.version, tc.redaction, tc.mayRedact, tc.target))
		})
	}
}

func TestParse(t *testing.T) {
	js := []byte(`{"room_id":"!r:hs1.example","auth_events":["$a"],"prev_events":["$p"],"depth":7,"origin_server_ts":1234,"hashes":{"sha256":"x"},"signatures":{},"type":"m.room.redaction","sender":"` + alice + `","content":{"redacts":"$t"}}`)
	p, err := Parse("11", js)
	require.NoError(t, err)
	require.Equal(t, "!r:hs1.example", p.Event.RoomID)
	require.Equal(t, int64(7), p.Event.Depth)
	require.Equal(t, int64(1234), p.Event.OriginServerTS)
	require.Equal(t, []string{"$p"}, p.Event.PrevEvents)
	require.Equal(t, []string{"$a"}, p.AuthEvents)
	require.Equal(t, "$t", p.Event.Redacts, "room version 11 reads content.redacts")

	_, err = Parse("13", js)
	require.True(t, errors.Is(err, fedhistory.ErrUnsupportedRoomVersion))
	_, err = Parse("10", []byte(`{"room_id": 5}`))
	require.True(t, errors.Is(err, fedhistory.ErrInvalidEvent))
}

// TestParseWithID: a known ID gives the parse Parse gives (in versions 3
// and later without hashing, which only the ID itself would show), and in
// versions 1 and 2, whose events carry their ID, it must be that ID.
func TestParseWithID(t *testing.T) {
	message := `"type":"m.room.message","sender":"` + alice + `","content":{"body":"hi"}`
	for _, version := range []string{"1", "2", "3", "10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			data := event(t, version, message).JSON()
			if version == "12" {
				// Parse insists on a room ID a create event's hash could be.
				data = []byte(strings.Replace(string(data), `"!abc"`, `"!`+strings.Repeat("A", 43)+`"`, 1))
			}
			want, err := Parse(version, data)
			require.NoError(t, err)
			got, err := ParseWithID(version, data, want.Event.ID)
			require.NoError(t, err)
			require.Equal(t, want.Event, got.Event)
			require.Equal(t, want.AuthEvents, got.AuthEvents)

			_, err = ParseWithID(version, data, "$other:hs1.example")
			if version == "1" || version == "2" {
				require.ErrorIs(t, err, fedhistory.ErrInvalidEvent)
				return
			}
			// Taken as given: the caller vouches for it.
			require.NoError(t, err)
		})
	}
}
