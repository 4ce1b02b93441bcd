package memstore

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strconv"
	"sync"
	"testing"

	"github.com/fedhistory/fedhistory"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/stretchr/testify/require"
)

var testedVersions = []string{"1", "3", "10", "11", "12"}

const aclEvilDenied = `{"allow":["*"],"allow_ip_literals":false,"deny":["evil.example"]}`

// buildForkedRoom adds a room with users on three servers, a server ACL, and
// a fork whose branches change the history visibility and bob's membership
// concurrently before they merge:
//
//	create … msg1 ─ bob ─ dave ─ acl ┬─ hvA (joined) ─ banA (alice bans bob) ──────────────┬─ merge
//	                                 └─ bobNick (bob's profile) ─ msgB ─ hvB (invited) ──────┘
//
// hvB is both deeper and later than hvA, so state resolution v1 (which
// prefers depth) and v2 (which orders by mainline, then timestamp) both pick
// it. The ban is a power event: v2 resolves it first and bob's concurrent
// profile change then fails auth against it; v1 lets the later of the two
// replace the earlier only if it passes auth, which the ban does and the
// profile change would not. Either way the spec says bob ends up banned.
func buildForkedRoom(t *testing.T, version string) (*Store, *testRoom) {
	s := New()
	r := newTestRoom(t, version)
	r.addSetup(s)
	alicesAuth := names("create", "pl", "alice")
	r.add(s, "bob", r.member(bob, bob, "join", names("msg1"), names("create", "pl", "jr")), fedhistory.AddOptions{})
	r.add(s, "dave", r.member(dave, dave, "join", names("bob"), names("create", "pl", "jr")), fedhistory.AddOptions{})
	r.add(s, "acl", r.state(alice, "m.room.server_acl", json.RawMessage(aclEvilDenied), names("dave"), alicesAuth), fedhistory.AddOptions{})

	r.add(s, "hvA", r.state(alice, spec.MRoomHistoryVisibility, map[string]string{"history_visibility": "joined"},
		names("acl"), alicesAuth), fedhistory.AddOptions{})
	r.add(s, "banA", r.member(alice, bob, "ban", names("hvA"), names("create", "pl", "alice", "bob")), fedhistory.AddOptions{})
	r.add(s, "bobNick", testEvent{
		sender: bob, typ: spec.MRoomMember, stateKey: ptr(bob),
		content: map[string]string{"membership": "join", "displayname": "Bob"},
		prev:    names("acl"), auth: names("create", "pl", "jr", "bob"),
	}, fedhistory.AddOptions{})
	r.add(s, "msgB", r.message(bob, "still here", names("bobNick"), names("create", "pl", "bobNick")), fedhistory.AddOptions{})
	r.add(s, "hvB", r.state(alice, spec.MRoomHistoryVisibility, map[string]string{"history_visibility": "invited"},
		names("msgB"), alicesAuth), fedhistory.AddOptions{})
	r.add(s, "merge", r.message(alice, "merged", names("banA", "hvB"), alicesAuth), fedhistory.AddOptions{})
	return s, r
}

func visibility(hv string, members map[string]string) fedhistory.VisibilityState {
	if members == nil {
		members = map[string]string{}
	}
	return fedhistory.VisibilityState{HistoryVisibility: hv, Memberships: members}
}

// knownFlags returns the Known field of each answer.
func knownFlags(answers []fedhistory.EventVisibility) []bool {
	known := make([]bool, len(answers))
	for i, v := range answers {
		known[i] = v.Known
	}
	return known
}

