package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/roomgen"
)

// Room is one reference room: its events, to be added to the store under
// test in order and with their flags, and the users to mark erased.
type Room struct {
	ID, Version string
	// Events are in topological order, every event after its prev_events
	// and auth_events. Rejected and Outlier say how to add each one.
	Events []roomgen.Event
	// ErasedUsers are the users the store must report as erased
	// (ErasureStore).
	ErasedUsers []string
}

// Users of the reference rooms. Carol and Dave share a server that has a
// port; Erin's server is the same host without one, and so a different
// server. Oscar's only event is an outlier, Mallory's are all rejected.
const (
	alice   = "@alice:hs1.example"
	bob     = "@bob:hs2.example"
	carol   = "@carol:hs3.example:8448"
	dave    = "@dave:hs3.example:8448"
	erin    = "@erin:hs3.example"
	oscar   = "@oscar:hs2.example"
	mallory = "@mallory:evil.example"
)

// servers are the servers whose view of every room the suite checks. The
// last one is a prefix of carol's and dave's server ("hs3.example:8448"):
// it has no users, and a store that matches servers by prefix fails on it.
var servers = []string{"hs1.example", "hs2.example", "hs3.example", "hs3.example:8448", "evil.example", "hs3.example:84"}

// allUsers are the users ErasedUsers is asked about, plus one the rooms
// never mention.
var allUsers = []string{alice, bob, carol, dave, erin, oscar, mallory, "@nobody:hs9.example"}

const (
	typeCreate            = "m.room.create"
	typeMember            = "m.room.member"
	typePowerLevels       = "m.room.power_levels"
	typeJoinRules         = "m.room.join_rules"
	typeHistoryVisibility = "m.room.history_visibility"
	typeServerACL         = "m.room.server_acl"
	typeMessage           = "m.room.message"
	typeRedaction         = "m.room.redaction"
)

// serverACL is the content of the v10 room's m.room.server_acl event.
var serverACL = map[string]any{"allow": []string{"*"}, "deny": []string{"evil.example"}, "allow_ip_literals": false}

// fixture is the reference rooms together with everything the suite expects
// a store to answer about them. Nothing in it comes from a store: every
// expectation is stated while the room is built (see roomBuilder).
type fixture struct {
	rooms []*roomFixture
}

// roomFixture is one reference room and its expected answers.
type roomFixture struct {
	name   string // for subtest names: "v10 main"
	room   Room
	events []*eventFixture // in the order of room.Events
	byID   map[string]*eventFixture
	// byLabel finds the events the hand-written checks name.
	byLabel map[string]*eventFixture
	// current is the expected current state of the room.
	current modelState
}

// eventFixture is one event and what the store must say about it.
type eventFixture struct {
	label string
	// want is the metadata Events must return, stated from the EventSpec the
	// event was built from.
	want fedhistory.Event
	// before and after are the room state just before and after the event;
	// nil for an outlier, whose state the store does not know.
	before, after modelState
}

// stateKey addresses one entry of a room's state.
type stateKey struct{ eventType, stateKey string }

// modelState is a room state as the fixture tracks it. A modelState is never
// modified once stored in a fixture.
type modelState map[stateKey]stateEntry

// stateEntry is the event that holds one piece of state.
type stateEntry struct {
	eventID string
	content json.RawMessage
}

// visibility is the VisibilityState of s for server's users.
func (s modelState) visibility(server string) fedhistory.VisibilityState {
	return fedhistory.VisibilityState{
		HistoryVisibility: contentString(s[stateKey{typeHistoryVisibility, ""}].content, "history_visibility"),
		Memberships:       s.memberships(server),
	}
}

// memberships maps the users of server (the part of the user ID after the
// first colon, port included, equals server) to their membership.
func (s modelState) memberships(server string) map[string]string {
	members := map[string]string{}
	for key, entry := range s {
		if key.eventType != typeMember {
			continue
		}
		if _, userServer, _ := strings.Cut(key.stateKey, ":"); userServer == server {
			members[key.stateKey] = contentString(entry.content, "membership")
		}
	}
	return members
}

