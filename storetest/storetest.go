// Package storetest checks an implementation of fedhistory.EventStore against
// the interface's contract, in the spirit of testing/fstest.TestFS.
//
// The suite works on a fixed set of reference rooms (Rooms): signed rooms of
// room versions 1, 10, 11 and 12, with forks and merges that need state
// resolution (one resets a piece of state), rejected events, outliers,
// redactions that apply and that do not (for each of the spec's reasons,
// one arriving before its target), gaps in the DAG after which the state
// is unknown unless AddOptions.StateBefore gives it, a room joined over
// federation (its state as outliers, the join with StateBefore), events
// with equal and out-of-order origin_server_ts, users of several servers
// (one with a port), server ACLs and erased users. Load the rooms into a
// fresh store and hand it to Run. Every answer the suite expects is worked
// out while the rooms are built, by the contract's rules applied to what
// the store has been given, never computed by a store.
//
// A homeserver author runs the suite against their own store like this:
//
//	func TestMyStoreConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) fedhistory.EventStore {
//			store := mystore.Open(t.TempDir()) // an empty store
//			err := storetest.Load(func(version string, pdu []byte, opts fedhistory.AddOptions) error {
//				return store.Ingest(version, pdu, opts) // add one event, in order
//			}, store.EraseUser) // nil when the store is no fedhistory.ErasureStore
//			require.NoError(t, err)
//			return store
//		})
//	}
//
// A store whose ingest works differently (replaying a database dump, say)
// adds the events of Rooms itself: every Event of every Room, in order,
// with its options (Event.Options: Rejected, Outlier and StateBefore), and
// marks every room's ErasedUsers erased.
//
// Run checks every method of EventStore, Redacted included on every method
// that returns events, and each optional capability the store implements;
// the checks of a capability it lacks are skipped. The capabilities are
// ErasureStore, BackfillWalker and MissingEventsWalker (whose answers must
// be exactly those of dag.Backfill and dag.MissingEvents over the store's
// own Events), StateStore (StateBefore and AuthChain, against the exact
// sets), EventLookupStore and TimestampStore. The suite also reads from
// many goroutines at once (run it with -race) and checks that a cancelled
// context gives either an error or a correct answer, never a wrong one.
// Each check is a subtest whose name says what is checked, so
// "go test -run 'Conformance/StateBefore'" runs one group.
package storetest

import (
	"context"
	"fmt"
	"maps"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/dag"
)

// Load adds the reference rooms through add, every event in order with its
// options (Event.Options), then marks every room's erased users through
// erase. erase may be nil for a store that is not a fedhistory.ErasureStore.
func Load(add func(roomVersion string, pdu []byte, opts fedhistory.AddOptions) error, erase func(userID string) error) error {
	for _, room := range Rooms() {
		for _, ev := range room.Events {
			if err := add(room.Version, ev.JSON, ev.Options()); err != nil {
				return fmt.Errorf("storetest: adding event %s of room %s: %w", ev.ID, room.ID, err)
			}
		}
		if erase == nil {
			continue
		}
		for _, user := range room.ErasedUsers {
			if err := erase(user); err != nil {
				return fmt.Errorf("storetest: erasing %s: %w", user, err)
			}
		}
	}
	return nil
}

// Run checks the store newStore returns against the EventStore contract.
// newStore is called once; the store must hold exactly the reference rooms
// (see Load).
func Run(t *testing.T, newStore func(t *testing.T) fedhistory.EventStore) {
	t.Helper()
	s := &suite{f: referenceFixture(), store: newStore(t)}
	if s.store == nil {
		t.Fatal("storetest: newStore returned nil")
	}
	t.Run("RoomVersion", s.testRoomVersion)
	t.Run("Events", s.testEvents)
	t.Run("CurrentState", s.testCurrentState)
	t.Run("Visibility", s.testVisibility)
	t.Run("Redacted", s.testRedacted)
	t.Run("ErasedUsers", s.testErasedUsers)
	t.Run("WalkBackfill", s.testWalkBackfill)
	t.Run("WalkMissingEvents", s.testWalkMissingEvents)
	t.Run("StateBefore", s.testStateBefore)
	t.Run("AuthChain", s.testAuthChain)
	t.Run("EventByID", s.testEventByID)
	t.Run("EventAtTimestamp", s.testEventAtTimestamp)
	t.Run("concurrent reads", s.testConcurrentReads)
	t.Run("cancelled context", s.testCancelledContext)
}

type suite struct {
	f     *fixture
	store fedhistory.EventStore
}

// unknownRoom is a room no store holds.
const unknownRoom = "!unknown:hs9.example"

// unknownIDs are event IDs no store holds, in the shapes of the room
// versions (origin-chosen, and hash-based), plus the empty string.
var unknownIDs = []string{"$unknown:hs1.example", "$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", ""}

// mode says whether a check accepts an error in place of an answer: with a
// cancelled context an error is fine, a wrong answer never is.
type mode bool

const (
	mustAnswer mode = false
	mayFail    mode = true
)

// answered fails t when err is not acceptable and reports whether there is
// an answer to check.
func answered(t require.TestingT, err error, m mode, call string) bool {
	helper(t)
	if err != nil && m == mayFail {
		return false
	}
	require.NoError(t, err, call)
	return true
}

// failed checks the answer to a call that must fail with want: with a
// cancelled context any error will do, an answer never.
func failed(t require.TestingT, err, want error, m mode, msgAndArgs ...any) {
	helper(t)
	if err != nil && m == mayFail {
		return
	}
	require.ErrorIs(t, err, want, msgAndArgs...)
}

func helper(t require.TestingT) {
	if h, ok := t.(interface{ Helper() }); ok {
		h.Helper()
	}
}