func TestVisibilityFollowsTheDAG(t *testing.T) {
	for _, version := range testedVersions {
		t.Run("room v"+version, func(t *testing.T) {
			s, r := buildForkedRoom(t, version)
			ctx := context.Background()
			tests := []struct {
				name   string
				server string
				event  string
				want   fedhistory.EventVisibility
			}{
				{
					name: "the create event starts from the empty state", server: "hs1.example", event: "create",
					want: fedhistory.EventVisibility{Before: visibility("", nil), After: visibility("", nil)},
				},
				{
					name: "the creator's join changes her own membership", server: "hs1.example", event: "alice",
					want: fedhistory.EventVisibility{Before: visibility("", nil), After: visibility("", map[string]string{alice: "join"})},
				},
				{
					name: "a message leaves the state unchanged", server: "hs1.example", event: "msg1",
					want: fedhistory.EventVisibility{
						Before: visibility("shared", map[string]string{alice: "join"}),
						After:  visibility("shared", map[string]string{alice: "join"}),
					},
				},
				{
					name: "bob's join, seen by his server (port included)", server: "other:8448", event: "bob",
					want: fedhistory.EventVisibility{Before: visibility("shared", nil), After: visibility("shared", map[string]string{bob: "join"})},
				},
				{
					name: "the same host without the port is another server", server: "other", event: "dave",
					want: fedhistory.EventVisibility{Before: visibility("shared", nil), After: visibility("shared", map[string]string{dave: "join"})},
				},
				{
					name: "branch A changes history visibility", server: "other:8448", event: "hvA",
					want: fedhistory.EventVisibility{
						Before: visibility("shared", map[string]string{bob: "join"}),
						After:  visibility("joined", map[string]string{bob: "join"}),
					},
				},
				{
					name: "branch B does not see branch A's changes", server: "other:8448", event: "hvB",
					want: fedhistory.EventVisibility{
						Before: visibility("shared", map[string]string{bob: "join"}),
						After:  visibility("invited", map[string]string{bob: "join"}),
					},
				},
				{
					name: "at the merge, resolution keeps the later visibility and the ban", server: "other:8448", event: "merge",
					want: fedhistory.EventVisibility{
						Before: visibility("invited", map[string]string{bob: "ban"}),
						After:  visibility("invited", map[string]string{bob: "ban"}),
					},
				},
				{
					name: "the merge keeps unconflicted state", server: "other", event: "merge",
					want: fedhistory.EventVisibility{
						Before: visibility("invited", map[string]string{dave: "join"}),
						After:  visibility("invited", map[string]string{dave: "join"}),
					},
				},
				{
					name: "a server without users has no memberships", server: "nobody.example", event: "merge",
					want: fedhistory.EventVisibility{Before: visibility("invited", nil), After: visibility("invited", nil)},
				},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					got, err := s.Visibility(ctx, r.roomID, tt.server, []string{r.id(tt.event)})
					require.NoError(t, err)
					want := tt.want
					want.Known = true
					require.Equal(t, []fedhistory.EventVisibility{want}, got)
				})
			}

			t.Run("unknown IDs and other rooms' events are not known", func(t *testing.T) {
				other := newTestRoom(t, version)
				other.addSetup(s)
				got, err := s.Visibility(ctx, r.roomID, "hs1.example", []string{"$unknown", other.id("msg1"), r.id("msg1")})
				require.NoError(t, err)
				require.Equal(t, []bool{false, false, true}, knownFlags(got))
				require.Equal(t, fedhistory.EventVisibility{}, got[0], "an unknown entry is the zero value")
				require.Equal(t, fedhistory.EventVisibility{}, got[1])
			})

			t.Run("answers follow the order asked, repeats included", func(t *testing.T) {
				ids := r.ids(names("merge", "create", "merge", "hvA", "create"))
				got, err := s.Visibility(ctx, r.roomID, "other", ids)
				require.NoError(t, err)
				require.Len(t, got, len(ids))
				for i, id := range ids {
					one, err := s.Visibility(ctx, r.roomID, "other", []string{id})
					require.NoError(t, err)
					require.Equal(t, one[0], got[i], "answer %d", i)
				}
				require.NotEqual(t, got[0], got[1], "the events asked have different states")
			})
		})
	}
}

func TestRejectedAndOutlierEvents(t *testing.T) {
	for _, version := range testedVersions {
		t.Run("room v"+version, func(t *testing.T) {
			s, r := buildForkedRoom(t, version)
			ctx := context.Background()
			// Mallory has no membership; pretend a homeserver found her
			// world_readable switch unauthorised.
			r.add(s, "rejected", r.state(mallory, spec.MRoomHistoryVisibility,
				map[string]string{"history_visibility": "world_readable"}, names("merge"), names("create", "pl")),
				fedhistory.AddOptions{Rejected: true})
			r.add(s, "afterRejected", r.message(alice, "after", names("rejected"), names("create", "pl", "alice")), fedhistory.AddOptions{})
			// Eve's join fetched as somebody's auth event: no state known.
			r.add(s, "outlier", r.member(eve, eve, "join", names("merge"), names("create", "pl", "jr")), fedhistory.AddOptions{Outlier: true})

			vis, err := s.Visibility(ctx, r.roomID, "third.example", r.ids(names("rejected", "afterRejected", "outlier")))
			require.NoError(t, err)
			invited := visibility("invited", nil)
			require.Equal(t, []fedhistory.EventVisibility{
				// A rejected event has a state, but does not change it.
				{Known: true, Before: invited, After: invited},
				{Known: true, Before: invited, After: invited},
				{}, // an outlier's state is not known
			}, vis, "outliers are not known and are not in any state")

			events, err := s.Events(ctx, r.roomID, r.ids(names("rejected", "outlier")))
			require.NoError(t, err)
			require.Len(t, events, 2)
			require.True(t, events[0].Rejected)
			require.False(t, events[0].Outlier)
			require.True(t, events[1].Outlier)
			require.False(t, events[1].Rejected)

			current, err := s.CurrentState(ctx, r.roomID, "third.example")
			require.NoError(t, err)
			require.Empty(t, current.Memberships)

			rm := s.rooms[r.roomID]
			// The merge keeps its place as a forward extremity: the rejected
			// event does not retire its prev_events (as in Synapse).
			require.ElementsMatch(t, r.ids(names("merge", "afterRejected")), slices.Collect(maps.Keys(rm.extremities)))
		})
	}
}