// currentState is the CurrentState of s for server's users.
func (s modelState) currentState(server string) fedhistory.CurrentState {
	return fedhistory.CurrentState{ServerACL: s[stateKey{typeServerACL, ""}].content, Memberships: s.memberships(server)}
}

func contentString(content json.RawMessage, field string) string {
	var fields map[string]json.RawMessage
	if json.Unmarshal(content, &fields) != nil {
		return ""
	}
	var value string
	if json.Unmarshal(fields[field], &value) != nil {
		return ""
	}
	return value
}

var buildFixture = sync.OnceValues(newFixture)

// referenceFixture returns the fixture. Building it cannot fail unless this
// package is wrong, so a failure panics.
func referenceFixture() *fixture {
	f, err := buildFixture()
	if err != nil {
		panic(fmt.Sprintf("storetest: building the reference rooms: %v", err))
	}
	return f
}

// Rooms returns the reference rooms, a fixed set that a store under test must
// hold (see Run and Load). The rooms are the same, byte for byte, on every
// call and in every build; the returned slices are the caller's to keep.
//
//   - "v10 main" (room version 10): users of four servers join; the history
//     visibility goes from shared to joined; a history visibility change
//     and a ban that fail authorisation (rejected); a redaction (top-level
//     "redacts"); @carol:hs3.example:8448 leaves; an outlier join that a later
//     event names as a prev_event; a server ACL; @erin:hs3.example is erased.
//   - "v11 fork and merge" (version 11): the DAG forks, both branches change
//     carol's membership and the history visibility concurrently, one branch
//     lets dave join; the merge needs state resolution. A redaction with
//     content.redacts; @dave:hs3.example:8448 is erased.
//   - "v12" (version 12, room ID derived from the create event): a fork
//     whose branches change different state, a merge, a redaction.
//   - "v1" (version 1: event IDs chosen by the origin server, prev_events
//     as [ID, hashes] pairs): joins, a redaction, a leave.
func Rooms() []Room {
	f := referenceFixture()
	rooms := make([]Room, len(f.rooms))
	for i, rf := range f.rooms {
		room := rf.room
		room.Events = slices.Clone(room.Events)
		for j := range room.Events {
			room.Events[j].JSON = slices.Clone(room.Events[j].JSON)
		}
		room.ErasedUsers = slices.Clone(room.ErasedUsers)
		rooms[i] = room
	}
	return rooms
}

func newFixture() (*fixture, error) {
	f := &fixture{}
	for _, build := range []func() (*roomFixture, error){mainRoomV10, forkRoomV11, roomV12, roomV1} {
		rf, err := build()
		if err != nil {
			return nil, err
		}
		f.rooms = append(f.rooms, rf)
	}
	return f, nil
}

// Event labels the hand-written checks refer to.
const (
	labelCreate = "create"

	labelMessageBeforeHV   = "message before the history_visibility change"
	labelHVJoined          = "history_visibility becomes joined"
	labelRejectedHV        = "carol's history_visibility change, rejected"
	labelRejectedBan       = "mallory's ban of carol, rejected"
	labelAfterRejected     = "erin's message after the rejected events"
	labelRedactionV10      = "alice redacts bob's message"
	labelBobsMessage       = "bob's message"
	labelCarolLeaves       = "carol leaves"
	labelAfterCarolLeaves  = "bob's message after carol leaves"
	labelOutlier           = "oscar's join, an outlier"
	labelNamesOutlier      = "alice's message naming the outlier as a prev_event"
	labelACL               = "server ACL"
	labelLastMessageV10    = "erin's last message"
	labelBeforeFork        = "message before the fork"
	labelCarolDisplayname  = "carol's displayname change (branch 2)"
	labelCarolLeavesBr1    = "carol leaves (branch 1)"
	labelHVJoinedBr1       = "history_visibility becomes joined (branch 1)"
	labelHVInvitedBr2      = "history_visibility becomes invited (branch 2)"
	labelDaveJoinsBr2      = "dave joins (branch 2)"
	labelBobsMessageBr1    = "bob's message (branch 1)"
	labelMergeV11          = "alice's message merging the branches"
	labelRedactionV11      = "alice redacts bob's message (content.redacts)"
	labelErinsMessageBr2   = "erin's message (branch 2)"
	labelMergeV12          = "alice's message merging the branches (v12)"
	labelRedactionV12      = "alice redacts erin's message (content.redacts)"
	labelBobLeavesV12      = "bob leaves"
	labelRedactionV1       = "alice redacts bob's message (v1)"
	labelCarolLeavesV1     = "carol leaves (v1)"
	labelBobsMessageV1     = "bob's message (v1)"
	labelLastMessageV1     = "alice's last message (v1)"
	labelHVJoinedV12Branch = "history_visibility becomes joined (v12 branch 1)"
)