// otherRoom is the room after rf, whose IDs the checks mix into rf's.
func (s *suite) otherRoom(rf *roomFixture) *roomFixture {
	i := slices.Index(s.f.rooms, rf)
	return s.f.rooms[(i+1)%len(s.f.rooms)]
}

func (s *suite) room(name string) *roomFixture {
	for _, rf := range s.f.rooms {
		if rf.name == name {
			return rf
		}
	}
	panic("storetest: no reference room " + name)
}

func ids(events []*eventFixture) []string {
	out := make([]string, len(events))
	for i, efx := range events {
		out[i] = efx.want.ID
	}
	return out
}

// ---- RoomVersion ----

func (s *suite) testRoomVersion(t *testing.T) {
	for _, rf := range s.f.rooms {
		t.Run(rf.name, func(t *testing.T) { checkRoomVersion(t, context.Background(), s.store, rf, mustAnswer) })
	}
	t.Run("unknown room is ErrRoomNotFound", func(t *testing.T) {
		// A room ID that differs from a held one only in its server.
		opaque, _, _ := strings.Cut(s.room("v10 main").room.ID, ":")
		for _, roomID := range []string{unknownRoom, opaque + ":hs9.example", ""} {
			_, err := s.store.RoomVersion(context.Background(), roomID)
			require.ErrorIs(t, err, fedhistory.ErrRoomNotFound, "RoomVersion(%q)", roomID)
		}
	})
}

func checkRoomVersion(t require.TestingT, ctx context.Context, store fedhistory.EventStore, rf *roomFixture, m mode) {
	helper(t)
	version, err := store.RoomVersion(ctx, rf.room.ID)
	if answered(t, err, m, "RoomVersion") {
		require.Equal(t, rf.room.Version, version, "RoomVersion of room %s", rf.name)
	}
}

// ---- Events ----

func (s *suite) testEvents(t *testing.T) {
	ctx := context.Background()
	for _, rf := range s.f.rooms {
		t.Run(rf.name, func(t *testing.T) {
			t.Run("every event in one batch with unknown and foreign IDs", func(t *testing.T) {
				got := checkEventsBatch(t, ctx, s.store, rf, s.otherRoom(rf), mustAnswer)
				for _, efx := range rf.events {
					t.Run(efx.label, func(t *testing.T) { checkEvent(t, efx, got[efx.want.ID]) })
				}
			})
			t.Run("IDs of another room are left out", func(t *testing.T) {
				got, err := s.store.Events(ctx, rf.room.ID, ids(s.otherRoom(rf).events))
				require.NoError(t, err)
				require.Empty(t, got)
			})
			t.Run("a batch of one", func(t *testing.T) {
				last := rf.events[len(rf.events)-1]
				got, err := s.store.Events(ctx, rf.room.ID, []string{last.want.ID})
				require.NoError(t, err)
				require.Len(t, got, 1)
				checkEvent(t, last, got[0])
			})
		})
	}
	t.Run("unknown IDs are left out", func(t *testing.T) {
		got, err := s.store.Events(ctx, s.f.rooms[0].room.ID, unknownIDs)
		require.NoError(t, err)
		require.Empty(t, got)
	})
	t.Run("empty batch", func(t *testing.T) {
		got, err := s.store.Events(ctx, s.f.rooms[0].room.ID, []string{})
		require.NoError(t, err)
		require.Empty(t, got)
		got, err = s.store.Events(ctx, s.f.rooms[0].room.ID, nil)
		require.NoError(t, err)
		require.Empty(t, got)
	})
	t.Run("unknown room answers nothing or ErrRoomNotFound", func(t *testing.T) {
		got, err := s.store.Events(ctx, unknownRoom, ids(s.f.rooms[0].events))
		if err != nil {
			require.ErrorIs(t, err, fedhistory.ErrRoomNotFound)
			return
		}
		require.Empty(t, got)
	})
}

// checkEventsBatch asks for every event of rf, interleaved with unknown IDs
// and IDs of other's events, in one call. It checks that exactly rf's events
// come back, each once, and returns them by ID.
func checkEventsBatch(t require.TestingT, ctx context.Context, store fedhistory.EventStore, rf, other *roomFixture, m mode) map[string]*fedhistory.Event {
	helper(t)
	var batch []string
	for i, efx := range rf.events {
		batch = append(batch, efx.want.ID)
		if i < len(other.events) {
			batch = append(batch, other.events[i].want.ID)
		}
		if i < len(unknownIDs) {
			batch = append(batch, unknownIDs[i])
		}
	}
	// Newest first, as a backfill asks.
	slices.Reverse(batch)
	events, err := store.Events(ctx, rf.room.ID, batch)
	if !answered(t, err, m, "Events") {
		return nil
	}
	got := make(map[string]*fedhistory.Event, len(events))
	for i, ev := range events {
		require.NotNil(t, ev, "Events answer %d of room %s is nil", i, rf.name)
		require.NotContains(t, got, ev.ID, "Events answered %s twice", ev.ID)
		got[ev.ID] = ev
	}
	require.ElementsMatch(t, ids(rf.events), slices.Collect(maps.Keys(got)),
		"Events of room %s must answer every event of the room (rejected and outliers included) and nothing else", rf.name)
	return got
}