func TestCurrentState(t *testing.T) {
	for _, version := range testedVersions {
		t.Run("room v"+version, func(t *testing.T) {
			s, r := buildForkedRoom(t, version)
			ctx := context.Background()
			alicesAuth := names("create", "pl", "alice")

			current, err := s.CurrentState(ctx, r.roomID, "other:8448")
			require.NoError(t, err)
			require.JSONEq(t, aclEvilDenied, string(current.ServerACL))
			require.Equal(t, map[string]string{bob: "ban"}, current.Memberships)

			// Leave a fork open: dave leaves on one branch while alice
			// tightens the ACL on the other, later and deeper.
			r.add(s, "daveLeaves", r.member(dave, dave, "leave", names("merge"), names("create", "pl", "dave")), fedhistory.AddOptions{})
			r.add(s, "msgC", r.message(alice, "meanwhile", names("merge"), alicesAuth), fedhistory.AddOptions{})
			const aclOtherDenied = `{"allow":["*"],"allow_ip_literals":false,"deny":["evil.example","other"]}`
			r.add(s, "acl2", r.state(alice, "m.room.server_acl", json.RawMessage(aclOtherDenied), names("msgC"), alicesAuth), fedhistory.AddOptions{})

			for range 2 { // the second call answers from the cache
				current, err = s.CurrentState(ctx, r.roomID, "other")
				require.NoError(t, err)
				require.JSONEq(t, aclOtherDenied, string(current.ServerACL))
				require.Equal(t, map[string]string{dave: "leave"}, current.Memberships)
			}

			// A new event retires the cached resolution.
			r.add(s, "inviteDave", r.member(alice, dave, "invite", names("acl2", "daveLeaves"), names("create", "pl", "alice", "daveLeaves")), fedhistory.AddOptions{})
			current, err = s.CurrentState(ctx, r.roomID, "other")
			require.NoError(t, err)
			require.Equal(t, map[string]string{dave: "invite"}, current.Memberships)
			require.JSONEq(t, aclOtherDenied, string(current.ServerACL))

			current, err = s.CurrentState(ctx, r.roomID, "hs1.example")
			require.NoError(t, err)
			require.Equal(t, map[string]string{alice: "join"}, current.Memberships)
		})
	}
}

func TestCurrentStateWithoutACL(t *testing.T) {
	s := New()
	r := newTestRoom(t, "10")
	r.addSetup(s)
	current, err := s.CurrentState(context.Background(), r.roomID, "hs1.example")
	require.NoError(t, err)
	require.Nil(t, current.ServerACL)
	require.Equal(t, map[string]string{alice: "join"}, current.Memberships)
}

func TestUnknownRoom(t *testing.T) {
	s := New()
	r := newTestRoom(t, "12")
	r.addSetup(s)
	ctx := context.Background()

	_, err := s.RoomVersion(ctx, "!nope:hs1.example")
	require.ErrorIs(t, err, fedhistory.ErrRoomNotFound)
	_, err = s.CurrentState(ctx, "!nope:hs1.example", "hs1.example")
	require.ErrorIs(t, err, fedhistory.ErrRoomNotFound)

	events, err := s.Events(ctx, "!nope:hs1.example", []string{r.id("msg1")})
	require.NoError(t, err)
	require.Empty(t, events)
	vis, err := s.Visibility(ctx, "!nope:hs1.example", "hs1.example", []string{r.id("msg1")})
	require.NoError(t, err)
	require.Equal(t, []fedhistory.EventVisibility{{}}, vis, "one answer, not known")

	version, err := s.RoomVersion(ctx, r.roomID)
	require.NoError(t, err)
	require.Equal(t, "12", version)
}