// mainRoomV10 is the "v10 main" room.
func mainRoomV10() (*roomFixture, error) {
	r := newRoomBuilder("v10 main", "10", 10)
	r.setup()
	r.join("bob joins", bob)
	r.join("carol joins", carol)
	r.join("erin joins", erin)
	r.message(labelMessageBeforeHV, alice, "the history is shared")
	r.historyVisibility(labelHVJoined, alice, "joined")
	bobsMessage := r.message(labelBobsMessage, bob, "hello")
	// Carol's power level (0) is below the 100 the history visibility needs.
	r.event(labelRejectedHV, roomgen.EventSpec{Sender: carol, Type: typeHistoryVisibility, StateKey: ptr(""),
		Content: map[string]string{"history_visibility": "world_readable"}, Rejected: true})
	// Mallory is not in the room.
	r.event(labelRejectedBan, roomgen.EventSpec{Sender: mallory, Type: typeMember, StateKey: ptr(carol),
		Content: map[string]string{"membership": "ban"}, Rejected: true})
	r.message(labelAfterRejected, erin, "carol is still here")
	r.redact(labelRedactionV10, alice, bobsMessage)
	r.leave(labelCarolLeaves, carol)
	r.message(labelAfterCarolLeaves, bob, "carol has left")
	outlier := r.event(labelOutlier, roomgen.EventSpec{Sender: oscar, Type: typeMember, StateKey: ptr(oscar),
		Content: map[string]string{"membership": "join"}, Outlier: true})
	r.event(labelNamesOutlier, roomgen.EventSpec{Sender: alice, Type: typeMessage,
		Content: map[string]string{"msgtype": "m.text", "body": "two prev_events"}, PrevEvents: append(r.head(), outlier)})
	r.state(labelACL, alice, typeServerACL, "", serverACL)
	r.message(labelLastMessageV10, erin, "goodbye")
	r.erase(erin)
	return r.finish()
}

// forkRoomV11 is the "v11 fork and merge" room. The branches interleave in
// time, so that each wins one of the two conflicts: state resolution v2
// orders the conflicted events (none is a power event: carol's leave is her
// own) by mainline position, equal here, then by origin_server_ts, and
// applies them in that order, so the later event of each conflict wins
// (spec: rooms/v2, "Mainline ordering" and "Algorithm").
func forkRoomV11() (*roomFixture, error) {
	r := newRoomBuilder("v11 fork and merge", "11", 11)
	r.setup()
	r.join("bob joins", bob)
	r.join("carol joins", carol)
	r.join("erin joins", erin)
	r.message(labelBeforeFork, alice, "before the fork")
	second := r.fork()

	r.branch(second)
	r.event(labelCarolDisplayname, roomgen.EventSpec{Sender: carol, Type: typeMember, StateKey: ptr(carol),
		Content: map[string]string{"membership": "join", "displayname": "Carol"}})
	r.branch(0)
	r.leave(labelCarolLeavesBr1, carol) // later than the displayname change: wins
	r.historyVisibility(labelHVJoinedBr1, alice, "joined")
	r.branch(second)
	r.historyVisibility(labelHVInvitedBr2, alice, "invited") // later than "joined": wins
	r.join(labelDaveJoinsBr2, dave)
	r.branch(0)
	bobsMessage := r.message(labelBobsMessageBr1, bob, "on branch 1")

	r.merge(map[stateKey]string{
		{typeMember, carol}:         labelCarolLeavesBr1,
		{typeHistoryVisibility, ""}: labelHVInvitedBr2,
	})
	r.message(labelMergeV11, alice, "after the merge")
	r.redact(labelRedactionV11, alice, bobsMessage)
	r.message("dave's message", dave, "hello")
	r.erase(dave)
	return r.finish()
}

