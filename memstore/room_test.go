package memstore

import (
	"crypto/ed25519"
	"encoding/json"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fedhistory/fedhistory"
	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/stretchr/testify/require"
)

// Users of the test rooms. Bob's server has a port and Dave's server is the
// same host without one: they are different servers.
const (
	alice   = "@alice:hs1.example"
	bob     = "@bob:other:8448"
	dave    = "@dave:other"
	eve     = "@eve:third.example"
	mallory = "@mallory:evil.example"
)

// testRoom builds a room of real, signed events with gomatrixserverlib. The
// test names every event and refers to prev_events and auth_events by name;
// the room computes depths (one more than the deepest prev) and timestamps
// (one second after the previous event built, so the build order is the
// origin_server_ts order state resolution v2 breaks ties with).
type testRoom struct {
	t       testing.TB
	serial  int64
	version string
	verImpl gomatrixserverlib.IRoomVersion
	roomID  string
	key     ed25519.PrivateKey
	now     time.Time
	events  map[string]gomatrixserverlib.PDU
}

type testEvent struct {
	sender   string
	typ      string
	stateKey *string
	content  any
	prev     []string
	auth     []string
	// redacts is the name of the redacted event, written to the top-level
	// "redacts" key (the pre-v11 place).
	redacts string
}

// roomSerial keeps the test rooms apart: it goes into the room ID and the
// clock, so that no two create events are alike (from room version 3 on,
// identical events would have identical IDs).
var roomSerial atomic.Int64

func newTestRoom(t testing.TB, version string) *testRoom {
	t.Helper()
	serial := roomSerial.Add(1)
	_, key, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	require.NoError(t, err)
	return &testRoom{
		t:       t,
		serial:  serial,
		version: version,
		verImpl: verImpl,
		key:     key,
		now:     time.Date(2025, time.March, 1, 12, 0, 0, 0, time.UTC).Add(time.Duration(serial) * time.Hour),
		events:  make(map[string]gomatrixserverlib.PDU),
	}
}

func ptr(s string) *string { return &s }

// build signs a new event and remembers it under name.
func (r *testRoom) build(name string, ev testEvent) gomatrixserverlib.PDU {
	r.t.Helper()
	require.NotContains(r.t, r.events, name)
	isCreate := ev.typ == spec.MRoomCreate
	proto := &gomatrixserverlib.ProtoEvent{
		SenderID:   ev.sender,
		Type:       ev.typ,
		StateKey:   ev.stateKey,
		PrevEvents: r.ids(ev.prev),
		AuthEvents: r.authIDs(ev.auth),
		Depth:      1,
	}
	if !isCreate || !r.verImpl.DomainlessRoomIDs() {
		proto.RoomID = r.roomID
		if isCreate {
			proto.RoomID = "!v" + r.version + "-" + strconv.FormatInt(r.serial, 10) + ":hs1.example"
		}
	}
	for _, prev := range ev.prev {
		proto.Depth = max(proto.Depth, r.events[prev].Depth()+1)
	}
	if ev.redacts != "" {
		proto.Redacts = r.id(ev.redacts)
	}
	content, err := json.Marshal(ev.content)
	require.NoError(r.t, err)
	proto.Content = content

	r.now = r.now.Add(time.Second)
	_, origin, _ := strings.Cut(ev.sender, ":")
	pdu, err := r.verImpl.NewEventBuilderFromProtoEvent(proto).Build(r.now, spec.ServerName(origin), "ed25519:test", r.key)
	require.NoError(r.t, err, "building %s", name)
	if isCreate {
		r.roomID = pdu.RoomID().String()
	}
	r.events[name] = pdu
	return pdu
}

func (r *testRoom) id(name string) string {
	r.t.Helper()
	pdu, ok := r.events[name]
	require.True(r.t, ok, "no event %q", name)
	return pdu.EventID()
}

func (r *testRoom) ids(names []string) []string {
	ids := make([]string, 0, len(names))
	for _, name := range names {
		ids = append(ids, r.id(name))
	}
	return ids
}

// authIDs leaves the create event out of auth_events from room version 12 on,
// where it is implied by the room ID.
func (r *testRoom) authIDs(names []string) []string {
	ids := make([]string, 0, len(names))
	for _, name := range names {
		if name == "create" && r.verImpl.DomainlessRoomIDs() {
			continue
		}
		ids = append(ids, r.id(name))
	}
	return ids
}

func (r *testRoom) json(name string) []byte {
	r.t.Helper()
	pdu, ok := r.events[name]
	require.True(r.t, ok, "no event %q", name)
	return pdu.JSON()
}

// add builds an event and adds it to store.
func (r *testRoom) add(s *Store, name string, ev testEvent, opts fedhistory.AddOptions) {
	r.t.Helper()
	r.build(name, ev)
	id, err := s.Add(r.version, r.json(name), opts)
	require.NoError(r.t, err, "adding %s", name)
	require.Equal(r.t, r.id(name), id)
}

func (r *testRoom) member(sender, target, membership string, prev, auth []string) testEvent {
	return testEvent{
		sender: sender, typ: spec.MRoomMember, stateKey: ptr(target),
		content: map[string]string{"membership": membership},
		prev:    prev, auth: auth,
	}
}

func (r *testRoom) state(sender, typ string, content any, prev, auth []string) testEvent {
	return testEvent{sender: sender, typ: typ, stateKey: ptr(""), content: content, prev: prev, auth: auth}
}

func (r *testRoom) message(sender, body string, prev, auth []string) testEvent {
	return testEvent{
		sender: sender, typ: "m.room.message",
		content: map[string]string{"msgtype": "m.text", "body": body},
		prev:    prev, auth: auth,
	}
}

func names(n ...string) []string { return n }

// addSetup adds the usual first events of a room: create, the creator's join,
// power levels, public join rules, shared history visibility and a message.
func (r *testRoom) addSetup(s *Store) {
	r.t.Helper()
	createContent := map[string]any{"room_version": r.version}
	if r.version != "11" && r.version != "12" {
		// Room version 11 dropped the creator key: the sender is the creator.
		createContent["creator"] = alice
	}
	r.add(s, "create", testEvent{sender: alice, typ: spec.MRoomCreate, stateKey: ptr(""), content: createContent}, fedhistory.AddOptions{})
	r.add(s, "alice", r.member(alice, alice, "join", names("create"), names("create")), fedhistory.AddOptions{})
	users := map[string]int{alice: 100}
	if r.verImpl.PrivilegedCreators() {
		// From room version 12 creators have infinite power and must not be listed.
		users = map[string]int{}
	}
	r.add(s, "pl", r.state(alice, spec.MRoomPowerLevels, map[string]any{
		"users": users, "users_default": 0, "events_default": 0, "state_default": 50,
		"ban": 50, "kick": 50, "redact": 50, "invite": 0,
	}, names("alice"), names("create", "alice")), fedhistory.AddOptions{})
	r.add(s, "jr", r.state(alice, spec.MRoomJoinRules, map[string]string{"join_rule": "public"},
		names("pl"), names("create", "pl", "alice")), fedhistory.AddOptions{})
	r.add(s, "hv", r.state(alice, spec.MRoomHistoryVisibility, map[string]string{"history_visibility": "shared"},
		names("jr"), names("create", "pl", "alice")), fedhistory.AddOptions{})
	r.add(s, "msg1", r.message(alice, "hello", names("hv"), names("create", "pl", "alice")), fedhistory.AddOptions{})
}