// checkEvent compares every field of got with the event as it was built.
func checkEvent(t require.TestingT, efx *eventFixture, got *fedhistory.Event) {
	helper(t)
	want := efx.want
	require.NotNil(t, got, "%s: no event", efx.label)
	require.Equal(t, want.ID, got.ID, "%s: ID", efx.label)
	require.Equal(t, want.RoomID, got.RoomID, "%s: RoomID", efx.label)
	require.Equal(t, want.Depth, got.Depth, "%s: Depth", efx.label)
	require.Equal(t, want.OriginServerTS, got.OriginServerTS, "%s: OriginServerTS", efx.label)
	if len(want.PrevEvents) == 0 {
		require.Empty(t, got.PrevEvents, "%s: PrevEvents", efx.label)
	} else {
		require.Equal(t, want.PrevEvents, got.PrevEvents, "%s: PrevEvents, in the event's order", efx.label)
	}
	require.Equal(t, want.Type, got.Type, "%s: Type", efx.label)
	if want.StateKey == nil {
		require.Nil(t, got.StateKey, "%s: StateKey of a non-state event is nil", efx.label)
	} else {
		require.NotNil(t, got.StateKey, "%s: StateKey of a state event is set", efx.label)
		require.Equal(t, *want.StateKey, *got.StateKey, "%s: StateKey", efx.label)
	}
	require.Equal(t, want.Sender, got.Sender, "%s: Sender", efx.label)
	require.Equal(t, want.Redacts, got.Redacts, "%s: Redacts (top-level \"redacts\" before room version 11, content.redacts from 11)", efx.label)
	// Byte for byte: the handler writes these bytes to the wire as they are.
	require.Equal(t, string(want.JSON), string(got.JSON), "%s: JSON must be the PDU as added, byte for byte", efx.label)
	require.Equal(t, want.Rejected, got.Rejected, "%s: Rejected", efx.label)
	require.Equal(t, want.Outlier, got.Outlier, "%s: Outlier", efx.label)
	requireRedacted(t, efx, got)
}

// requireRedacted checks got.Redacted against the redactions of the room
// (see redactionCases).
func requireRedacted(t require.TestingT, efx *eventFixture, got *fedhistory.Event) {
	helper(t)
	if efx.want.Redacted {
		require.True(t, got.Redacted, "%s: Redacted: a redaction of it applies (see \"Redactions\" on fedhistory.EventStore)", efx.label)
	} else {
		require.False(t, got.Redacted, "%s: Redacted: no redaction of it applies (see \"Redactions\" on fedhistory.EventStore)", efx.label)
	}
}

// ---- CurrentState ----

// currentStateCases state current states by hand; the room-by-room checks
// after them compare every server's view with the fixture's state.
var currentStateCases = []struct {
	name, room, server string
	acl                string // JSON, "" for none
	memberships        map[string]string
	// unknown: the store cannot know the current state (ErrStateUnknown).
	unknown bool
}{
	{
		name: "the server ACL of the v10 room, and evil.example has no members", room: "v10 main", server: "evil.example",
		acl:         `{"allow":["*"],"deny":["evil.example"],"allow_ip_literals":false}`,
		memberships: map[string]string{},
	},
	{
		name: "carol of hs3.example:8448 has left the v10 room", room: "v10 main", server: "hs3.example:8448",
		acl:         `{"allow":["*"],"deny":["evil.example"],"allow_ip_literals":false}`,
		memberships: map[string]string{carol: "leave"},
	},
	{
		name: "hs3.example has erin only, not the users of hs3.example:8448", room: "v10 main", server: "hs3.example",
		acl:         `{"allow":["*"],"deny":["evil.example"],"allow_ip_literals":false}`,
		memberships: map[string]string{erin: "join"},
	},
	{
		name: "the outlier join of oscar is not current state", room: "v10 main", server: "hs2.example",
		acl:         `{"allow":["*"],"deny":["evil.example"],"allow_ip_literals":false}`,
		memberships: map[string]string{bob: "join"},
	},
	{
		name: "the v11 merge resolved carol's membership to leave and kept dave's join", room: "v11 fork and merge", server: "hs3.example:8448",
		memberships: map[string]string{carol: "leave", dave: "join"},
	},
	{
		name: "hs3.example:84 is not hs3.example:8448", room: "v11 fork and merge", server: "hs3.example:84",
		memberships: map[string]string{},
	},
	{
		name: "bob has left the v12 room", room: "v12", server: "hs2.example",
		memberships: map[string]string{bob: "leave"},
	},
	{
		name: "erin joined the v12 room on a branch", room: "v12", server: "hs3.example",
		memberships: map[string]string{erin: "join"},
	},
	{
		name: "the v1 room's current state is unknown: a forward extremity follows a gap", room: "v1", server: "hs3.example:8448",
		unknown: true,
	},
	{
		name: "the room joined over federation has the server ACL of the state given at the join", room: "v11 joined over federation", server: "evil.example",
		acl:         `{"allow":["*"],"deny":["evil.example"],"allow_ip_literals":false}`,
		memberships: map[string]string{},
	},
	{
		name: "bob, whom the store knows only from the state given at the join, is joined", room: "v11 joined over federation", server: "hs2.example",
		acl:         `{"allow":["*"],"deny":["evil.example"],"allow_ip_literals":false}`,
		memberships: map[string]string{bob: "join"},
	},
	{
		name: "v10: the state after the gap given with StateBefore counts; the event without a state does not linger", room: "v10 main", server: "hs1.example",
		acl:         `{"allow":["*"],"deny":["evil.example"],"allow_ip_literals":false}`,
		memberships: map[string]string{alice: "join"},
	},
	{
		name: "v11: bob's topic, reset by the merge, is no current state; carol's displayname lost to her leave", room: "v11 fork and merge", server: "hs3.example:8448",
		memberships: map[string]string{carol: "leave", dave: "join"},
	},
}