// roomV12 is the "v12" room. Its branches change different state, so the
// merged state keeps both changes.
func roomV12() (*roomFixture, error) {
	r := newRoomBuilder("v12", "12", 12)
	r.setup()
	r.join("bob joins", bob)
	r.join("carol joins", carol)
	r.message("message before the fork", alice, "before the fork")
	second := r.fork()
	r.historyVisibility(labelHVJoinedV12Branch, alice, "joined")
	r.branch(second)
	r.join("erin joins (branch 2)", erin)
	erinsMessage := r.message(labelErinsMessageBr2, erin, "on branch 2")
	r.merge(nil)
	r.message(labelMergeV12, alice, "after the merge")
	r.redact(labelRedactionV12, alice, erinsMessage)
	r.leave(labelBobLeavesV12, bob)
	r.message("alice's last message", alice, "bye")
	return r.finish()
}

// roomV1 is the "v1" room.
func roomV1() (*roomFixture, error) {
	r := newRoomBuilder("v1", "1", 1)
	r.setup()
	r.join("bob joins", bob)
	bobsMessage := r.message(labelBobsMessageV1, bob, "hello")
	r.redact(labelRedactionV1, alice, bobsMessage)
	r.join("carol joins", carol)
	r.message("carol's message", carol, "hi")
	r.leave(labelCarolLeavesV1, carol)
	r.message(labelLastMessageV1, alice, "bye")
	return r.finish()
}

// roomBuilder builds a room with roomgen and writes down, for every event,
// what a store must answer about it: the metadata from the EventSpec, and the
// room state before and after it, tracked per branch like roomgen does. At a
// merge, the resolved value of every piece of state that several branches
// changed is stated by the caller; Merge checks roomgen agrees.
//
// The first error sticks; later calls do nothing and finish returns it.
type roomBuilder struct {
	b       *roomgen.Builder
	rf      *roomFixture
	version string
	err     error

	depths   map[string]int64
	branches []modelState
	current  int
	// forkBase is the state where the branches forked.
	forkBase modelState
	erased   []string
}

func newRoomBuilder(name, version string, seed int64) *roomBuilder {
	r := &roomBuilder{
		rf:       &roomFixture{name: name, byID: map[string]*eventFixture{}, byLabel: map[string]*eventFixture{}},
		version:  version,
		depths:   map[string]int64{},
		branches: []modelState{{}},
	}
	r.b, r.err = roomgen.NewBuilder(roomgen.BuilderOptions{Version: version, ServerName: "hs1.example", Creator: alice, Seed: seed})
	if r.err != nil {
		return r
	}
	// NewBuilder has built the create event.
	content := map[string]any{"room_version": version}
	if version == "1" || version == "10" {
		content["creator"] = alice // dropped in room version 11 (spec: rooms/v11)
	}
	r.record(labelCreate, roomgen.EventSpec{Sender: alice, Type: typeCreate, StateKey: ptr(""), Content: content}, "", nil, r.b.Events()[0])
	return r
}