func TestEventMetadata(t *testing.T) {
	for _, version := range testedVersions {
		t.Run("room v"+version, func(t *testing.T) {
			s := New()
			r := newTestRoom(t, version)
			r.addSetup(s)
			redaction := testEvent{
				sender: alice, typ: "m.room.redaction", content: map[string]string{},
				prev: names("msg1"), auth: names("create", "pl", "alice"),
			}
			if version == "11" || version == "12" { // room version 11 moved "redacts" into content
				redaction.content = map[string]string{"redacts": r.id("msg1")}
			} else {
				redaction.redacts = "msg1"
			}
			r.add(s, "redaction", redaction, fedhistory.AddOptions{})
			sentAt := r.now // the test room's clock when it built the redaction

			events, err := s.Events(context.Background(), r.roomID, []string{r.id("redaction"), r.id("hv"), "$unknown"})
			require.NoError(t, err)
			require.Len(t, events, 2)
			red, hv := events[0], events[1]

			require.Equal(t, fedhistory.Event{
				ID:             r.id("redaction"),
				RoomID:         r.roomID,
				Depth:          7,
				OriginServerTS: sentAt.UnixMilli(),
				PrevEvents:     []string{r.id("msg1")},
				Type:           "m.room.redaction",
				Sender:         alice,
				Redacts:        r.id("msg1"),
				JSON:           r.json("redaction"),
			}, *red)
			require.Equal(t, "m.room.history_visibility", hv.Type)
			require.Equal(t, ptr(""), hv.StateKey)
			require.Empty(t, hv.Redacts)
			require.Equal(t, int64(5), hv.Depth)
			if version == "12" {
				require.NotContains(t, r.roomID, ":", "room v12 IDs have no server part")
			}
		})
	}
}

func TestRedactsLocationDependsOnRoomVersion(t *testing.T) {
	// Room version 11 moved "redacts" into content; a top-level key is not
	// the target any more, and before 11 content.redacts is not either.
	tests := []struct {
		version   string
		topLevel  bool
		inContent bool
		wantFound bool
	}{
		{version: "10", topLevel: true, wantFound: true},
		{version: "10", inContent: true, wantFound: false},
		{version: "11", inContent: true, wantFound: true},
		{version: "11", topLevel: true, wantFound: false},
	}
	for _, tt := range tests {
		s := New()
		r := newTestRoom(t, tt.version)
		r.addSetup(s)
		ev := testEvent{
			sender: alice, typ: "m.room.redaction", content: map[string]string{},
			prev: names("msg1"), auth: names("create", "pl", "alice"),
		}
		if tt.topLevel {
			ev.redacts = "msg1"
		}
		if tt.inContent {
			ev.content = map[string]string{"redacts": r.id("msg1")}
		}
		r.add(s, "redaction", ev, fedhistory.AddOptions{})
		events, err := s.Events(context.Background(), r.roomID, []string{r.id("redaction")})
		require.NoError(t, err)
		require.Len(t, events, 1)
		if tt.wantFound {
			require.Equal(t, r.id("msg1"), events[0].Redacts, "v%s top-level=%v content=%v", tt.version, tt.topLevel, tt.inContent)
		} else {
			require.Empty(t, events[0].Redacts, "v%s top-level=%v content=%v", tt.version, tt.topLevel, tt.inContent)
		}
	}
}

func TestAddErrors(t *testing.T) {
	s := New()
	r := newTestRoom(t, "10")
	r.addSetup(s)

	_, err := s.Add("10", r.json("msg1"), fedhistory.AddOptions{})
	require.ErrorIs(t, err, fedhistory.ErrDuplicateEvent)

	r.build("other-version", r.message(alice, "hi", names("msg1"), names("create", "pl", "alice")))
	_, err = s.Add("9", r.json("other-version"), fedhistory.AddOptions{})
	require.ErrorIs(t, err, fedhistory.ErrRoomVersionMismatch)

	_, err = s.Add("org.matrix.msc4014", r.json("other-version"), fedhistory.AddOptions{})
	require.ErrorIs(t, err, fedhistory.ErrUnsupportedRoomVersion)
	_, err = s.Add("13", r.json("other-version"), fedhistory.AddOptions{})
	require.ErrorIs(t, err, fedhistory.ErrUnsupportedRoomVersion)

	for _, bad := range []string{``, `{`, `[]`, `{"type":"m.room.message"}`, `{"room_id":"no-sigil","type":"x"}`} {
		_, err = s.Add("10", []byte(bad), fedhistory.AddOptions{})
		require.ErrorIs(t, err, fedhistory.ErrInvalidEvent, "input %q", bad)
	}
	// A v1 event needs its event_id.
	_, err = s.Add("1", []byte(`{"room_id":"!r:hs1.example","type":"m.room.message","sender":"@a:hs1.example","prev_events":[],"auth_events":[],"content":{}}`), fedhistory.AddOptions{})
	require.ErrorIs(t, err, fedhistory.ErrInvalidEvent)

	// A failed add leaves nothing behind.
	events, err := s.Events(context.Background(), r.roomID, []string{r.id("other-version")})
	require.NoError(t, err)
	require.Empty(t, events)
}

