package memstore

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
)

// TestStateBeforeOption: AddOptions.StateBefore is taken when it names
// state events the store holds in the room, rejected ones excluded, one per
// (type, state_key), for an event that is no outlier; anything else fails
// with ErrInvalidStateBefore and adds nothing (the contract, on
// AddOptions.StateBefore and ErrInvalidStateBefore).
func TestStateBeforeOption(t *testing.T) {
	s := New()
	r := newTestRoom(t, "10")
	r.addSetup(s)
	auth := names("create", "pl", "alice")
	r.add(s, "rejectedHV", r.state(mallory, spec.MRoomHistoryVisibility, map[string]string{"history_visibility": "world_readable"},
		names("msg1"), names("create", "pl")), fedhistory.AddOptions{Rejected: true})
	r.add(s, "outlierJoin", r.member(eve, eve, "join", names("msg1"), names("create", "pl", "jr")), fedhistory.AddOptions{Outlier: true})
	other := newTestRoom(t, "10")
	other.addSetup(s)
	setup := r.ids(names("create", "alice", "pl", "jr", "hv"))
	// The events tested follow one the store never receives: without
	// StateBefore their state would be unknown.
	r.build("missing", r.message(alice, "missing", names("msg1"), auth))

	tests := []struct {
		name        string
		stateBefore []string
		outlier     bool
		wantErr     string // "" for success
	}{
		{name: "an event the store does not hold", stateBefore: append(slices.Clone(setup), "$unknown"), wantErr: "holds no event"},
		{name: "an event of another room", stateBefore: append(slices.Clone(setup[1:]), other.id("create")), wantErr: "another room"},
		{name: "not a state event", stateBefore: append(slices.Clone(setup), r.id("msg1")), wantErr: "not a state event"},
		{name: "a rejected event", stateBefore: append(slices.Clone(setup[:4]), r.id("rejectedHV")), wantErr: "rejected"},
		{name: "two events for one (type, state_key)", stateBefore: append(slices.Clone(setup), r.id("hv")), wantErr: "are both"},
		{name: "given for an outlier", stateBefore: setup, outlier: true, wantErr: "outlier"},
		{name: "an outlier state event is fine", stateBefore: append(slices.Clone(setup), r.id("outlierJoin"))},
		{name: "the empty state is a state", stateBefore: []string{}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := fmt.Sprint("event", i)
			r.build(name, r.message(alice, tc.name, names("missing"), auth))
			_, err := s.Add("10", r.json(name), fedhistory.AddOptions{StateBefore: tc.stateBefore, Outlier: tc.outlier})
			if tc.wantErr != "" {
				require.ErrorIs(t, err, fedhistory.ErrInvalidStateBefore)
				require.ErrorContains(t, err, tc.wantErr)
				_, err := s.EventByID(context.Background(), r.id(name))
				require.ErrorIs(t, err, fedhistory.ErrEventNotFound, "a failed add adds nothing")
				return
			}
			require.NoError(t, err)
			got, err := s.StateBefore(context.Background(), r.roomID, r.id(name))
			require.NoError(t, err)
			require.ElementsMatch(t, tc.stateBefore, got)
		})
	}
}

// TestStateBeforeOverridesDerivation: StateBefore wins over what the store
// would derive from prev_events, for a create event too.
func TestStateBeforeOverridesDerivation(t *testing.T) {
	s := New()
	r := newTestRoom(t, "11")
	r.addSetup(s)
	r.build("given", r.message(alice, "given", names("msg1"), names("create", "pl", "alice")))
	_, err := s.Add("11", r.json("given"), fedhistory.AddOptions{StateBefore: r.ids(names("create", "alice"))})
	require.NoError(t, err)
	vis, err := s.Visibility(context.Background(), r.roomID, "hs1.example", r.ids(names("given")))
	require.NoError(t, err)
	require.Equal(t, visibility("", map[string]string{alice: "join"}), vis[0].Before, "no history_visibility in the given state")
}