// record writes down the expectations for ev, built from es on prevs;
// redacts is the target of a redaction, wherever es put it.
func (r *roomBuilder) record(label string, es roomgen.EventSpec, redacts string, prevs []string, ev roomgen.Event) {
	if _, dup := r.rf.byLabel[label]; dup {
		r.fail(fmt.Errorf("label %q used twice", label))
		return
	}
	depth := int64(0)
	for _, id := range prevs {
		depth = max(depth, r.depths[id])
	}
	depth++
	if depth != ev.Depth {
		r.fail(fmt.Errorf("%s: roomgen built depth %d, expected %d", label, ev.Depth, depth))
		return
	}
	r.depths[ev.ID] = depth
	if ev.Rejected != es.Rejected || ev.Outlier != es.Outlier {
		r.fail(fmt.Errorf("%s: roomgen lost the rejected/outlier flags", label))
		return
	}
	want := fedhistory.Event{
		ID:         ev.ID,
		RoomID:     r.b.RoomID(),
		Depth:      depth,
		PrevEvents: slices.Clone(prevs),
		Type:       es.Type,
		StateKey:   es.StateKey,
		Sender:     es.Sender,
		Redacts:    redacts,
		JSON:       ev.JSON,
		Rejected:   es.Rejected,
		Outlier:    es.Outlier,
	}
	efx := &eventFixture{label: label, want: want}
	if !es.Outlier {
		before := r.branches[r.current]
		after := before
		if es.StateKey != nil && !es.Rejected {
			content, err := json.Marshal(es.Content)
			if err != nil {
				r.fail(err)
				return
			}
			after = maps.Clone(before)
			after[stateKey{es.Type, *es.StateKey}] = stateEntry{eventID: ev.ID, content: content}
		}
		efx.before, efx.after = before, after
		r.branches[r.current] = after
	}
	r.rf.events = append(r.rf.events, efx)
	r.rf.byID[ev.ID] = efx
	r.rf.byLabel[label] = efx
	r.rf.room.Events = append(r.rf.room.Events, ev)
}

func (r *roomBuilder) fail(err error) {
	if r.err == nil {
		r.err = fmt.Errorf("storetest: room %s: %w", r.rf.name, err)
	}
}

// event builds one event and returns its ID.
func (r *roomBuilder) event(label string, es roomgen.EventSpec) string {
	return r.build(label, es, es.Redacts)
}

func (r *roomBuilder) build(label string, es roomgen.EventSpec, redacts string) string {
	if r.err != nil {
		return ""
	}
	prevs := es.PrevEvents
	if prevs == nil {
		prevs = r.b.Head()
	}
	ev, err := r.b.Event(es)
	if err != nil {
		r.fail(fmt.Errorf("%s: %w", label, err))
		return ""
	}
	r.record(label, es, redacts, prevs, ev)
	return ev.ID
}

func (r *roomBuilder) head() []string {
	if r.err != nil {
		return nil
	}
	return r.b.Head()
}

func (r *roomBuilder) message(label, sender, body string) string {
	return r.event(label, roomgen.EventSpec{Sender: sender, Type: typeMessage, Content: map[string]string{"msgtype": "m.text", "body": body}})
}

func (r *roomBuilder) state(label, sender, eventType, key string, content any) string {
	return r.event(label, roomgen.EventSpec{Sender: sender, Type: eventType, StateKey: ptr(key), Content: content})
}

func (r *roomBuilder) join(label, user string) string {
	return r.state(label, user, typeMember, user, map[string]string{"membership": "join"})
}

func (r *roomBuilder) leave(label, user string) string {
	return r.state(label, user, typeMember, user, map[string]string{"membership": "leave"})
}

func (r *roomBuilder) historyVisibility(label, sender, visibility string) string {
	return r.state(label, sender, typeHistoryVisibility, "", map[string]string{"history_visibility": visibility})
}

// redact redacts target: with the top-level "redacts" key before room
// version 11, with content.redacts from 11 on (spec: rooms/v11).
func (r *roomBuilder) redact(label, sender, target string) string {
	es := roomgen.EventSpec{Sender: sender, Type: typeRedaction, Content: map[string]string{}}
	if r.version == "11" || r.version == "12" {
		es.Content = map[string]string{"redacts": target}
	} else {
		es.Redacts = target
	}
	return r.build(label, es, target)
}