func TestJSONIsCopiedOnce(t *testing.T) {
	s := New()
	r := newTestRoom(t, "3")
	r.addSetup(s)
	r.build("msg2", r.message(alice, "copy me", names("msg1"), names("create", "pl", "alice")))
	input := []byte(string(r.json("msg2")))
	want := string(input)
	_, err := s.Add("3", input, fedhistory.AddOptions{})
	require.NoError(t, err)
	for i := range input {
		input[i] = 'x' // the caller may reuse its buffer
	}
	events, err := s.Events(context.Background(), r.roomID, []string{r.id("msg2")})
	require.NoError(t, err)
	require.Equal(t, want, string(events[0].JSON))
}

// TestGapsInTheDAG follows "State" on fedhistory.EventStore: the store
// never invents the state after a gap, and the state of an event never
// changes once it is stored, not even when the gap is filled later.
func TestGapsInTheDAG(t *testing.T) {
	s := New()
	r := newTestRoom(t, "11")
	r.addSetup(s)
	ctx := context.Background()
	auth := names("create", "pl", "alice")
	r.build("missing", r.message(alice, "not here yet", names("msg1"), auth))
	r.add(s, "afterGap", r.message(alice, "after a gap", names("missing", "msg1"), auth), fedhistory.AddOptions{})
	r.add(s, "orphan", r.message(alice, "orphan", names("missing"), auth), fedhistory.AddOptions{})
	r.add(s, "afterUnknown", r.message(alice, "after an unknown state", names("orphan"), auth), fedhistory.AddOptions{})
	stateAtMsg1, err := s.StateBefore(ctx, r.roomID, r.id("msg1"))
	require.NoError(t, err)
	r.add(s, "given", r.message(alice, "given its state", names("missing"), auth), fedhistory.AddOptions{StateBefore: stateAtMsg1})

	vis, err := s.Visibility(ctx, r.roomID, "hs1.example", r.ids(names("afterGap", "orphan", "afterUnknown", "given")))
	require.NoError(t, err)
	require.Equal(t, []bool{false, false, false, true}, knownFlags(vis),
		"a prev_event the store does not hold, or one whose state is unknown, leaves the state unknown unless StateBefore gives it")
	require.Equal(t, visibility("shared", map[string]string{alice: "join"}), vis[3].Before)
	for _, name := range names("afterGap", "orphan", "afterUnknown") {
		_, err := s.StateBefore(ctx, r.roomID, r.id(name))
		require.ErrorIs(t, err, fedhistory.ErrStateUnknown, name)
	}
	_, err = s.CurrentState(ctx, r.roomID, "hs1.example")
	require.ErrorIs(t, err, fedhistory.ErrStateUnknown, "forward extremities with an unknown state make the current state unknown")

	// When the missing event arrives it already has children, so it is no
	// forward extremity; and its children's state stays unknown.
	_, err = s.Add("11", r.json("missing"), fedhistory.AddOptions{})
	require.NoError(t, err)
	require.ElementsMatch(t, r.ids(names("afterGap", "afterUnknown", "given")), slices.Collect(maps.Keys(s.rooms[r.roomID].extremities)))
	vis, err = s.Visibility(ctx, r.roomID, "hs1.example", r.ids(names("missing", "afterGap")))
	require.NoError(t, err)
	require.Equal(t, []bool{true, false}, knownFlags(vis), "an event's state never changes once it is stored")
}