// TestStateBeforeOfAStateEvent: the spec's "state prior to considering any
// state changes induced by the requested event".
func TestStateBeforeOfAStateEvent(t *testing.T) {
	s := New()
	r := newTestRoom(t, "12")
	r.addSetup(s)
	ctx := context.Background()
	r.add(s, "hv2", r.state(alice, spec.MRoomHistoryVisibility, map[string]string{"history_visibility": "joined"},
		names("msg1"), names("pl", "alice")), fedhistory.AddOptions{})
	before, err := s.StateBefore(ctx, r.roomID, r.id("hv2"))
	require.NoError(t, err)
	require.ElementsMatch(t, r.ids(names("create", "alice", "pl", "jr", "hv")), before)
	r.add(s, "msg2", r.message(alice, "after", names("hv2"), names("pl", "alice")), fedhistory.AddOptions{})
	after, err := s.StateBefore(ctx, r.roomID, r.id("msg2"))
	require.NoError(t, err)
	require.ElementsMatch(t, r.ids(names("create", "alice", "pl", "jr", "hv2")), after)

	for _, id := range []string{"$unknown", r.id("create") + "x"} {
		_, err := s.StateBefore(ctx, r.roomID, id)
		require.ErrorIs(t, err, fedhistory.ErrEventNotFound)
	}
	_, err = s.StateBefore(ctx, "!other:hs1.example", r.id("msg2"))
	require.ErrorIs(t, err, fedhistory.ErrEventNotFound, "an event of another room")
}

// v1Room writes minimal room version 1 events, whose IDs are fields of
// their JSON: the store trusts its input, so they need no hashes or
// signatures, and a test can build hundreds of thousands of them quickly.
type v1Room struct {
	id    string
	depth int64
	last  string
}

func (r *v1Room) event(id, sender, eventType string, stateKey *string, content string, auth ...string) []byte {
	r.depth++
	fields := map[string]any{
		"event_id": id, "room_id": r.id, "sender": sender, "type": eventType, "content": json.RawMessage(content),
		"depth": r.depth, "origin_server_ts": 1_700_000_000_000 + r.depth, "hashes": map[string]string{"sha256": "x"},
		"prev_events": [][]any{}, "auth_events": [][]any{},
	}
	if r.last != "" {
		fields["prev_events"] = [][]any{{r.last, map[string]string{}}}
	}
	auths := [][]any{}
	for _, a := range auth {
		auths = append(auths, []any{a, map[string]string{}})
	}
	fields["auth_events"] = auths
	if stateKey != nil {
		fields["state_key"] = *stateKey
	}
	data, err := json.Marshal(fields)
	if err != nil {
		panic(err)
	}
	r.last = id
	return data
}

// addMembers adds a v1 room where n users are each invited, then join:
// every join has the invite among its auth events, so the auth chain of the
// room's state holds 2n member events.
func addMembers(t testing.TB, s *Store, n int) (room *v1Room, state []string) {
	room = &v1Room{id: "!big:hs1.example"}
	add := func(data []byte) {
		_, err := s.Add("1", data, fedhistory.AddOptions{})
		require.NoError(t, err)
	}
	add(room.event("$create:hs1.example", alice, spec.MRoomCreate, ptr(""), `{"creator":"`+alice+`"}`))
	add(room.event("$alice:hs1.example", alice, spec.MRoomMember, ptr(alice), `{"membership":"join"}`, "$create:hs1.example"))
	add(room.event("$pl:hs1.example", alice, spec.MRoomPowerLevels, ptr(""), `{"users":{"`+alice+`":100}}`,
		"$create:hs1.example", "$alice:hs1.example"))
	add(room.event("$jr:hs1.example", alice, spec.MRoomJoinRules, ptr(""), `{"join_rule":"invite"}`,
		"$create:hs1.example", "$pl:hs1.example", "$alice:hs1.example"))
	state = []string{"$create:hs1.example", "$alice:hs1.example", "$pl:hs1.example", "$jr:hs1.example"}
	for i := range n {
		user := fmt.Sprintf("@user%d:hs%d.example", i, i%50)
		invite, join := fmt.Sprintf("$invite%d:hs1.example", i), fmt.Sprintf("$join%d:hs1.example", i)
		add(room.event(invite, alice, spec.MRoomMember, &user, `{"membership":"invite"}`,
			"$create:hs1.example", "$pl:hs1.example", "$alice:hs1.example"))
		add(room.event(join, user, spec.MRoomMember, &user, `{"membership":"join"}`,
			"$create:hs1.example", "$pl:hs1.example", "$jr:hs1.example", invite))
		state = append(state, join)
	}
	return room, state
}