func (s *suite) testCurrentState(t *testing.T) {
	ctx := context.Background()
	for _, tc := range currentStateCases {
		t.Run(tc.name, func(t *testing.T) {
			rf := s.room(tc.room)
			require.Equal(t, tc.unknown, rf.current == nil, "the fixture disagrees with the case: a bug in storetest")
			got, err := s.store.CurrentState(ctx, rf.room.ID, tc.server)
			if tc.unknown {
				require.ErrorIs(t, err, fedhistory.ErrStateUnknown, "a store never invents state (\"State\" on fedhistory.EventStore)")
				return
			}
			want := fedhistory.CurrentState{Memberships: tc.memberships}
			if tc.acl != "" {
				want.ServerACL = []byte(tc.acl)
			}
			require.NoError(t, err)
			requireCurrentState(t, want, got, tc.server)
		})
	}
	for _, rf := range s.f.rooms {
		t.Run(rf.name, func(t *testing.T) {
			for _, server := range servers {
				t.Run("memberships and ACL for "+server, func(t *testing.T) {
					checkCurrentState(t, ctx, s.store, rf, server, mustAnswer)
				})
			}
		})
	}
	t.Run("unknown room is ErrRoomNotFound", func(t *testing.T) {
		_, err := s.store.CurrentState(ctx, unknownRoom, "hs1.example")
		require.ErrorIs(t, err, fedhistory.ErrRoomNotFound)
	})
}

func checkCurrentState(t require.TestingT, ctx context.Context, store fedhistory.EventStore, rf *roomFixture, server string, m mode) {
	helper(t)
	got, err := store.CurrentState(ctx, rf.room.ID, server)
	if rf.current == nil {
		failed(t, err, fedhistory.ErrStateUnknown, m, "CurrentState of room %s: the state after a forward extremity is unknown", rf.name)
		return
	}
	if answered(t, err, m, "CurrentState") {
		requireCurrentState(t, rf.current.currentState(server), got, server)
	}
}

func requireCurrentState(t require.TestingT, want fedhistory.CurrentState, got *fedhistory.CurrentState, server string) {
	helper(t)
	require.NotNil(t, got, "CurrentState")
	if want.ServerACL == nil {
		require.Empty(t, got.ServerACL, "ServerACL of a room without one")
	} else {
		require.JSONEq(t, string(want.ServerACL), string(got.ServerACL), "ServerACL is the ACL event's content")
	}
	requireMemberships(t, want.Memberships, got.Memberships, "current memberships of the users of %s", server)
}

// requireMemberships compares memberships, a nil map equal to an empty one.
func requireMemberships(t require.TestingT, want, got map[string]string, msgAndArgs ...any) {
	helper(t)
	if len(want) == 0 && len(got) == 0 {
		return
	}
	require.Equal(t, want, got, msgAndArgs...)
}

// ---- Visibility ----

// vis is a VisibilityState: history visibility, then user, membership pairs.
func vis(historyVisibility string, userMemberships ...string) fedhistory.VisibilityState {
	v := fedhistory.VisibilityState{HistoryVisibility: historyVisibility, Memberships: map[string]string{}}
	for i := 0; i+1 < len(userMemberships); i += 2 {
		v.Memberships[userMemberships[i]] = userMemberships[i+1]
	}
	return v
}

// visibilityCases state by hand what the room-by-room checks compare for
// every event and server.
var visibilityCases = []struct {
	name, room, event, server string
	before, after             fedhistory.VisibilityState
}{
	{
		name: "v10: a message before the history_visibility change sees shared", room: "v10 main",
		event: labelMessageBeforeHV, server: "hs2.example",
		before: vis("shared", bob, "join"), after: vis("shared", bob, "join"),
	},
	{
		name: "v10: history_visibility is shared before the change and joined after it", room: "v10 main",
		event: labelHVJoined, server: "hs2.example",
		before: vis("shared", bob, "join"), after: vis("joined", bob, "join"),
	},
	{
		name: "v10: a rejected history_visibility change does not change state", room: "v10 main",
		event: labelRejectedHV, server: "hs1.example",
		before: vis("joined", alice, "join"), after: vis("joined", alice, "join"),
	},
	{
		name: "v10: a rejected ban does not change carol's membership", room: "v10 main",
		event: labelRejectedBan, server: "hs3.example:8448",
		before: vis("joined", carol, "join"), after: vis("joined", carol, "join"),
	},
	{
		name: "v10: the event after the rejected events sees the state before them", room: "v10 main",
		event: labelAfterRejected, server: "hs3.example:8448",
		before: vis("joined", carol, "join"), after: vis("joined", carol, "join"),
	},
	{
		name: "v10: carol's leave has her join before and her leave after", room: "v10 main",
		event: labelCarolLeaves, server: "hs3.example:8448",
		before: vis("joined", carol, "join"), after: vis("joined", carol, "leave"),
	},
	{
		name: "v10: after @carol:hs3.example:8448 leaves, the next event has Memberships {carol: leave}", room: "v10 main",
		event: labelAfterCarolLeaves, server: "hs3.example:8448",
		before: vis("joined", carol, "leave"), after: vis("joined", carol, "leave"),
	},
	{
		name: "v10: hs3.example sees erin only, not the users of hs3.example:8448", room: "v10 main",
		event: labelAfterCarolLeaves, server: "hs3.example",
		before: vis("joined", erin, "join"), after: vis("joined", erin, "join"),
	},
	{
		name: "v10: hs3.example:84 has no users; servers match exactly, never by prefix", room: "v10 main",
		event: labelAfterCarolLeaves, server: "hs3.example:84",
		before: vis("joined"), after: vis("joined"),
	},
	{
		name: "v10: after the gap, the state given with StateBefore: carol has left, oscar's outlier join is no state", room: "v10 main",
		event: labelAfterGapV10, server: "hs3.example:8448",
		before: vis("joined", carol, "leave"), after: vis("joined", carol, "leave"),
	},
	{
		name: "v11 joined over federation: the join sees the state it was given, history_visibility joined", room: "v11 joined over federation",
		event: labelJoinFed, server: "hs2.example",
		before: vis("joined", bob, "join"), after: vis("joined", bob, "join"),
	},
	{
		name: "v11 joined over federation: alice's join is hers", room: "v11 joined over federation",
		event: labelJoinFed, server: "hs1.example",
		before: vis("joined"), after: vis("joined", alice, "join"),
	},
	{
		name: "v1: an outlier prev_event with StateBefore: the given state", room: "v1",
		event: labelNamesOutlierV1, server: "hs3.example:8448",
		before: vis("shared", carol, "leave"), after: vis("shared", carol, "leave"),
	},
	{
		name: "v11 branch 2: carol's displayname change keeps her joined", room: "v11 fork and merge",
		event: labelCarolDisplayname, server: "hs3.example:8448",
		before: vis("shared", carol, "join"), after: vis("shared", carol, "join"),
	},
	{
		name: "v11 branch 1: carol leaves", room: "v11 fork and merge",
		event: labelCarolLeavesBr1, server: "hs3.example:8448",
		before: vis("shared", carol, "join"), after: vis("shared", carol, "leave"),
	},
	{
		name: "v11 branch 2 does not see branch 1's changes", room: "v11 fork and merge",
		event: labelHVInvitedBr2, server: "hs3.example:8448",
		before: vis("shared", carol, "join"), after: vis("invited", carol, "join"),
	},
	{
		name: "v11 branch 2: dave joins beside carol", room: "v11 fork and merge",
		event: labelDaveJoinsBr2, server: "hs3.example:8448",
		before: vis("invited", carol, "join"), after: vis("invited", carol, "join", dave, "join"),
	},
	{
		name: "v11: the merge sees the resolved state, history_visibility invited, carol leave, dave join", room: "v11 fork and merge",
		event: labelMergeV11, server: "hs3.example:8448",
		before: vis("invited", carol, "leave", dave, "join"), after: vis("invited", carol, "leave", dave, "join"),
	},
	{
		name: "v12 branch 2 sees shared", room: "v12",
		event: labelErinsMessageBr2, server: "hs3.example",
		before: vis("shared", erin, "join"), after: vis("shared", erin, "join"),
	},
	{
		name: "v12: the merge keeps both branches' changes, history_visibility joined and erin's join", room: "v12",
		event: labelMergeV12, server: "hs3.example",
		before: vis("joined", erin, "join"), after: vis("joined", erin, "join"),
	},
	{
		name: "v1: carol leaves", room: "v1",
		event: labelCarolLeavesV1, server: "hs3.example:8448",
		before: vis("shared", carol, "join"), after: vis("shared", carol, "leave"),
	},
}

