package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/roomgen"
)

// Room is one reference room: its events, to be added to the store under
// test in order and with their options, and the users to mark erased.
type Room struct {
	ID, Version string
	// Events are in topological order: every event after its prev_events
	// and auth_events, as far as the room holds them at all (some rooms have
	// gaps: events the store is never given).
	Events []Event
	// ErasedUsers are the users the store must report as erased
	// (ErasureStore).
	ErasedUsers []string
}

// Event is one event of a reference room and how to add it.
type Event struct {
	// ID is the event ID (the reference hash from room version 3 on);
	// JSON the PDU, in the federation format of the room's version.
	ID   string
	JSON json.RawMessage
	// Rejected, Outlier and StateBefore are the fedhistory.AddOptions to
	// add the event with (see Options).
	Rejected, Outlier bool
	StateBefore       []string
}

// Options returns the fedhistory.AddOptions to add ev with.
func (ev Event) Options() fedhistory.AddOptions {
	return fedhistory.AddOptions{Rejected: ev.Rejected, Outlier: ev.Outlier, StateBefore: slices.Clone(ev.StateBefore)}
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
	typeTopic             = "m.room.topic"
	typeMessage           = "m.room.message"
	typeRedaction         = "m.room.redaction"
)

// serverACL is the content of the rooms' m.room.server_acl events.
var serverACL = map[string]any{"allow": []string{"*"}, "deny": []string{"evil.example"}, "allow_ip_literals": false}

// noon is the origin_server_ts of the events that the v12 room sends "at
// the same time": hours after any event's own clock (roomgen advances it by
// a second per event), so they are also out of DAG order with what follows.
var noon = roomgen.BaseTimestamp.Add(12 * time.Hour)

// fixture is the reference rooms together with everything the suite expects
// a store to answer about them. Nothing in it comes from a store: every
// expectation is worked out while the room is built (see roomBuilder), by
// the contract's rules ("State", "Redactions" on fedhistory.EventStore)
// applied to what the store has been given so far.
type fixture struct {
	rooms []*roomFixture
}

// roomFixture is one reference room and its expected answers.
type roomFixture struct {
	name   string // for subtest names: "v10 main"
	room   Room
	events []*eventFixture // in the order of room.Events
	byID   map[string]*eventFixture
	// byLabel finds the events the hand-written checks name, withheld ones
	// included.
	byLabel map[string]*eventFixture
	// withheld are the events built for the room that the store is never
	// given: the gaps.
	withheld []*eventFixture
	// current is the expected current state of the room; nil when the store
	// cannot know it (ErrStateUnknown).
	current modelState
}

// eventFixture is one event and what the store must say about it.
type eventFixture struct {
	label string
	// want is the metadata Events must return, stated from the EventSpec the
	// event was built from, with Redacted as it is once the whole room is
	// loaded.
	want fedhistory.Event
	// before and after are the room state just before and after the event
	// as the store must know it; nil when it cannot (an outlier, an event
	// after a gap), which is not the same as empty.
	before, after modelState
	// authEvents are the event's auth_events, and in room version 12 the
	// create event (see fedhistory.StateStore); auth are those the store
	// held in the room when the event was added: its auth chain links.
	authEvents, auth []string
	// truth is the room state before the event as a server that holds the
	// whole history has it (what roomgen selects auth events from); nil for
	// events built as outliers.
	truth modelState
	// entry is what a state event puts in a state.
	entry stateEntry
	// mayRedact: for a redaction, whether its sender has the power level
	// "redact" in before (false when before is nil).
	mayRedact bool
	// added: the event has been given to the store.
	added bool
}

// stateKey addresses one entry of a room's state.
type stateKey struct{ eventType, stateKey string }

// modelState is a room state as the fixture tracks it. A modelState is never
// modified once stored in a fixture.
type modelState map[stateKey]stateEntry

