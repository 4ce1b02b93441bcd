package roomdump

import (
	"strconv"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/roomgen"
)

// TestEventIDsAsGomatrixserverlib: the reader's event ID is
// gomatrixserverlib's EventID for every event its untrusted parser takes,
// in every room version, also the events where hashing the bytes would
// differ (hashEventID declines those), and the fast path is taken for
// ordinary events of room versions 6 and later.
func TestEventIDsAsGomatrixserverlib(t *testing.T) {
	pl := func(extra, content string) string {
		return `{"auth_events":[],"depth":3,"hashes":{"sha256":"AAAA"},"origin_server_ts":1,"prev_events":[],` +
			`"room_id":"!r:a.example","sender":"@u:a.example","signatures":{},"type":"m.room.power_levels","state_key":""` +
			content + extra + `}`
	}
	member := func(content string) string {
		return `{"auth_events":[],"content":` + content + `,"depth":3,"hashes":{"sha256":"AAAA"},"origin_server_ts":1,` +
			`"prev_events":[],"room_id":"!r:a.example","sender":"@u:a.example","signatures":{},"state_key":"@u:a.example","type":"m.room.member"}`
	}
	cases := []struct {
		name, event string
		fast        bool // hashEventID answers, from room version 6
		slowFrom    int  // and declines from this room version
	}{
		{"plain", pl("", `,"content":{"ban":50}`), true, 0},
		{"keys gomatrixserverlib strips", pl(`,"unsigned":{"x":1},"outlier":true,"destinations":[],"age_ts":5`, `,"content":{"ban":50}`), true, 0},
		{"event_id", pl(`,"event_id":"$foo"`, `,"content":{"ban":50}`), true, 0},
		{"escaped removed key", pl(`,"\u0075nsigned":{"x":1}`, `,"content":{"ban":50}`), true, 0},
		// An escaped key left to gomatrixserverlib: it might equal another.
		{"escaped kept key", pl("", `,"\u0063ontent":{"ban":50}`), false, 0},
		{"big object", pl("", `,"content":{"users":{"@a:x":1,"@b:x":1,"@c:x":1,"@d:x":1,"@e:x":1,"@f:x":1,"@g:x":1,"@h:x":1,"@i:x":1,"@j:x":1,"@k:x":1,"@l:x":1,"@m:x":1,"@n:x":1,"@o:x":1,"@p:x":1,"@q:x":1}}`), false, 0},
		{"duplicate key not kept", pl(`,"foo":1,"foo":2`, `,"content":{"ban":50,"zz":1,"zz":2}`), true, 0},
		{"no content", pl("", ``), false, 0},
		{"float", pl("", `,"content":{"ban":50.0}`), false, 0},
		{"zero float", pl("", `,"content":{"ban":0.0}`), false, 0},
		{"exponent", pl("", `,"content":{"ban":5E1}`), false, 0},
		{"huge integer", pl("", `,"content":{"ban":12345678901234567890}`), false, 0},
		{"float in users", pl("", `,"content":{"users":{"@u:a.example":100.0}}`), false, 0},
		{"duplicate kept content key", pl("", `,"content":{"ban":50,"ban":60}`), false, 0},
		{"duplicate signatures", pl(`,"signatures":{}`, `,"content":{"ban":50}`), false, 0},
		{"duplicate nested key", pl("", `,"content":{"users":{"@u:a.example":50,"@u:a.example":60}}`), false, 0},
		{"case variant of a kept key", pl(`,"Content":{"ban":70}`, `,"content":{"ban":50}`), false, 0},
		{"case variant alone", pl(`,"DEPTH":7`, `,"content":{"ban":50}`), false, 0},
		// Kept, with only its signed, from room version 11.
		{"third_party_invite", member(`{"membership":"invite","third_party_invite":{"signed":{"a":1},"display_name":"x"}}`), true, 11},
	}
	compared := make(map[string]bool) // in a version from 6, or before for onlyBefore6
	// gomatrixserverlib's canonical JSON check refuses these from room
	// version 6.
	onlyBefore6 := map[string]bool{"float": true, "huge integer": true, "float in users": true}
	for v := 3; v <= 12; v++ {
		version := gomatrixserverlib.RoomVersion(strconv.Itoa(v))
		verImpl, err := gomatrixserverlib.GetRoomVersion(version)
		require.NoError(t, err)
		for _, tc := range cases {
			pdu, err := verImpl.NewEventFromUntrustedJSON([]byte(tc.event))
			if err != nil {
				continue // the reader refuses the line
			}
			compared[tc.name] = compared[tc.name] || v >= 6 || onlyBefore6[tc.name]
			require.Equal(t, pdu.EventID(), computeEventID(verImpl, pdu, []byte(tc.event)), "room version %s, %s", version, tc.name)
			_, fast := hashEventID(verImpl, []byte(tc.event))
			require.Equal(t, tc.fast && v >= 6 && (tc.slowFrom == 0 || v < tc.slowFrom), fast, "room version %s, %s: the fast path", version, tc.name)
		}
	}

	// Each case is one gomatrixserverlib takes, where a byte hash could go
	// wrong: none may pass by being refused.
	for _, tc := range cases {
		require.True(t, compared[tc.name], "gomatrixserverlib refuses %s in every room version it is meant for", tc.name)
	}

	// Generated rooms: every event of versions 6 and later takes the fast path.
	for _, version := range []string{"6", "9", "10", "11", "12"} {
		room, err := roomgen.Generate(roomgen.Options{Version: version, Events: 60, ForkEvery: 7, RejectedEvery: 9})
		require.NoError(t, err)
		verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
		require.NoError(t, err)
		for _, ev := range room.Events {
			id, fast := hashEventID(verImpl, ev.JSON)
			require.True(t, fast, "room version %s, %s", version, ev.JSON)
			require.Equal(t, ev.ID, id, "room version %s", version)
		}
	}
}