// unknownStateCases are events whose state the store cannot know: it never
// invents state ("State" on fedhistory.EventStore). Visibility answers them
// Known false, StateBefore ErrStateUnknown.
var unknownStateCases = []struct{ name, room, event string }{
	{"v10: an event naming an outlier as a prev_event", "v10 main", labelNamesOutlier},
	{"v10: an event whose prev_event's state is unknown", "v10 main", labelRedactionUnknownState},
	{"v1: an event after a prev_event the store never received", "v1", labelAfterGapV1},
	{"v1: the event after that one", "v1", labelRedactionAfterGapV1},
}

func (s *suite) testVisibility(t *testing.T) {
	ctx := context.Background()
	for _, tc := range unknownStateCases {
		t.Run("fail-closed: "+tc.name, func(t *testing.T) {
			efx := s.room(tc.room).byLabel[tc.event]
			require.Nil(t, efx.before, "the fixture disagrees with the case: a bug in storetest")
			for _, server := range servers {
				got, err := s.store.Visibility(ctx, efx.want.RoomID, server, []string{efx.want.ID})
				require.NoError(t, err)
				require.Len(t, got, 1, "one answer per ID")
				require.False(t, got[0].Known, "%s, for %s: the store does not know its state, and must not invent one", efx.label, server)
			}
		})
	}
	for _, tc := range visibilityCases {
		t.Run(tc.name, func(t *testing.T) {
			efx := s.room(tc.room).byLabel[tc.event]
			got, err := s.store.Visibility(ctx, efx.want.RoomID, tc.server, []string{efx.want.ID})
			require.NoError(t, err)
			require.Len(t, got, 1, "one answer per ID")
			require.True(t, got[0].Known, "%s: the state at a stored event that is no outlier is known", efx.label)
			requireVisibility(t, fedhistory.EventVisibility{Known: true, Before: tc.before, After: tc.after}, got[0], efx.label, tc.server)
		})
	}
	for _, rf := range s.f.rooms {
		t.Run(rf.name, func(t *testing.T) {
			for _, server := range servers {
				t.Run("every event in one batch for "+server, func(t *testing.T) {
					checkVisibilityBatch(t, ctx, s.store, rf, s.otherRoom(rf), server, mustAnswer)
				})
			}
		})
	}
	t.Run("answers follow the order asked, repeats included", func(t *testing.T) {
		// Backwards, every event twice with an unknown ID between: an
		// answer in the store's own order, or with repeats answered once,
		// puts some state against the wrong event.
		rf := s.room("v10 main")
		var batch []string
		var want []*eventFixture // nil for the unknown IDs
		for i := len(rf.events) - 1; i >= 0; i-- {
			efx := rf.events[i]
			batch = append(batch, efx.want.ID, unknownIDs[i%len(unknownIDs)], efx.want.ID)
			want = append(want, efx, nil, efx)
		}
		got, err := s.store.Visibility(ctx, rf.room.ID, "hs3.example", batch)
		require.NoError(t, err)
		require.Len(t, got, len(batch), "one answer per ID asked, repeats included")
		for i, efx := range want {
			if efx == nil {
				require.False(t, got[i].Known, "answer %d, for the unknown ID %q", i, batch[i])
				continue
			}
			requireEventVisibility(t, efx, got[i], "hs3.example", i)
		}
	})
	t.Run("outliers, unknown IDs and another room's events are not known", func(t *testing.T) {
		rf := s.room("v10 main")
		outlier := rf.byLabel[labelOutlier]
		batch := append([]string{outlier.want.ID}, unknownIDs...)
		batch = append(batch, ids(rf.withheld)...)
		batch = append(batch, ids(s.otherRoom(rf).events)...)
		got, err := s.store.Visibility(ctx, rf.room.ID, "hs2.example", batch)
		require.NoError(t, err)
		require.Len(t, got, len(batch), "one answer per ID asked")
		for i, id := range batch {
			require.False(t, got[i].Known, "answer %d, for %q", i, id)
		}
	})
	t.Run("empty batch", func(t *testing.T) {
		got, err := s.store.Visibility(ctx, s.f.rooms[0].room.ID, "hs2.example", nil)
		require.NoError(t, err)
		require.Empty(t, got)
	})
	t.Run("unknown room answers nothing known or ErrRoomNotFound", func(t *testing.T) {
		batch := ids(s.f.rooms[0].events)
		got, err := s.store.Visibility(ctx, unknownRoom, "hs2.example", batch)
		if err != nil {
			require.ErrorIs(t, err, fedhistory.ErrRoomNotFound)
			return
		}
		require.Len(t, got, len(batch), "one answer per ID asked")
		for i, id := range batch {
			require.False(t, got[i].Known, "answer %d, for %q", i, id)
		}
	})
}