// stateEntry is the event that holds one piece of state.
type stateEntry struct {
	eventID, sender string
	content         json.RawMessage
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

// ids are the IDs of the events of s.
func (s modelState) ids() []string {
	ids := make([]string, 0, len(s))
	for _, entry := range s {
		ids = append(ids, entry.eventID)
	}
	slices.Sort(ids)
	return ids
}

// sameState reports whether a and b hold the same events (nil, the unknown
// state, equals only nil).
func sameState(a, b modelState) bool {
	if (a == nil) != (b == nil) {
		return false
	}
	return maps.EqualFunc(a, b, func(x, y stateEntry) bool { return x.eventID == y.eventID })
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
//     visibility goes from shared to joined; a history visibility change,
//     a ban and a redaction that fail authorisation (rejected); redactions
//     that apply (by power) and that do not (neither power nor the same
//     server; a server that differs only in its port); an event citing a
//     rejected auth event; @carol:hs3.example:8448 leaves; an outlier join
//     that a later event names as a prev_event, which leaves that event's
//     state unknown, and a redaction in that unknown state; a gap the
//     store never receives, after which StateBefore gives the state back; a
//     server ACL; @erin:hs3.example is erased.
//   - "v11 fork and merge" (version 11): bob is promoted; the DAG forks,
//     both branches change carol's membership and the history visibility
//     concurrently, one sets a topic as bob, the other demotes bob and
//     lets dave join; the merge needs state resolution, which resets bob's
//     topic. Redactions with content.redacts: by power (before and after
//     bob's demotion), by the same server, and one that arrives before its
//     target. @dave:hs3.example:8448 is erased.
//   - "v12" (version 12, room ID derived from the create event): a fork
//     whose branches change different state, a merge; four events with
//     equal origin_server_ts at equal and different depths, and one whose
//     origin_server_ts precedes the room; redactions by the creator, by
//     the same server, by neither, and of the create event.
//   - "v1" (version 1: event IDs chosen by the origin server, prev_events
//     as [ID, hashes] pairs): joins, redactions (of the create event, of an
//     event of the v10 room, a rejected one), a leave, an outlier prev_event
//     with StateBefore, and a gap without it at the end, so that the
//     current state is unknown; a redaction in that unknown state still
//     applies (room versions 1 and 2).
//   - "v11 joined over federation" (version 11): the store joined a room
//     whose history it never saw: the state at the join arrives as
//     outliers, the join with StateBefore, then the room goes on. The
//     history visibility is joined and the room has a server ACL.
func Rooms() []Room {
	f := referenceFixture()
	rooms := make([]Room, len(f.rooms))
	for i, rf := range f.rooms {
		room := rf.room
		room.Events = slices.Clone(room.Events)
		for j, ev := range room.Events {
			room.Events[j].JSON = slices.Clone(ev.JSON)
			room.Events[j].StateBefore = slices.Clone(ev.StateBefore)
		}
		room.ErasedUsers = slices.Clone(room.ErasedUsers)
		rooms[i] = room
	}
	return rooms
}

func newFixture() (*fixture, error) {
	f := &fixture{}
	for _, build := range []func(*fixture) (*roomFixture, error){mainRoomV10, forkRoomV11, roomV12, roomV1, joinedRoomV11} {
		rf, err := build(f)
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

	labelMessageBeforeHV       = "message before the history_visibility change"
	labelHVJoined              = "history_visibility becomes joined"
	labelRejectedHV            = "carol's history_visibility change, rejected"
	labelRejectedBan           = "mallory's ban of carol, rejected"
	labelRejectedRedactionV10  = "alice's redaction of erin's message, rejected"
	labelAfterRejected         = "erin's message after the rejected events"
	labelRedactionV10          = "alice redacts bob's message"
	labelBobsMessage           = "bob's message"
	labelBobRedactsAliceV10    = "bob redacts alice's message"
	labelCarolsMessageV10      = "carol's message"
	labelErinRedactsCarolV10   = "erin redacts carol's message"
	labelCitesRejected         = "erin's message citing the rejected ban as an auth event"
	labelCarolLeaves           = "carol leaves"
	labelAfterCarolLeaves      = "bob's message after carol leaves"
	labelOutlier               = "oscar's join, an outlier"
	labelNamesOutlier          = "alice's message naming the outlier as a prev_event"
	labelRedactionUnknownState = "alice redacts bob's message after carol leaves, in an unknown state"
	labelGapV10                = "bob's message the store never receives"
	labelAfterGapV10           = "alice's message after the gap, given its state"
	labelACL                   = "server ACL"
	labelLastMessageV10        = "erin's last message"

	labelBeforeFork          = "message before the fork"
	labelBobPromoted         = "alice raises bob to power 50"
	labelCarolDisplayname    = "carol's displayname change (branch 2)"
	labelCarolLeavesBr1      = "carol leaves (branch 1)"
	labelHVJoinedBr1         = "history_visibility becomes joined (branch 1)"
	labelBobsTopicBr1        = "bob sets the topic (branch 1)"
	labelBobRedactsBr1       = "bob redacts alice's message before the fork (branch 1)"
	labelErinsLateMessageBr1 = "erin's message that arrives late (branch 1)"
	labelBobDemotedBr2       = "alice demotes bob to power 0 (branch 2)"
	labelHVInvitedBr2        = "history_visibility becomes invited (branch 2)"
	labelDaveJoinsBr2        = "dave joins (branch 2)"
	labelDavesMessageBr2     = "dave's message (branch 2)"
	labelCarolRedactsDave    = "carol redacts dave's message (branch 2)"
	labelErinsMessageV11Br2  = "erin's message (branch 2)"
	labelBobRedactsBr2       = "bob redacts erin's message after his demotion (branch 2)"
	labelRedactsLateMessage  = "alice redacts erin's late message before it arrives (branch 2)"
	labelBobsMessageBr1      = "bob's message (branch 1)"
	labelMergeV11            = "alice's message merging the branches"
	labelRedactionV11        = "alice redacts bob's message (content.redacts)"

	labelHVJoinedV12Branch   = "history_visibility becomes joined (v12 branch 1)"
	labelNoonBr1V12          = "alice's message at noon (v12 branch 1)"
	labelErinsMessageBr2     = "erin's message at noon (v12 branch 2)"
	labelMergeV12            = "alice's message at noon merging the branches (v12)"
	labelRedactionV12        = "alice redacts erin's message (content.redacts)"
	labelDavesMessageV12     = "dave's message (v12)"
	labelCarolRedactsDaveV12 = "carol redacts dave's message (v12)"
	labelCarolsMessageV12    = "carol's message (v12)"
	labelBobRedactsCarolV12  = "bob redacts carol's message (v12)"
	labelRedactsCreateV12    = "alice redacts the create event (v12)"
	labelSkewedClockV12      = "bob's message with a clock hours slow (v12)"
	labelBobLeavesV12        = "bob leaves"

	labelRedactionV1         = "alice redacts bob's message (v1)"
	labelBobsMessageV1       = "bob's message (v1)"
	labelRedactsCreateV1     = "alice redacts the create event (v1)"
	labelRedactsOtherRoomV1  = "alice redacts erin's last message of the v10 room (v1)"
	labelCarolsMessageV1     = "carol's message (v1)"
	labelRejectedRedactionV1 = "alice's redaction of carol's message, rejected (v1)"
	labelCarolLeavesV1       = "carol leaves (v1)"
	labelOutlierV1           = "dave's join, an outlier (v1)"
	labelNamesOutlierV1      = "alice's message naming the outlier, given its state (v1)"
	labelBobsSecondMessageV1 = "bob's second message (v1)"
	labelLastMessageV1       = "alice's last message (v1)"
	labelGapV1               = "bob's message the store never receives (v1)"
	labelAfterGapV1          = "alice's message after the gap (v1)"
	labelRedactionAfterGapV1 = "alice redacts bob's second message after the gap (v1)"

	labelHVJoinedFed       = "history_visibility becomes joined (federation)"
	labelSecretFed         = "carol's secret before the join (federation)"
	labelACLFed            = "server ACL (federation)"
	labelLastSecretFed     = "bob's secret before the join (federation)"
	labelJoinFed           = "alice joins over federation, given the state"
	labelAfterJoinFed      = "alice's message after the join (federation)"
	labelCarolAfterJoinFed = "carol's message after the join (federation)"
)

// mainRoomV10 is the "v10 main" room.
func mainRoomV10(f *fixture) (*roomFixture, error) {
	r := newRoomBuilder(f, "v10 main", "10", 10, alice)
	r.setup()
	r.join("bob joins", bob)
	r.join("carol joins", carol)
	erinJoins := r.join("erin joins", erin)
	aliceMessage := r.message(labelMessageBeforeHV, alice, "the history is shared")
	r.historyVisibility(labelHVJoined, alice, "joined")
	bobsMessage := r.message(labelBobsMessage, bob, "hello")
	erinsEarlierMessage := r.message("erin's first message", erin, "hi")
	// Carol's power level (0) is below the 100 the history visibility needs.
	r.event(labelRejectedHV, roomgen.EventSpec{Sender: carol, Type: typeHistoryVisibility, StateKey: ptr(""),
		Content: map[string]string{"history_visibility": "world_readable"}, Rejected: true})
	// Mallory is not in the room.
	rejectedBan := r.event(labelRejectedBan, roomgen.EventSpec{Sender: mallory, Type: typeMember, StateKey: ptr(carol),
		Content: map[string]string{"membership": "ban"}, Rejected: true})
	// Alice could redact, but her redaction is marked rejected: it redacts
	// nothing.
	rejectedRedaction := r.redactSpec(alice, erinsEarlierMessage)
	rejectedRedaction.Rejected = true
	r.buildAndAdd(labelRejectedRedactionV10, rejectedRedaction, erinsEarlierMessage)
	// Rejected events do not retire their prev_events from the forward
	// extremities (Synapse), so the next event names the last accepted one
	// too: the room keeps a single extremity.
	r.event(labelAfterRejected, roomgen.EventSpec{Sender: erin, Type: typeMessage,
		Content: map[string]string{"msgtype": "m.text", "body": "carol is still here"}, PrevEvents: append(r.head(), erinsEarlierMessage)})
	r.redact(labelRedactionV10, alice, bobsMessage) // applies: alice has 100, redact needs 50
	r.redact(labelBobRedactsAliceV10, bob, aliceMessage)
	carolsMessage := r.message(labelCarolsMessageV10, carol, "hi all")
	r.redact(labelErinRedactsCarolV10, erin, carolsMessage) // hs3.example is not hs3.example:8448
	r.event(labelCitesRejected, roomgen.EventSpec{Sender: erin, Type: typeMessage,
		Content:    map[string]string{"msgtype": "m.text", "body": "an odd auth event"},
		AuthEvents: []string{r.id(labelCreate), r.stateID(typePowerLevels, ""), erinJoins, rejectedBan}})
	r.leave(labelCarolLeaves, carol)
	afterLeave := r.message(labelAfterCarolLeaves, bob, "carol has left")
	outlier := r.event(labelOutlier, roomgen.EventSpec{Sender: oscar, Type: typeMember, StateKey: ptr(oscar),
		Content: map[string]string{"membership": "join"}, Outlier: true})
	// An outlier prev_event: the store does not know the state of this
	// event, nor of the next, whose prev_event it is.
	r.event(labelNamesOutlier, roomgen.EventSpec{Sender: alice, Type: typeMessage,
		Content: map[string]string{"msgtype": "m.text", "body": "two prev_events"}, PrevEvents: append(r.head(), outlier)})
	unknownState := r.redact(labelRedactionUnknownState, alice, afterLeave)
	gap := r.withhold(labelGapV10, roomgen.EventSpec{Sender: bob, Type: typeMessage,
		Content: map[string]string{"msgtype": "m.text", "body": "lost"}})
	r.eventWithState(labelAfterGapV10, roomgen.EventSpec{Sender: alice, Type: typeMessage,
		Content: map[string]string{"msgtype": "m.text", "body": "after the gap"}, PrevEvents: []string{gap, unknownState}}, r.trueStateIDs())
	r.state(labelACL, alice, typeServerACL, "", serverACL)
	r.message(labelLastMessageV10, erin, "goodbye")
	r.erase(erin)
	return r.finish()
}

// forkRoomV11 is the "v11 fork and merge" room. The branches interleave in
// time, so that each wins one of the two membership and visibility
// conflicts: state resolution v2 first applies the power events (the two
// power levels; alice's demotion of bob descends from his promotion, so it
// wins), then orders the other conflicted events by mainline position (the
// power levels event in their auth events: the promotion, except for the
// history visibility change made after the demotion) and origin_server_ts,
// and applies them in that order against the resolved power levels (spec:
// rooms/v2, "Mainline ordering" and "Algorithm"). So carol's later leave
// wins, "invited" wins, and bob's topic, set with the power he has lost,
// fails its auth check: the topic is reset to none.
func forkRoomV11(f *fixture) (*roomFixture, error) {
	r := newRoomBuilder(f, "v11 fork and merge", "11", 11, alice)
	r.setup()
	r.join("bob joins", bob)
	r.join("carol joins", carol)
	r.join("erin joins", erin)
	beforeFork := r.message(labelBeforeFork, alice, "before the fork")
	r.powerLevels(labelBobPromoted, alice, map[string]int{alice: 100, bob: 50})
	second := r.fork()

	r.branch(second)
	r.event(labelCarolDisplayname, roomgen.EventSpec{Sender: carol, Type: typeMember, StateKey: ptr(carol),
		Content: map[string]string{"membership": "join", "displayname": "Carol"}})
	r.branch(0)
	r.leave(labelCarolLeavesBr1, carol) // later than the displayname change: wins
	r.historyVisibility(labelHVJoinedBr1, alice, "joined")
	r.state(labelBobsTopicBr1, bob, typeTopic, "", map[string]string{"topic": "bob's topic"})
	r.redact(labelBobRedactsBr1, bob, beforeFork) // bob has 50 in the state before it
	late := r.build(labelErinsLateMessageBr1, messageSpec(erin, "late"), "")
	r.branch(second)
	r.powerLevels(labelBobDemotedBr2, alice, map[string]int{alice: 100})
	r.historyVisibility(labelHVInvitedBr2, alice, "invited") // later than "joined", after the demotion: wins
	r.join(labelDaveJoinsBr2, dave)
	davesMessage := r.message(labelDavesMessageBr2, dave, "on branch 2")
	r.redact(labelCarolRedactsDave, carol, davesMessage) // carol has 0, but the same server as dave
	erinsMessage := r.message(labelErinsMessageV11Br2, erin, "also on branch 2")
	r.redact(labelBobRedactsBr2, bob, erinsMessage) // bob has 0 now
	r.redact(labelRedactsLateMessage, alice, late.want.ID)
	r.branch(0)
	r.add(late, nil)
	bobsMessage := r.message(labelBobsMessageBr1, bob, "on branch 1")

	r.merge(map[stateKey]string{
		{typeMember, carol}:         labelCarolLeavesBr1,
		{typeHistoryVisibility, ""}: labelHVInvitedBr2,
	}, stateKey{typeTopic, ""})
	r.message(labelMergeV11, alice, "after the merge")
	r.redact(labelRedactionV11, alice, bobsMessage)
	r.message("dave's message", dave, "hello")
	r.erase(dave)
	return r.finish()
}

// roomV12 is the "v12" room. Its branches change different state, so the
// merged state keeps both changes.
func roomV12(f *fixture) (*roomFixture, error) {
	r := newRoomBuilder(f, "v12", "12", 12, alice)
	r.setup()
	r.join("bob joins", bob)
	r.join("carol joins", carol)
	r.join("dave joins", dave)
	r.message("message before the fork", alice, "before the fork")
	second := r.fork()
	r.historyVisibility(labelHVJoinedV12Branch, alice, "joined")
	r.messageAt(labelNoonBr1V12, alice, "at noon", noon)
	r.branch(second)
	r.join("erin joins (branch 2)", erin)
	// As deep as alice's noon message, and sent at the same time.
	erinsMessage := r.messageAt(labelErinsMessageBr2, erin, "at noon too", noon)
	r.merge(nil)
	r.messageAt(labelMergeV12, alice, "still noon", noon) // one deeper
	// Deeper still, and still noon; the creator is above every power level.
	redaction := r.redactSpec(alice, erinsMessage)
	redaction.OriginServerTS = noon
	r.buildAndAdd(labelRedactionV12, redaction, erinsMessage)
	davesMessage := r.message(labelDavesMessageV12, dave, "hello")
	r.redact(labelCarolRedactsDaveV12, carol, davesMessage)
	carolsMessage := r.message(labelCarolsMessageV12, carol, "hi")
	r.redact(labelBobRedactsCarolV12, bob, carolsMessage)
	r.redact(labelRedactsCreateV12, alice, r.id(labelCreate))
	r.messageAt(labelSkewedClockV12, bob, "is it morning?", roomgen.BaseTimestamp.Add(-time.Hour))
	r.leave(labelBobLeavesV12, bob)
	r.message("alice's last message", alice, "bye")
	return r.finish()
}

// roomV1 is the "v1" room.
func roomV1(f *fixture) (*roomFixture, error) {
	r := newRoomBuilder(f, "v1", "1", 1, alice)
	r.setup()
	r.join("bob joins", bob)
	bobsMessage := r.message(labelBobsMessageV1, bob, "hello")
	r.redact(labelRedactionV1, alice, bobsMessage)
	r.redact(labelRedactsCreateV1, alice, r.id(labelCreate))
	r.redact(labelRedactsOtherRoomV1, alice, f.room("v10 main").byLabel[labelLastMessageV10].want.ID)
	r.join("carol joins", carol)
	carolsMessage := r.message(labelCarolsMessageV1, carol, "hi")
	rejected := r.redactSpec(alice, carolsMessage)
	rejected.Rejected = true
	r.buildAndAdd(labelRejectedRedactionV1, rejected, carolsMessage)
	r.event(labelCarolLeavesV1, roomgen.EventSpec{Sender: carol, Type: typeMember, StateKey: ptr(carol),
		Content: map[string]string{"membership": "leave"}, PrevEvents: append(r.head(), carolsMessage)})
	outlier := r.event(labelOutlierV1, roomgen.EventSpec{Sender: dave, Type: typeMember, StateKey: ptr(dave),
		Content: map[string]string{"membership": "join"}, Outlier: true})
	r.eventWithState(labelNamesOutlierV1, roomgen.EventSpec{Sender: alice, Type: typeMessage,
		Content: map[string]string{"msgtype": "m.text", "body": "two prev_events"}, PrevEvents: append(r.head(), outlier)}, r.trueStateIDs())
	bobsSecond := r.message(labelBobsSecondMessageV1, bob, "me again")
	r.message(labelLastMessageV1, alice, "bye")
	// A gap at the end: the store never learns the state after it, so the
	// current state (which needs the state after every forward extremity)
	// is unknown.
	r.withhold(labelGapV1, messageSpec(bob, "lost"))
	r.message(labelAfterGapV1, alice, "after a gap")
	// In room versions 1 and 2 the auth rules checked the redaction, and it
	// applies whatever the store knows of the state.
	r.redact(labelRedactionAfterGapV1, alice, bobsSecond)
	return r.finish()
}

// joinedRoomV11 is the "v11 joined over federation" room: bob of
// hs2.example created it and talked with carol; the store's server joined
// (as alice) much later, through a send_join that returned the state at the
// join. The store holds none of the history before the join.
func joinedRoomV11(f *fixture) (*roomFixture, error) {
	r := newRoomBuilder(f, "v11 joined over federation", "11", 13, bob)
	r.holdBack = true
	r.setup()
	r.join("carol joins (federation)", carol)
	r.historyVisibility(labelHVJoinedFed, bob, "joined")
	r.message(labelSecretFed, carol, "only for those who were here")
	r.state(labelACLFed, bob, typeServerACL, "", serverACL)
	r.message(labelLastSecretFed, bob, "me too")
	r.holdBack = false
	// send_join's answer: the state before the join, which is closed under
	// auth_events here, arrives as outliers, in topological order.
	state := r.trueStateIDs()
	for _, efx := range r.built {
		if slices.Contains(state, efx.want.ID) {
			r.addAs(efx, true, nil)
		}
	}
	r.eventWithState(labelJoinFed, roomgen.EventSpec{Sender: alice, Type: typeMember, StateKey: ptr(alice),
		Content: map[string]string{"membership": "join"}}, state)
	r.message(labelAfterJoinFed, alice, "hello")
	r.message(labelCarolAfterJoinFed, carol, "welcome")
	return r.finish()
}

// roomBuilder builds a room with roomgen and writes down, for every event,
// what a store must answer about it.
//
// It keeps two views of the room. The truth is the state on each branch as
// a server holding the whole history has it, tracked as roomgen tracks it;
// at a merge, the caller states the resolved value of every piece of state
// that several branches changed, or that the resolution resets, and merge
// checks that roomgen (gomatrixserverlib's state resolution) agrees. The
// store's view is what the contract's rules give for the events the store
// has been given so far, in order: that is what the suite expects; where
// the store can know a state, it must be the truth, which add checks.
//
// Building and adding are separate steps, so that an event can be built
// and added later (after a redaction of it), added as an outlier (the state
// a join returns), or never added (a gap).
//
// The first error sticks; later calls do nothing and finish returns it.
type roomBuilder struct {
	f       *fixture // the rooms built before
	b       *roomgen.Builder
	rf      *roomFixture
	version string
	creator string
	err     error

	// clock mirrors roomgen's: each event built is a second after the
	// previous one, unless the EventSpec gives its origin_server_ts.
	clock  time.Time
	depths map[string]int64
	// built are the events built, in order, added or not.
	built []*eventFixture
	// holdBack: events built now are not added (see joinedRoomV11).
	holdBack bool

	branches []modelState
	current  int
	// forkBase is the state where the branches forked.
	forkBase modelState
	// resolutions are the merges stated so far.
	resolutions []resolution
	erased      []string
}

// resolution is a stated state resolution: of the states inputs, the
// result.
type resolution struct {
	inputs []modelState
	result modelState
}

func newRoomBuilder(f *fixture, name, version string, seed int64, creator string) *roomBuilder {
	r := &roomBuilder{
		f:        f,
		rf:       &roomFixture{name: name, byID: map[string]*eventFixture{}, byLabel: map[string]*eventFixture{}},
		version:  version,
		creator:  creator,
		clock:    roomgen.BaseTimestamp,
		depths:   map[string]int64{},
		branches: []modelState{{}},
	}
	_, server, _ := strings.Cut(creator, ":")
	r.b, r.err = roomgen.NewBuilder(roomgen.BuilderOptions{Version: version, ServerName: server, Creator: creator, Seed: seed})
	if r.err != nil {
		return r
	}
	// NewBuilder has built the create event.
	content := map[string]any{"room_version": version}
	if version == "1" || version == "10" {
		content["creator"] = creator // dropped in room version 11 (spec: rooms/v11)
	}
	es := roomgen.EventSpec{Sender: creator, Type: typeCreate, StateKey: ptr(""), Content: content}
	r.record(labelCreate, es, "", nil, r.b.Events()[0]) // added by setup
	return r
}

// record writes down what is known of ev, built from es on prevs, before
// it is added; redacts is the target of a redaction, wherever es put it.
func (r *roomBuilder) record(label string, es roomgen.EventSpec, redacts string, prevs []string, ev roomgen.Event) *eventFixture {
	if _, dup := r.rf.byLabel[label]; dup {
		r.fail(fmt.Errorf("label %q used twice", label))
		return nil
	}
	depth := int64(0)
	for _, id := range prevs {
		depth = max(depth, r.depths[id])
	}
	depth++
	if depth != ev.Depth {
		r.fail(fmt.Errorf("%s: roomgen built depth %d, expected %d", label, ev.Depth, depth))
		return nil
	}
	r.depths[ev.ID] = depth
	ts := r.clock
	if !es.OriginServerTS.IsZero() {
		ts = es.OriginServerTS
	}
	r.clock = r.clock.Add(time.Second)
	var fields struct {
		OriginServerTS int64           `json:"origin_server_ts"`
		AuthEvents     json.RawMessage `json:"auth_events"`
	}
	if err := json.Unmarshal(ev.JSON, &fields); err != nil {
		r.fail(fmt.Errorf("%s: %w", label, err))
		return nil
	}
	if fields.OriginServerTS != ts.UnixMilli() {
		r.fail(fmt.Errorf("%s: roomgen built origin_server_ts %d, expected %d", label, fields.OriginServerTS, ts.UnixMilli()))
		return nil
	}
	authEvents, err := r.authEventIDs(fields.AuthEvents, es.Type)
	if err != nil {
		r.fail(fmt.Errorf("%s: %w", label, err))
		return nil
	}
	if ev.Rejected != es.Rejected || ev.Outlier != es.Outlier {
		r.fail(fmt.Errorf("%s: roomgen lost the rejected/outlier flags", label))
		return nil
	}
	efx := &eventFixture{label: label, authEvents: authEvents, want: fedhistory.Event{
		ID:             ev.ID,
		RoomID:         r.b.RoomID(),
		Depth:          depth,
		OriginServerTS: ts.UnixMilli(),
		PrevEvents:     slices.Clone(prevs),
		Type:           es.Type,
		StateKey:       es.StateKey,
		Sender:         es.Sender,
		Redacts:        redacts,
		JSON:           ev.JSON,
		Rejected:       es.Rejected,
		Outlier:        es.Outlier,
	}}
	if es.StateKey != nil {
		content, err := json.Marshal(es.Content)
		if err != nil {
			r.fail(err)
			return nil
		}
		efx.entry = stateEntry{eventID: ev.ID, sender: es.Sender, content: content}
	}
	if !es.Outlier {
		before := r.branches[r.current]
		after := before
		if es.StateKey != nil && !es.Rejected {
			after = maps.Clone(before)
			after[stateKey{es.Type, *es.StateKey}] = efx.entry
		}
		efx.truth = before
		r.branches[r.current] = after
	}
	r.rf.byLabel[label] = efx
	r.built = append(r.built, efx)
	return efx
}

// authEventIDs reads the auth_events of a built event: event IDs, or from
// room version 1 to 2 [ID, hashes] pairs; in room version 12 every event
// but the create event has the create event as an auth event, which the
// room ID names (as Synapse and gomatrixserverlib read the spec; see
// fedhistory.StateStore).
func (r *roomBuilder) authEventIDs(raw json.RawMessage, eventType string) ([]string, error) {
	var ids []string
	if r.version == "1" || r.version == "2" {
		var pairs [][]json.RawMessage
		if err := json.Unmarshal(raw, &pairs); err != nil {
			return nil, err
		}
		for _, pair := range pairs {
			var id string
			if len(pair) != 2 || json.Unmarshal(pair[0], &id) != nil {
				return nil, fmt.Errorf("auth_events entry %s is no [ID, hashes] pair", pair)
			}
			ids = append(ids, id)
		}
	} else if err := json.Unmarshal(raw, &ids); err != nil {
		return nil, err
	}
	if r.version == "12" && eventType != typeCreate {
		ids = append([]string{"$" + strings.TrimPrefix(r.b.RoomID(), "!")}, ids...)
	}
	return ids, nil
}

// add gives efx to the store, with AddOptions.StateBefore stateBefore (nil:
// none), and works out what the store must then know about it.
func (r *roomBuilder) add(efx *eventFixture, stateBefore []string) {
	r.addAs(efx, efx.want.Outlier, stateBefore)
}

// addAs is add, the event given as an outlier or not.
func (r *roomBuilder) addAs(efx *eventFixture, outlier bool, stateBefore []string) {
	if r.err != nil {
		return
	}
	if efx.added {
		r.fail(fmt.Errorf("%s added twice", efx.label))
		return
	}
	if efx.want.Outlier && !outlier {
		r.fail(fmt.Errorf("%s was built as an outlier", efx.label))
		return
	}
	efx.want.Outlier = outlier
	for _, id := range efx.authEvents {
		if auth, ok := r.rf.byID[id]; ok && !slices.Contains(efx.auth, auth.want.ID) {
			efx.auth = append(efx.auth, auth.want.ID)
		}
	}
	before, err := r.stateBefore(efx, stateBefore)
	if err != nil {
		r.fail(fmt.Errorf("%s: %w", efx.label, err))
		return
	}
	if before != nil && !sameState(before, efx.truth) {
		r.fail(fmt.Errorf("%s: the store would know a state that is not the room's: %v, not %v", efx.label, before.ids(), efx.truth.ids()))
		return
	}
	efx.before, efx.after = before, before
	if before != nil && efx.want.StateKey != nil && !efx.want.Rejected {
		efx.after = maps.Clone(before)
		key := stateKey{efx.want.Type, *efx.want.StateKey}
		efx.after[key] = efx.entry
	}
	if efx.want.Type == typeRedaction {
		efx.mayRedact = r.mayRedact(before, efx.want.Sender)
	}
	efx.added = true
	r.rf.events = append(r.rf.events, efx)
	r.rf.byID[efx.want.ID] = efx
	r.rf.room.Events = append(r.rf.room.Events, Event{
		ID: efx.want.ID, JSON: efx.want.JSON, Rejected: efx.want.Rejected, Outlier: outlier, StateBefore: slices.Clone(stateBefore),
	})
}

// stateBefore is the state before efx that the store knows, by "State" on
// fedhistory.EventStore; nil when it cannot know it.
func (r *roomBuilder) stateBefore(efx *eventFixture, given []string) (modelState, error) {
	switch {
	case given != nil && efx.want.Outlier:
		return nil, errors.New("StateBefore given for an outlier")
	case given != nil:
		state := modelState{}
		for _, id := range given {
			entry, key, ok := r.entryOf(id)
			if !ok {
				return nil, fmt.Errorf("StateBefore names %s, which the store does not hold as a state event", id)
			}
			if _, dup := state[key]; dup {
				return nil, fmt.Errorf("StateBefore names two events for %v", key)
			}
			state[key] = entry
		}
		return state, nil
	case efx.want.Outlier:
		return nil, nil
	case efx.want.Type == typeCreate && efx.want.StateKey != nil && *efx.want.StateKey == "":
		return modelState{}, nil
	case len(efx.want.PrevEvents) == 0:
		return nil, nil
	}
	var states []modelState
	for _, id := range efx.want.PrevEvents {
		prev, held := r.rf.byID[id]
		if !held || prev.want.Outlier || prev.after == nil {
			return nil, nil // a gap: not held, an outlier, or its own state unknown
		}
		if !slices.ContainsFunc(states, func(s modelState) bool { return sameState(s, prev.after) }) {
			states = append(states, prev.after)
		}
	}
	if len(states) == 1 {
		return states[0], nil
	}
	return r.resolved(states)
}

// entryOf is the state entry of a state event the store holds, rejected
// ones excluded, outliers included.
func (r *roomBuilder) entryOf(id string) (stateEntry, stateKey, bool) {
	efx, ok := r.rf.byID[id]
	if !ok || efx.want.StateKey == nil || efx.want.Rejected {
		return stateEntry{}, stateKey{}, false
	}
	return efx.entry, stateKey{efx.want.Type, *efx.want.StateKey}, true
}

// resolved is the stated resolution of states.
func (r *roomBuilder) resolved(states []modelState) (modelState, error) {
	for _, res := range r.resolutions {
		if len(res.inputs) == len(states) && !slices.ContainsFunc(states, func(s modelState) bool {
			return !slices.ContainsFunc(res.inputs, func(in modelState) bool { return sameState(in, s) })
		}) {
			return res.result, nil
		}
	}
	return nil, errors.New("no merge states how these states resolve")
}

// mayRedact reports whether sender has the power level "redact" in state,
// by the room version's auth rules: the redact level of the power levels
// (50 by default) against the sender's level (users, else users_default,
// 0 by default); without power levels the creator has 100 and everybody
// else 0; in room version 12 the creators (the create event's sender and
// content.additional_creators) are above every level. Never in a state the
// store does not know (see "Redactions" on fedhistory.EventStore).
func (r *roomBuilder) mayRedact(state modelState, sender string) bool {
	if state == nil {
		return false
	}
	create, ok := state[stateKey{typeCreate, ""}]
	if !ok {
		return false
	}
	var createContent struct {
		Creator            string   `json:"creator"`
		AdditionalCreators []string `json:"additional_creators"`
	}
	if json.Unmarshal(create.content, &createContent) != nil {
		return false
	}
	if r.version == "12" && (sender == create.sender || slices.Contains(createContent.AdditionalCreators, sender)) {
		return true
	}
	pl, ok := state[stateKey{typePowerLevels, ""}]
	if !ok {
		creator := createContent.Creator
		if r.version == "11" || r.version == "12" {
			creator = create.sender
		}
		return sender == creator // 100 against the default 50
	}
	levels := struct {
		Users        map[string]int `json:"users"`
		UsersDefault int            `json:"users_default"`
		Redact       *int           `json:"redact"`
	}{}
	if json.Unmarshal(pl.content, &levels) != nil {
		return false
	}
	redact := 50
	if levels.Redact != nil {
		redact = *levels.Redact
	}
	level, listed := levels.Users[sender]
	if !listed {
		level = levels.UsersDefault
	}
	return level >= redact
}

func (r *roomBuilder) fail(err error) {
	if r.err == nil {
		r.err = fmt.Errorf("storetest: room %s: %w", r.rf.name, err)
	}
}

// build builds one event without adding it; redacts is the target of a
// redaction, wherever es put it.
func (r *roomBuilder) build(label string, es roomgen.EventSpec, redacts string) *eventFixture {
	if r.err != nil {
		return nil
	}
	prevs := es.PrevEvents
	if prevs == nil {
		prevs = r.b.Head()
	}
	ev, err := r.b.Event(es)
	if err != nil {
		r.fail(fmt.Errorf("%s: %w", label, err))
		return nil
	}
	return r.record(label, es, redacts, prevs, ev)
}

// buildAndAdd builds one event and adds it, unless the builder holds events
// back; it returns the event's ID.
func (r *roomBuilder) buildAndAdd(label string, es roomgen.EventSpec, redacts string) string {
	efx := r.build(label, es, redacts)
	if efx == nil {
		return ""
	}
	if !r.holdBack {
		r.add(efx, nil)
	}
	return efx.want.ID
}

// event builds one event and adds it.
func (r *roomBuilder) event(label string, es roomgen.EventSpec) string {
	return r.buildAndAdd(label, es, es.Redacts)
}

// eventWithState builds one event and adds it with StateBefore stateBefore.
func (r *roomBuilder) eventWithState(label string, es roomgen.EventSpec, stateBefore []string) string {
	efx := r.build(label, es, es.Redacts)
	if efx == nil {
		return ""
	}
	r.add(efx, stateBefore)
	return efx.want.ID
}

// withhold builds one event that the store is never given.
func (r *roomBuilder) withhold(label string, es roomgen.EventSpec) string {
	efx := r.build(label, es, es.Redacts)
	if efx == nil {
		return ""
	}
	return efx.want.ID
}

// trueStateIDs are the IDs of the true state on the current branch: what a
// homeserver learns from send_join or /state_ids.
func (r *roomBuilder) trueStateIDs() []string {
	if r.err != nil {
		return nil
	}
	return r.branches[r.current].ids()
}

// id is the ID of the event labelled label.
func (r *roomBuilder) id(label string) string {
	if efx, ok := r.rf.byLabel[label]; ok {
		return efx.want.ID
	}
	r.fail(fmt.Errorf("no event %q", label))
	return ""
}

// stateID is the ID of the event holding (eventType, key) in the true state
// on the current branch.
func (r *roomBuilder) stateID(eventType, key string) string {
	if r.err != nil {
		return ""
	}
	return r.branches[r.current][stateKey{eventType, key}].eventID
}

func (r *roomBuilder) head() []string {
	if r.err != nil {
		return nil
	}
	return r.b.Head()
}

func messageSpec(sender, body string) roomgen.EventSpec {
	return roomgen.EventSpec{Sender: sender, Type: typeMessage, Content: map[string]string{"msgtype": "m.text", "body": body}}
}

func (r *roomBuilder) message(label, sender, body string) string {
	return r.event(label, messageSpec(sender, body))
}

// messageAt sends a message with origin_server_ts at.
func (r *roomBuilder) messageAt(label, sender, body string, at time.Time) string {
	es := messageSpec(sender, body)
	es.OriginServerTS = at
	return r.event(label, es)
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

// redactSpec is a redaction of target: with the top-level "redacts" key
// before room version 11, with content.redacts from 11 on (spec:
// rooms/v11).
func (r *roomBuilder) redactSpec(sender, target string) roomgen.EventSpec {
	es := roomgen.EventSpec{Sender: sender, Type: typeRedaction, Content: map[string]string{}}
	if r.version == "11" || r.version == "12" {
		es.Content = map[string]string{"redacts": target}
	} else {
		es.Redacts = target
	}
	return es
}

func (r *roomBuilder) redact(label, sender, target string) string {
	return r.buildAndAdd(label, r.redactSpec(sender, target), target)
}

// powerLevels sends the room's power levels with users; everything else as
// in setup: the history visibility, the ACL, the topic's state default and
// the power levels need 100, 50 and 100, redactions 50.
func (r *roomBuilder) powerLevels(label, sender string, users map[string]int) string {
	return r.state(label, sender, typePowerLevels, "", map[string]any{
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
}

// setup is the usual public room, as roomgen's StandardSetup builds it: the
// creator joins, power levels (the creator has 100, implicitly from room
// version 12, where creators may not be listed), public join rules, shared
// history visibility.
func (r *roomBuilder) setup() {
	if create := r.rf.byLabel[labelCreate]; create != nil && !r.holdBack {
		r.add(create, nil)
	}
	r.join(r.creator[1:strings.Index(r.creator, ":")]+" joins", r.creator)
	users := map[string]int{r.creator: 100}
	if r.version == "12" {
		users = map[string]int{}
	}
	r.powerLevels("power levels", r.creator, users)
	r.state("join rules public", r.creator, typeJoinRules, "", map[string]string{"join_rule": "public"})
	r.historyVisibility("history_visibility shared", r.creator, "shared")
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
// keeps that change, unless it is among reset: then the resolution drops
// it (the event that changed it fails its auth check against the resolved
// power levels) and it takes its value from the fork again, here none. For
// state changed on several branches, winners names the event (by label)
// whose value the resolution keeps. merge fails when roomgen, which runs
// gomatrixserverlib's state resolution when branches conflict, disagrees:
// the expectations would be wrong.
func (r *roomBuilder) merge(winners map[stateKey]string, reset ...stateKey) {
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
		case slices.Contains(reset, key):
			if _, ok := r.forkBase[key]; ok {
				r.fail(fmt.Errorf("merge: %v is reset, but the fork had a value for it", key))
				return
			}
			delete(merged, key)
		case len(changes) == 1:
			merged[key] = changes[0]
		case len(changes) > 1:
			winner, ok := r.rf.byLabel[winners[key]]
			if !ok {
				r.fail(fmt.Errorf("merge: %v changed on several branches and no winner given", key))
				return
			}
			merged[key] = winner.entry
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
	for _, key := range reset {
		if got, ok := r.b.StateEvent(key.eventType, key.stateKey); ok {
			r.fail(fmt.Errorf("merge: roomgen resolved %v to %s, the fixture says it is reset", key, got))
			return
		}
	}
	var inputs []modelState
	for _, state := range r.branches {
		if !slices.ContainsFunc(inputs, func(in modelState) bool { return sameState(in, state) }) {
			inputs = append(inputs, state)
		}
	}
	r.resolutions = append(r.resolutions, resolution{inputs: inputs, result: merged})
	r.branches = []modelState{merged}
	r.current = 0
	r.forkBase = nil
}

func (r *roomBuilder) erase(user string) { r.erased = append(r.erased, user) }

// finish works out what depends on the whole room: which redactions apply,
// the current state, the gaps.
func (r *roomBuilder) finish() (*roomFixture, error) {
	if r.err != nil {
		return nil, r.err
	}
	if len(r.branches) != 1 {
		return nil, errors.New("storetest: room " + r.rf.name + " ends with an open fork")
	}
	for _, efx := range r.built {
		if !efx.added {
			r.rf.withheld = append(r.rf.withheld, efx)
		}
	}
	// Topological order: the contract allows events that are never added,
	// not events added after their children.
	for i, efx := range r.rf.events {
		for _, id := range slices.Concat(efx.want.PrevEvents, efx.authEvents) {
			if j := slices.IndexFunc(r.rf.events, func(other *eventFixture) bool { return other.want.ID == id }); j >= i {
				return nil, fmt.Errorf("storetest: room %s: %s is added before %s, which it refers to", r.rf.name, efx.label, r.rf.events[j].label)
			}
		}
	}
	r.applyRedactions()
	var err error
	if r.rf.current, err = r.currentState(); err != nil {
		return nil, fmt.Errorf("storetest: room %s: %w", r.rf.name, err)
	}
	r.rf.room.ID = r.b.RoomID()
	r.rf.room.Version = r.version
	r.rf.room.ErasedUsers = r.erased
	return r.rf, nil
}

// applyRedactions marks the events the room's redactions redact, by
// "Redactions" on fedhistory.EventStore, whichever arrived first: a
// redaction applies when it is not rejected, its target is an event of the
// same room other than the create event, and the room version is 1 or 2,
// or its sender may redact in the state before it, or is of the target's
// sender's server.
func (r *roomBuilder) applyRedactions() {
	for _, red := range r.rf.events {
		if red.want.Type != typeRedaction || red.want.Rejected || red.want.Redacts == red.want.ID {
			continue
		}
		target, ok := r.rf.byID[red.want.Redacts]
		if !ok || (target.want.Type == typeCreate && target.want.StateKey != nil && *target.want.StateKey == "") {
			continue
		}
		if r.version == "1" || r.version == "2" || red.mayRedact || serverOf(red.want.Sender) == serverOf(target.want.Sender) {
			target.want.Redacted = true
		}
	}
}

// serverOf is the server of a user ID: everything after the first colon,
// port included.
func serverOf(userID string) string {
	_, server, _ := strings.Cut(userID, ":")
	return server
}

// currentState is the state after the forward extremities: the events
// neither outliers nor rejected that no such event names as a prev_event;
// nil when the state after one of them is unknown, or there is none.
func (r *roomBuilder) currentState() (modelState, error) {
	named := map[string]bool{}
	for _, efx := range r.rf.events {
		if !efx.want.Outlier && !efx.want.Rejected {
			for _, prev := range efx.want.PrevEvents {
				named[prev] = true
			}
		}
	}
	var states []modelState
	for _, efx := range r.rf.events {
		if efx.want.Outlier || efx.want.Rejected || named[efx.want.ID] {
			continue
		}
		if efx.after == nil {
			return nil, nil
		}
		if !slices.ContainsFunc(states, func(s modelState) bool { return sameState(s, efx.after) }) {
			states = append(states, efx.after)
		}
	}
	switch len(states) {
	case 0:
		return nil, nil
	case 1:
		return states[0], nil
	default:
		return r.resolved(states)
	}
}

// room returns the room named name, built before.
func (f *fixture) room(name string) *roomFixture {
	for _, rf := range f.rooms {
		if rf.name == name {
			return rf
		}
	}
	panic("storetest: no reference room " + name)
}

func ptr[T any](v T) *T { return &v }