// TestAuthChainOfALargeState walks the auth chain of a whole state: every
// join, its invite, and the setup, each once; the answer holds no event
// that nothing reaches (the joins themselves are reached by none).
func TestAuthChainOfALargeState(t *testing.T) {
	n := 20_000
	if testing.Short() {
		n = 1000
	}
	s := New()
	room, state := addMembers(t, s, n)
	ctx := context.Background()
	got, err := s.StateBefore(ctx, room.id, room.last)
	require.NoError(t, err)
	want := append(slices.Clone(state[:len(state)-1]), fmt.Sprintf("$invite%d:hs1.example", n-1))
	slices.Sort(want)
	slices.Sort(got)
	require.Equal(t, want, got, "the state before the last join: the last user is invited")

	chain, err := s.AuthChain(ctx, room.id, state)
	require.NoError(t, err)
	require.Len(t, chain, 4+n, "the setup and every invite, once each")
	seen := map[string]bool{}
	for _, id := range chain {
		require.False(t, seen[id], "%s twice", id)
		seen[id] = true
		require.False(t, strings.HasPrefix(id, "$join"), "%s: no join is another event's auth event", id)
	}
}

// TestAuthChainStopsWhenCancelled: a huge walk notices its context.
func TestAuthChainStopsWhenCancelled(t *testing.T) {
	s := New()
	room, state := addMembers(t, s, ctxCheckEvery)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.AuthChain(ctx, room.id, state)
	require.ErrorIs(t, err, context.Canceled)
}

func TestAuthChainLinks(t *testing.T) {
	s := New()
	r := newTestRoom(t, "12")
	r.addSetup(s)
	ctx := context.Background()
	// Bob's join names an auth event the store does not hold yet: that
	// link never counts, even once the event arrives.
	r.build("late", r.state(alice, "m.room.topic", map[string]string{"topic": "late"}, names("msg1"), names("pl", "alice")))
	r.add(s, "bob", r.member(bob, bob, "join", names("msg1"), names("pl", "jr", "late")), fedhistory.AddOptions{})
	_, err := s.Add("12", r.json("late"), fedhistory.AddOptions{})
	require.NoError(t, err)
	r.add(s, "rejectedPL", r.state(bob, spec.MRoomPowerLevels, map[string]any{"users": map[string]int{bob: 100}},
		names("bob"), names("pl", "bob")), fedhistory.AddOptions{Rejected: true})
	r.add(s, "citesRejected", r.message(bob, "hm", names("rejectedPL"), names("pl", "bob", "rejectedPL")), fedhistory.AddOptions{})

	tests := []struct {
		name   string
		events []string
		want   []string
	}{
		{"v12: the create event is every other event's auth event", names("alice"), names("create")},
		{"a link to an event added later does not count", names("bob"), names("create", "pl", "jr", "alice")},
		{"rejected events are neither returned nor walked through", names("citesRejected"), names("create", "pl", "jr", "alice", "bob")},
		{"a rejected event contributes nothing", names("rejectedPL"), nil},
		{"the create event reaches nothing", names("create"), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.AuthChain(ctx, r.roomID, append(r.ids(tc.events), "$unknown"))
			require.NoError(t, err)
			require.ElementsMatch(t, r.ids(tc.want), got)
		})
	}
	got, err := s.AuthChain(ctx, "!other:hs1.example", r.ids(names("bob")))
	require.NoError(t, err)
	require.Empty(t, got, "events asked of another room contribute nothing")
}

// BenchmarkAuthChain walks the auth chain of a state of 10^5 members (an
// invite and a join each): about 2×10^5 events.
func BenchmarkAuthChain(b *testing.B) {
	s := New()
	room, state := addMembers(b, s, 100_000)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		chain, err := s.AuthChain(ctx, room.id, state)
		if err != nil || len(chain) != 100_004 {
			b.Fatal(len(chain), err)
		}
	}
}

// BenchmarkStateBefore lists a state of 10^5 members, the cost of a
// /state_ids answer: O(state), whatever the history.
func BenchmarkStateBefore(b *testing.B) {
	s := New()
	room, _ := addMembers(b, s, 100_000)
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		ids, err := s.StateBefore(ctx, room.id, room.last)
		if err != nil || len(ids) != 100_004 { // the setup, 99,999 joins and the last user's invite
			b.Fatal(len(ids), err)
		}
	}
}