// checkVisibilityBatch asks for the visibility of every event of rf,
// outliers included, and of unknown and other's events, in one call: the
// answer must have one entry per ID, in order, Known exactly for rf's events
// that are not outliers and whose state the store can know, rejected ones
// included, with the states the fixture tracked.
func checkVisibilityBatch(t require.TestingT, ctx context.Context, store fedhistory.EventStore, rf, other *roomFixture, server string, m mode) {
	helper(t)
	batch := append(ids(rf.events), unknownIDs...)
	batch = append(batch, ids(other.events)...)
	got, err := store.Visibility(ctx, rf.room.ID, server, batch)
	if !answered(t, err, m, "Visibility") {
		return
	}
	require.Len(t, got, len(batch), "Visibility of room %s must answer every ID asked, in order", rf.name)
	for i, efx := range rf.events {
		requireEventVisibility(t, efx, got[i], server, i)
	}
	for i := len(rf.events); i < len(batch); i++ {
		require.False(t, got[i].Known, "answer %d, for %q, which is not in room %s", i, batch[i], rf.name)
	}
}

// requireEventVisibility checks the answer at index i for efx, an event of
// the room asked about: unknown for an outlier and after a gap, else its
// states.
func requireEventVisibility(t require.TestingT, efx *eventFixture, got fedhistory.EventVisibility, server string, i int) {
	helper(t)
	if efx.want.Outlier {
		require.False(t, got.Known, "answer %d, for %s: the state at an outlier is not known", i, efx.label)
		return
	}
	if efx.before == nil {
		require.False(t, got.Known, "answer %d, for %s: the store cannot know the state at this event (a gap before it) and must not invent one", i, efx.label)
		return
	}
	require.True(t, got.Known, "answer %d, for %s: the state at this event is known", i, efx.label)
	requireVisibility(t, fedhistory.EventVisibility{Known: true, Before: efx.before.visibility(server), After: efx.after.visibility(server)},
		got, fmt.Sprintf("answer %d, for %s", i, efx.label), server)
}

func requireVisibility(t require.TestingT, want, got fedhistory.EventVisibility, label, server string) {
	helper(t)
	require.Equal(t, want.Before.HistoryVisibility, got.Before.HistoryVisibility, "%s: history_visibility before it", label)
	require.Equal(t, want.After.HistoryVisibility, got.After.HistoryVisibility, "%s: history_visibility after it", label)
	requireMemberships(t, want.Before.Memberships, got.Before.Memberships, "%s: memberships of %s's users before it", label, server)
	requireMemberships(t, want.After.Memberships, got.After.Memberships, "%s: memberships of %s's users after it", label, server)
}

// ---- ErasedUsers ----

func (s *suite) erasedUsers() map[string]bool {
	erased := map[string]bool{}
	for _, rf := range s.f.rooms {
		for _, user := range rf.room.ErasedUsers {
			erased[user] = true
		}
	}
	return erased
}

func (s *suite) testErasedUsers(t *testing.T) {
	erasure, ok := s.store.(fedhistory.ErasureStore)
	if !ok {
		t.Skip("the store is not a fedhistory.ErasureStore")
	}
	t.Run("erin and dave are erased, nobody else", func(t *testing.T) {
		require.Equal(t, map[string]bool{erin: true, dave: true}, s.erasedUsers(), "the fixture erases erin and dave")
		checkErasedUsers(t, context.Background(), erasure, s.erasedUsers(), mustAnswer)
	})
	t.Run("empty batch", func(t *testing.T) {
		got, err := erasure.ErasedUsers(context.Background(), nil)
		require.NoError(t, err)
		require.Empty(t, trueKeys(got))
	})
}

func checkErasedUsers(t require.TestingT, ctx context.Context, erasure fedhistory.ErasureStore, want map[string]bool, m mode) {
	helper(t)
	got, err := erasure.ErasedUsers(ctx, allUsers)
	if answered(t, err, m, "ErasedUsers") {
		require.ElementsMatch(t, slices.Collect(maps.Keys(want)), trueKeys(got), "ErasedUsers(%v)", allUsers)
	}
}

// trueKeys are the users m says are erased; a user mapped to false is not.
func trueKeys(m map[string]bool) []string {
	var keys []string
	for k, v := range m {
		if v {
			keys = append(keys, k)
		}
	}
	return keys
}

// ---- walks ----

type backfillCase struct {
	name  string
	from  []string
	limit int
}

type missingEventsCase struct {
	name             string
	earliest, latest []string
	limit            int
	minDepth         int64
}