// setup is the usual public room, as roomgen's StandardSetup builds it: the
// creator joins, power levels (history visibility, ACL and power levels need
// 100; the creator has 100, implicitly from room version 12, where creators
// may not be listed), public join rules, shared history visibility.
func (r *roomBuilder) setup() {
	r.join("alice joins", alice)
	users := map[string]int{alice: 100}
	if r.version == "12" {
		users = map[string]int{}
	}
	r.state("power levels", alice, typePowerLevels, "", map[string]any{
		"ban": 50,
		"events": map[string]int{
			typeHistoryVisibility: 100,
			typePowerLevels:       100,
			typeServerACL:         100,
		},
		"events_default": 0,
		"invite":         0,
		"kick":           50,
		"redact":         50,
		"state_default":  50,
		"users":          users,
		"users_default":  0,
	})
	r.state("join rules public", alice, typeJoinRules, "", map[string]string{"join_rule": "public"})
	r.historyVisibility("history_visibility shared", alice, "shared")
}

// fork starts a second branch at the current head; only one fork may be
// open at a time.
func (r *roomBuilder) fork() int {
	if r.err != nil {
		return 0
	}
	if len(r.branches) == 1 {
		r.forkBase = r.branches[0]
	}
	r.branches = append(r.branches, r.branches[r.current])
	return r.b.Fork()
}

func (r *roomBuilder) branch(i int) {
	if r.err != nil {
		return
	}
	if err := r.b.Branch(i); err != nil {
		r.fail(err)
		return
	}
	r.current = i
}

// merge joins the branches. A piece of state changed on one branch only
// keeps that change; for state changed on several, winners names the event
// (by label) whose value the resolution keeps. merge fails when roomgen,
// which runs gomatrixserverlib's state resolution for such conflicts,
// disagrees with winners: the expectations would be wrong.
func (r *roomBuilder) merge(winners map[stateKey]string) {
	if r.err != nil {
		return
	}
	merged := maps.Clone(r.forkBase)
	keys := map[stateKey]bool{}
	for _, state := range r.branches {
		for key := range state {
			keys[key] = true
		}
	}
	for key := range keys {
		var changes []stateEntry
		for _, state := range r.branches {
			entry, ok := state[key]
			if ok && entry.eventID != r.forkBase[key].eventID &&
				!slices.ContainsFunc(changes, func(e stateEntry) bool { return e.eventID == entry.eventID }) {
				changes = append(changes, entry)
			}
		}
		switch {
		case len(changes) == 1:
			merged[key] = changes[0]
		case len(changes) > 1:
			winner, ok := r.rf.byLabel[winners[key]]
			if !ok {
				r.fail(fmt.Errorf("merge: %v changed on several branches and no winner given", key))
				return
			}
			merged[key] = winner.after[key]
		}
	}
	if err := r.b.Merge(); err != nil {
		r.fail(err)
		return
	}
	for key, entry := range merged {
		if got, _ := r.b.StateEvent(key.eventType, key.stateKey); got != entry.eventID {
			r.fail(fmt.Errorf("merge: roomgen resolved %v to %s, the fixture says %s", key, got, entry.eventID))
			return
		}
	}
	r.branches = []modelState{merged}
	r.current = 0
	r.forkBase = nil
}

func (r *roomBuilder) erase(user string) { r.erased = append(r.erased, user) }

func (r *roomBuilder) finish() (*roomFixture, error) {
	if r.err != nil {
		return nil, r.err
	}
	if len(r.branches) != 1 {
		return nil, errors.New("storetest: room " + r.rf.name + " ends with an open fork")
	}
	r.rf.room.ID = r.b.RoomID()
	r.rf.room.Version = r.version
	r.rf.room.ErasedUsers = r.erased
	r.rf.current = r.branches[0]
	return r.rf, nil
}

func ptr[T any](v T) *T { return &v }