// TestUnknownStateWithoutPrevEvents: only a create event may lack
// prev_events; any other event without them has nothing to derive a state
// from.
func TestUnknownStateWithoutPrevEvents(t *testing.T) {
	s := New()
	r := newTestRoom(t, "10")
	r.addSetup(s)
	r.add(s, "noPrevs", r.message(alice, "from nowhere", names(), names("create", "pl", "alice")), fedhistory.AddOptions{})
	vis, err := s.Visibility(context.Background(), r.roomID, "hs1.example", r.ids(names("create", "noPrevs")))
	require.NoError(t, err)
	require.Equal(t, []bool{true, false}, knownFlags(vis))
}

func TestCurrentStateOfOutliersOnly(t *testing.T) {
	s := New()
	r := newTestRoom(t, "10")
	r.build("create", testEvent{sender: alice, typ: spec.MRoomCreate, stateKey: ptr(""),
		content: map[string]any{"room_version": "10", "creator": alice}})
	_, err := s.Add("10", r.json("create"), fedhistory.AddOptions{Outlier: true})
	require.NoError(t, err)
	_, err = s.RoomVersion(context.Background(), r.roomID)
	require.NoError(t, err, "the store holds the room")
	_, err = s.CurrentState(context.Background(), r.roomID, "hs1.example")
	require.ErrorIs(t, err, fedhistory.ErrStateUnknown, "a room of outliers only has no forward extremity to take the state from")
}

func TestErasedUsers(t *testing.T) {
	s := New()
	s.EraseUser(bob)
	s.EraseUser(eve)
	got, err := s.ErasedUsers(context.Background(), []string{alice, bob, dave})
	require.NoError(t, err)
	require.Equal(t, map[string]bool{bob: true}, got)
}

// TestConcurrentReads runs every read method while events are being added,
// forks resolved included; run it with -race.
func TestConcurrentReads(t *testing.T) {
	for _, version := range []string{"1", "12"} {
		t.Run("room v"+version, func(t *testing.T) {
			s, r := buildForkedRoom(t, version)
			ctx := context.Background()
			// Build the events first: the builder is not safe for concurrent use.
			auth := names("create", "pl", "alice")
			var toAdd [][]byte
			tip := "merge"
			for i := range 20 {
				left, right, join := "l"+strconv.Itoa(i), "r"+strconv.Itoa(i), "j"+strconv.Itoa(i)
				r.build(left, r.message(alice, "left", names(tip), auth))
				r.build(right, r.state(alice, spec.MRoomHistoryVisibility,
					map[string]string{"history_visibility": []string{"shared", "joined"}[i%2]}, names(tip), auth))
				r.build(join, r.message(alice, "join", names(left, right), auth))
				toAdd = append(toAdd, r.json(left), r.json(right), r.json(join))
				tip = join
				if i == 10 {
					// A redaction, published while readers hand out its
					// target.
					r.build("redaction", r.redaction(alice, "msg1", names(tip), auth))
					toAdd = append(toAdd, r.json("redaction"))
					tip = "redaction"
				}
			}
			readIDs := r.ids(names("msg1", "merge", "hvA", "hvB", "banA"))

			var wg sync.WaitGroup
			done := make(chan struct{})
			for range 4 {
				wg.Go(func() {
					for {
						select {
						case <-done:
							return
						default:
						}
						events, err := s.Events(ctx, r.roomID, readIDs)
						require.NoError(t, err)
						require.Len(t, events, len(readIDs))
						msg1, err := s.EventByID(ctx, readIDs[0])
						require.NoError(t, err)
						require.True(t, msg1.Redacted || !events[0].Redacted, "once redacted, an event stays redacted")
						_, err = s.EventAtTimestamp(ctx, r.roomID, msg1.OriginServerTS, fedhistory.Forward)
						require.NoError(t, err)
						vis, err := s.Visibility(ctx, r.roomID, "other:8448", readIDs)
						require.NoError(t, err)
						require.Equal(t, map[string]string{bob: "ban"}, vis[slices.Index(readIDs, r.id("merge"))].Before.Memberships)
						current, err := s.CurrentState(ctx, r.roomID, "other:8448")
						require.NoError(t, err)
						require.Equal(t, map[string]string{bob: "ban"}, current.Memberships)
						_, err = s.RoomVersion(ctx, r.roomID)
						require.NoError(t, err)
					}
				})
			}
			for _, pdu := range toAdd {
				_, err := s.Add(version, pdu, fedhistory.AddOptions{})
				require.NoError(t, err)
			}
			close(done)
			wg.Wait()
			msg1, err := s.EventByID(ctx, r.id("msg1"))
			require.NoError(t, err)
			require.True(t, msg1.Redacted)
		})
	}
}