// walkSeeds are the events the walk tables start from.
func (s *suite) walkSeeds(rf *roomFixture) (create, middle, last, outlier, foreign *eventFixture) {
	create, middle, last = rf.events[0], rf.events[len(rf.events)/2], rf.events[len(rf.events)-1]
	for _, efx := range rf.events {
		if efx.want.Outlier {
			outlier = efx
		}
	}
	foreign = s.otherRoom(rf).events[len(s.otherRoom(rf).events)-1]
	return create, middle, last, outlier, foreign
}

func (s *suite) backfillCases(rf *roomFixture) []backfillCase {
	_, middle, last, outlier, foreign := s.walkSeeds(rf)
	cases := []backfillCase{
		{"from the last event, limit 1", []string{last.want.ID}, 1},
		{"from the last event, limit 3", []string{last.want.ID}, 3},
		{"from the last event, the whole room", []string{last.want.ID}, 1000},
		{"from the middle event, limit 5", []string{middle.want.ID}, 5},
		{"from the last and the middle event, limit 6", []string{last.want.ID, middle.want.ID}, 6},
		{"from the last event named twice, limit 4", []string{last.want.ID, last.want.ID}, 4},
		{"from an unknown event", unknownIDs[:1], 10},
		{"from an event of another room", []string{foreign.want.ID}, 10},
		{"from an unknown event and the last event", []string{unknownIDs[0], last.want.ID}, 10},
		{"from nothing", nil, 10},
		{"limit 0", []string{last.want.ID}, 0},
	}
	if outlier != nil {
		cases = append(cases, backfillCase{"from an outlier", []string{outlier.want.ID}, 10})
	}
	return cases
}

func (s *suite) missingEventsCases(rf *roomFixture) []missingEventsCase {
	create, middle, last, outlier, foreign := s.walkSeeds(rf)
	cases := []missingEventsCase{
		{"everything between the create event and the last event", []string{create.want.ID}, []string{last.want.ID}, 1000, 0},
		{"the three nearest the last event", []string{create.want.ID}, []string{last.want.ID}, 3, 0},
		{"from the last event back to the middle one", []string{middle.want.ID}, []string{last.want.ID}, 1000, 0},
		{"min_depth at the middle event's depth", nil, []string{last.want.ID}, 1000, middle.want.Depth},
		{"no earliest events", nil, []string{last.want.ID}, 1000, 0},
		{"latest is the middle and the last event", []string{create.want.ID}, []string{middle.want.ID, last.want.ID}, 1000, 0},
		{"latest is also earliest", []string{last.want.ID}, []string{last.want.ID}, 1000, 0},
		{"latest is unknown", nil, unknownIDs[:1], 10, 0},
		{"latest is an event of another room", nil, []string{foreign.want.ID}, 10, 0},
		{"limit 0", nil, []string{last.want.ID}, 0, 0},
	}
	if outlier != nil {
		cases = append(cases, missingEventsCase{"latest is an outlier", nil, []string{outlier.want.ID}, 10, 0})
	}
	return cases
}

// fetchFromEvents is the dag.FetchFunc the handler uses when the store has
// no walker of its own: a batched Events call.
func fetchFromEvents(store fedhistory.EventStore, roomID string) dag.FetchFunc {
	return func(ctx context.Context, ids []string) ([]dag.Node, error) {
		events, err := store.Events(ctx, roomID, ids)
		if err != nil {
			return nil, err
		}
		nodes := make([]dag.Node, 0, len(events))
		for _, ev := range events {
			if ev != nil {
				nodes = append(nodes, dag.Node{ID: ev.ID, RoomID: ev.RoomID, Depth: ev.Depth, PrevEvents: ev.PrevEvents,
					Rejected: ev.Rejected, Outlier: ev.Outlier})
			}
		}
		return nodes, nil
	}
}

func (s *suite) testWalkBackfill(t *testing.T) {
	walker, ok := s.store.(fedhistory.BackfillWalker)
	if !ok {
		t.Skip("the store is not a fedhistory.BackfillWalker")
	}
	for _, rf := range s.f.rooms {
		t.Run(rf.name, func(t *testing.T) {
			for _, tc := range s.backfillCases(rf) {
				t.Run(tc.name, func(t *testing.T) { checkBackfill(t, context.Background(), walker, rf, tc, mustAnswer) })
			}
		})
	}
}

func checkBackfill(t require.TestingT, ctx context.Context, walker fedhistory.BackfillWalker, rf *roomFixture, tc backfillCase, m mode) {
	helper(t)
	want, err := dag.Backfill(context.Background(), dag.BackfillRequest{RoomID: rf.room.ID, From: tc.from, Limit: tc.limit},
		fetchFromEvents(walker, rf.room.ID))
	require.NoError(t, err, "dag.Backfill over the store's Events")
	got, err := walker.WalkBackfill(ctx, dag.BackfillRequest{RoomID: rf.room.ID, From: slices.Clone(tc.from), Limit: tc.limit})
	if answered(t, err, m, "WalkBackfill") {
		requireWalk(t, rf, want.IDs, got.Events, "WalkBackfill must return what dag.Backfill returns, in its order")
	}
}

func (s *suite) testWalkMissingEvents(t *testing.T) {
	walker, ok := s.store.(fedhistory.MissingEventsWalker)
	if !ok {
		t.Skip("the store is not a fedhistory.MissingEventsWalker")
	}
	for _, rf := range s.f.rooms {
		t.Run(rf.name, func(t *testing.T) {
			for _, tc := range s.missingEventsCases(rf) {
				t.Run(tc.name, func(t *testing.T) { checkMissingEvents(t, context.Background(), walker, rf, tc, mustAnswer) })
			}
		})
	}
}

func checkMissingEvents(t require.TestingT, ctx context.Context, walker fedhistory.MissingEventsWalker, rf *roomFixture, tc missingEventsCase, m mode) {
	helper(t)
	want, err := dag.MissingEvents(context.Background(), dag.MissingEventsRequest{
		RoomID: rf.room.ID, Earliest: tc.earliest, Latest: tc.latest, Limit: tc.limit, MinDepth: tc.minDepth,
	}, fetchFromEvents(walker, rf.room.ID))
	require.NoError(t, err, "dag.MissingEvents over the store's Events")
	got, err := walker.WalkMissingEvents(ctx, dag.MissingEventsRequest{
		RoomID: rf.room.ID, Earliest: slices.Clone(tc.earliest), Latest: slices.Clone(tc.latest), Limit: tc.limit, MinDepth: tc.minDepth,
	})
	if answered(t, err, m, "WalkMissingEvents") {
		requireWalk(t, rf, want.IDs, got.Events, "WalkMissingEvents must return what dag.MissingEvents returns, in its order")
	}
}

// requireWalk compares a walker's answer with the IDs dag returned, and
// every returned event with the event as built.
func requireWalk(t require.TestingT, rf *roomFixture, want []string, got []*fedhistory.Event, msg string) {
	helper(t)
	gotIDs := make([]string, len(got))
	for i, ev := range got {
		require.NotNil(t, ev, "walk answer %d is nil", i)
		gotIDs[i] = ev.ID
	}
	if len(want) == 0 {
		require.Empty(t, gotIDs, msg)
		return
	}
	require.Equal(t, want, gotIDs, msg)
	for _, ev := range got {
		efx, ok := rf.byID[ev.ID]
		require.True(t, ok, "walk returned %s, not an event of room %s", ev.ID, rf.name)
		checkEvent(t, efx, ev)
	}
}

// ---- concurrency and contexts ----

// collector is a require.TestingT for checks run on other goroutines:
// it records failures, and FailNow ends only the calling goroutine.
type collector struct {
	mu       sync.Mutex
	failures []string
}

func (c *collector) Errorf(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failures = append(c.failures, fmt.Sprintf(format, args...))
}

func (c *collector) FailNow() { runtime.Goexit() }

// concurrentReaders is the number of goroutines reading at once.
const concurrentReaders = 16

// checkEverything runs the checks of every method on every room, as one
// reader would; goroutine i starts at room i so that readers overlap on
// different rooms.
func (s *suite) checkEverything(t require.TestingT, ctx context.Context, i int, m mode) {
	erasure, isErasure := s.store.(fedhistory.ErasureStore)
	for j := range s.f.rooms {
		rf := s.f.rooms[(i+j)%len(s.f.rooms)]
		server := servers[(i+j)%len(servers)]
		checkRoomVersion(t, ctx, s.store, rf, m)
		if got := checkEventsBatch(t, ctx, s.store, rf, s.otherRoom(rf), m); got != nil {
			for _, efx := range rf.events {
				checkEvent(t, efx, got[efx.want.ID])
			}
		}
		checkCurrentState(t, ctx, s.store, rf, server, m)
		checkVisibilityBatch(t, ctx, s.store, rf, s.otherRoom(rf), server, m)
		if isErasure {
			checkErasedUsers(t, ctx, erasure, s.erasedUsers(), m)
		}
		if state, ok := s.store.(fedhistory.StateStore); ok {
			for _, efx := range rf.events {
				checkStateBefore(t, ctx, state, rf, efx, m)
			}
			checkAuthChain(t, ctx, state, rf, ids(rf.events), m)
		}
		if lookup, ok := s.store.(fedhistory.EventLookupStore); ok {
			for _, efx := range rf.events {
				checkEventByID(t, ctx, lookup, efx, m)
			}
		}
		if timestamps, ok := s.store.(fedhistory.TimestampStore); ok {
			for _, q := range timestampQueries(rf) {
				checkEventAtTimestamp(t, ctx, timestamps, rf, q.ts, q.dir, m)
			}
		}
	}
}

func (s *suite) testConcurrentReads(t *testing.T) {
	c := &collector{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range concurrentReaders {
		wg.Go(func() {
			<-start
			s.checkEverything(c, context.Background(), i, mustAnswer)
		})
	}
	close(start)
	wg.Wait()
	sort.Strings(c.failures)
	for _, failure := range slices.Compact(c.failures) {
		t.Error(failure)
	}
}

// testCancelledContext calls every method with a context that is already
// cancelled, and with one whose deadline has passed: a store may give up
// (any error) or answer, but an answer must be right. An empty answer with
// no error is a wrong answer.
func (s *suite) testCancelledContext(t *testing.T) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancelExpired := context.WithDeadline(context.Background(), time.Unix(0, 0))
	defer cancelExpired()
	for _, c := range []struct {
		name string
		ctx  context.Context
	}{{"cancelled", cancelled}, {"deadline passed", expired}} {
		t.Run(c.name, func(t *testing.T) {
			t.Run("every method", func(t *testing.T) {
				for i := range s.f.rooms {
					s.checkEverything(t, c.ctx, i, mayFail)
				}
			})
			if walker, ok := s.store.(fedhistory.BackfillWalker); ok {
				t.Run("WalkBackfill", func(t *testing.T) {
					for _, rf := range s.f.rooms {
						for _, tc := range s.backfillCases(rf) {
							checkBackfill(t, c.ctx, walker, rf, tc, mayFail)
						}
					}
				})
			}
			if walker, ok := s.store.(fedhistory.MissingEventsWalker); ok {
				t.Run("WalkMissingEvents", func(t *testing.T) {
					for _, rf := range s.f.rooms {
						for _, tc := range s.missingEventsCases(rf) {
							checkMissingEvents(t, c.ctx, walker, rf, tc, mayFail)
						}
					}
				})
			}
			t.Run("unknown room is still not found", func(t *testing.T) {
				_, err := s.store.RoomVersion(c.ctx, unknownRoom)
				require.Error(t, err, "RoomVersion of an unknown room")
				_, err = s.store.CurrentState(c.ctx, unknownRoom, "hs1.example")
				require.Error(t, err, "CurrentState of an unknown room")
			})
		})
	}
}
