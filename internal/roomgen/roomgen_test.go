package roomgen_test

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/roomgen"
)

var stableVersions = []string{"1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}

// richOptions exercise every feature of Generate at once.
func richOptions(version string) roomgen.Options {
	return roomgen.Options{
		Version:                  version,
		Events:                   80,
		ForkEvery:                7,
		Seed:                     42,
		OtherServers:             []string{"hs2.example", "hs3.example:8448"},
		MessageBytes:             700,
		HistoryVisibilityChanges: true,
		ServerACL:                true,
		RejectedEvery:            9,
	}
}

// keyVerifier verifies signatures with the keys Generate reports.
type keyVerifier struct {
	keyID string
	keys  map[string]ed25519.PublicKey
}

func (v keyVerifier) VerifyJSONs(_ context.Context, requests []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	results := make([]gomatrixserverlib.VerifyJSONResult, len(requests))
	for i, req := range requests {
		key, ok := v.keys[string(req.ServerName)]
		if !ok {
			results[i].Error = fmt.Errorf("no key for %s", req.ServerName)
			continue
		}
		results[i].Error = gomatrixserverlib.VerifyJSON(string(req.ServerName), gomatrixserverlib.KeyID(v.keyID), key, req.Message)
	}
	return results, nil
}

func userIDForSender(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
	return spec.NewUserID(string(senderID), true)
}

// checkRoom re-parses every event of room as untrusted input and checks
// what a receiving server checks: event ID, room ID, content hash,
// signatures, topological order, depth, and the auth rules against the
// event's own auth_events. It returns the parsed events by ID.
func checkRoom(t *testing.T, room *roomgen.Room) map[string]gomatrixserverlib.PDU {
	t.Helper()
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(room.Version))
	require.NoError(t, err)
	verifier := keyVerifier{keyID: room.KeyID, keys: room.ServerKeys}
	require.Equal(t, room.PublicKey, room.ServerKeys[room.ServerName])

	parsed := map[string]gomatrixserverlib.PDU{}
	depths := map[string]int64{}
	var create gomatrixserverlib.PDU
	for i, ev := range room.Events {
		pdu, err := verImpl.NewEventFromUntrustedJSON(ev.JSON)
		require.NoError(t, err, "event %d", i)
		require.Equal(t, ev.ID, pdu.EventID(), "event %d", i)
		require.False(t, pdu.Redacted(), "event %d: content hash must match", i)
		require.Equal(t, room.ID, pdu.RoomID().String(), "event %d", i)
		require.NoError(t, gomatrixserverlib.VerifyEventSignatures(context.Background(), pdu, verifier, userIDForSender), "event %d", i)

		// Topological order, and depth = max(depth of prev_events) + 1.
		wantDepth := int64(0)
		for _, prev := range pdu.PrevEventIDs() {
			d, ok := depths[prev]
			require.True(t, ok, "event %d: prev event %s must come earlier", i, prev)
			wantDepth = max(wantDepth, d)
		}
		wantDepth++
		require.Equal(t, wantDepth, pdu.Depth(), "event %d", i)
		require.Equal(t, wantDepth, ev.Depth, "event %d", i)

		// The auth rules, against the event's auth_events.
		var authEvents []gomatrixserverlib.PDU
		for _, id := range pdu.AuthEventIDs() {
			authEvent, ok := parsed[id]
			require.True(t, ok, "event %d: auth event %s must come earlier", i, id)
			authEvents = append(authEvents, authEvent)
		}
		if create != nil && verImpl.DomainlessRoomIDs() {
			// gomatrixserverlib's AuthEventIDs adds the create event that
			// the room ID implies; the PDU itself must not list it.
			var raw struct {
				AuthEvents []string `json:"auth_events"`
			}
			require.NoError(t, json.Unmarshal(ev.JSON, &raw))
			require.NotContains(t, raw.AuthEvents, create.EventID(), "event %d: v12 never lists the create event", i)
			require.Contains(t, pdu.AuthEventIDs(), create.EventID())
		}
		provider, err := gomatrixserverlib.NewAuthEvents(authEvents)
		require.NoError(t, err)
		allowed := gomatrixserverlib.Allowed(pdu, provider, userIDForSender)
		if ev.Rejected {
			require.Error(t, allowed, "event %d is marked rejected", i)
		} else {
			require.NoError(t, allowed, "event %d", i)
		}

		if pdu.Type() == spec.MRoomCreate {
			create = pdu
		}
		parsed[ev.ID] = pdu
		depths[ev.ID] = pdu.Depth()
	}
	return parsed
}

func TestGenerateEveryStableVersion(t *testing.T) {
	for _, version := range stableVersions {
		t.Run("v"+version, func(t *testing.T) {
			room, err := roomgen.Generate(richOptions(version))
			require.NoError(t, err)
			require.Equal(t, version, room.Version)
			require.Len(t, room.Events, 80)
			parsed := checkRoom(t, room)

			rejected := 0
			for _, ev := range room.Events {
				if ev.Rejected {
					rejected++
				}
			}
			require.Positive(t, rejected)

			// Versions 1 and 2 carry event_id in the PDU; later versions
			// derive it from the reference hash and must not carry it.
			var fields map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(room.Events[1].JSON, &fields))
			_, hasEventID := fields["event_id"]
			require.Equal(t, version == "1" || version == "2", hasEventID)

			create := parsed[room.Events[0].ID]
			require.Equal(t, spec.MRoomCreate, create.Type())
			var createContent map[string]any
			require.NoError(t, json.Unmarshal(create.Content(), &createContent))
			require.Equal(t, version, createContent["room_version"])
		})
	}
}

func TestGenerateSetup(t *testing.T) {
	room, err := roomgen.Generate(roomgen.Options{
		Events:       9,
		OtherServers: []string{"hs2.example", "hs3.example:8448"},
		ServerACL:    true,
	})
	require.NoError(t, err)
	parsed := checkRoom(t, room)

	type typed struct{ Type, StateKey, Sender string }
	var got []typed
	for _, ev := range room.Events {
		pdu := parsed[ev.ID]
		sk := ""
		if pdu.StateKey() != nil {
			sk = *pdu.StateKey()
		}
		got = append(got, typed{pdu.Type(), sk, string(pdu.SenderID())})
	}
	require.Equal(t, []typed{
		{"m.room.create", "", "@alice:hs1.example"},
		{"m.room.member", "@alice:hs1.example", "@alice:hs1.example"},
		{"m.room.power_levels", "", "@alice:hs1.example"},
		{"m.room.join_rules", "", "@alice:hs1.example"},
		{"m.room.history_visibility", "", "@alice:hs1.example"},
		{"m.room.member", "@bob:hs2.example", "@bob:hs2.example"},
		{"m.room.member", "@bob:hs3.example:8448", "@bob:hs3.example:8448"},
		{"m.room.server_acl", "", "@alice:hs1.example"},
		{"m.room.message", "", got[8].Sender},
	}, got)
	require.JSONEq(t, `{"allow":["*"],"deny":["evil.example"],"allow_ip_literals":false}`, string(parsed[room.Events[7].ID].Content()))
	require.JSONEq(t, `{"history_visibility":"shared"}`, string(parsed[room.Events[4].ID].Content()))
	require.JSONEq(t, `{"join_rule":"public"}`, string(parsed[room.Events[3].ID].Content()))
}

func TestGenerateIsDeterministic(t *testing.T) {
	first, err := roomgen.Generate(richOptions("1"))
	require.NoError(t, err)
	again, err := roomgen.Generate(richOptions("1"))
	require.NoError(t, err)
	require.Equal(t, first, again)

	for _, version := range []string{"1", "10", "12"} {
		opts := richOptions(version)
		a, err := roomgen.Generate(opts)
		require.NoError(t, err)
		b, err := roomgen.Generate(opts)
		require.NoError(t, err)
		require.Equal(t, a, b, "v%s: same seed, same room", version)

		opts.Seed++
		c, err := roomgen.Generate(opts)
		require.NoError(t, err)
		require.NotEqual(t, a.Events[len(a.Events)-1].ID, c.Events[len(c.Events)-1].ID, "v%s: another seed, another room", version)
	}
}

func TestGenerateForks(t *testing.T) {
	tests := []struct {
		name      string
		forkEvery int
		wantMerge bool
	}{
		{name: "linear", forkEvery: 0, wantMerge: false},
		{name: "fork every 5", forkEvery: 5, wantMerge: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			room, err := roomgen.Generate(roomgen.Options{Events: 60, ForkEvery: tt.forkEvery, Seed: 3})
			require.NoError(t, err)
			parsed := checkRoom(t, room)

			merges, children := 0, map[string]int{}
			for _, ev := range room.Events {
				prevs := parsed[ev.ID].PrevEventIDs()
				require.LessOrEqual(t, len(prevs), 2)
				if len(prevs) == 2 {
					merges++
				}
				for _, prev := range prevs {
					children[prev]++
				}
			}
			forks := 0
			for _, n := range children {
				if n > 1 {
					forks++
				}
			}
			if tt.wantMerge {
				require.Positive(t, merges, "some events merge two branches")
				require.Equal(t, merges, forks, "every fork merges again")
			} else {
				require.Zero(t, merges)
				require.Zero(t, forks)
			}
		})
	}
}

func TestGenerateV12RoomID(t *testing.T) {
	room, err := roomgen.Generate(roomgen.Options{Version: "12", Events: 10})
	require.NoError(t, err)
	create := room.Events[0]
	// The room ID is the create event's ID with the sigil "!" (spec:
	// rooms/v12), and the create event has no room_id.
	require.Equal(t, "!"+create.ID[1:], room.ID)
	var fields map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(create.JSON, &fields))
	require.NotContains(t, fields, "room_id")
	for _, ev := range room.Events[1:] {
		require.NoError(t, json.Unmarshal(ev.JSON, &fields))
		require.JSONEq(t, `"`+room.ID+`"`, string(fields["room_id"]))
	}
	checkRoom(t, room)
}

func TestGenerateMessageBytes(t *testing.T) {
	for _, size := range []int{1024, 4096} {
		room, err := roomgen.Generate(roomgen.Options{Events: 30, MessageBytes: size})
		require.NoError(t, err)
		for _, ev := range room.Events[6:] {
			require.InDelta(t, size, len(ev.JSON), float64(size)/10, "message events are about MessageBytes long")
		}
	}
}

func TestGenerateProgress(t *testing.T) {
	var calls [][2]int
	_, err := roomgen.Generate(roomgen.Options{Events: 2500, Progress: func(done, total int) {
		calls = append(calls, [2]int{done, total})
	}})
	require.NoError(t, err)
	require.Equal(t, [][2]int{{1000, 2500}, {2000, 2500}, {2500, 2500}}, calls)
}

func TestGenerateWithKey(t *testing.T) {
	_, key, err := ed25519.GenerateKey(nil)
	require.NoError(t, err)
	room, err := roomgen.Generate(roomgen.Options{Events: 12, Key: key, KeyID: "ed25519:abc", ServerName: "example.org"})
	require.NoError(t, err)
	require.Equal(t, key.Public(), room.PublicKey)
	require.Equal(t, "ed25519:abc", room.KeyID)
	require.Equal(t, "example.org", room.ServerName)
	checkRoom(t, room)
}

func TestGenerateErrors(t *testing.T) {
	tests := []struct {
		name string
		opts roomgen.Options
	}{
		{name: "unknown version", opts: roomgen.Options{Version: "99", Events: 20}},
		{name: "unstable version", opts: roomgen.Options{Version: "org.matrix.hydra.11", Events: 20}},
		{name: "fewer events than the setup", opts: roomgen.Options{Events: 5}},
		{name: "short key", opts: roomgen.Options{Events: 20, Key: ed25519.PrivateKey{1, 2, 3}}},
		{name: "invalid other server", opts: roomgen.Options{Events: 20, OtherServers: []string{""}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := roomgen.Generate(tt.opts)
			require.Error(t, err)
		})
	}
}

// TestBuilderScenario writes an exact history: a user of hs2 joins, the
// history visibility becomes "joined", the hs2 user leaves and a message
// follows.
func TestBuilderScenario(t *testing.T) {
	for _, version := range stableVersions {
		t.Run("v"+version, func(t *testing.T) {
			b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: version})
			require.NoError(t, err)
			require.NoError(t, b.StandardSetup())
			alice, bob := b.Creator(), "@bob:hs2.example"

			join, err := b.Join(bob)
			require.NoError(t, err)
			_, err = b.Message(bob, "hello")
			require.NoError(t, err)
			visibility, err := b.HistoryVisibility(alice, "joined")
			require.NoError(t, err)
			msg, err := b.Message(alice, "secret")
			require.NoError(t, err)
			_, err = b.Redact(alice, msg.ID)
			require.NoError(t, err)
			leave, err := b.Leave(bob)
			require.NoError(t, err)
			last, err := b.Message(alice, "after bob left")
			require.NoError(t, err)

			room := b.Room()
			require.Len(t, room.Events, 12)
			parsed := checkRoom(t, room)
			require.Equal(t, []string{leave.ID}, parsed[last.ID].PrevEventIDs())
			require.Contains(t, parsed[leave.ID].AuthEventIDs(), join.ID, "a leave is authorised by the user's join")
			require.NotContains(t, parsed[last.ID].AuthEventIDs(), visibility.ID, "history visibility does not authorise messages")
			require.Equal(t, []string{last.ID}, b.Head())
		})
	}
}

// TestBuilderMergeResolvesState forks the DAG, changes the history
// visibility differently on each branch and merges: the merge event has
// both heads as prev_events, and a message after it is still authorised.
func TestBuilderMergeResolvesState(t *testing.T) {
	for _, version := range []string{"1", "2", "10", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: version, Seed: 7})
			require.NoError(t, err)
			require.NoError(t, b.StandardSetup())
			alice, bob := b.Creator(), "@bob:hs2.example"

			other := b.Fork()
			left, err := b.HistoryVisibility(alice, "joined")
			require.NoError(t, err)
			require.NoError(t, b.Branch(other))
			right, err := b.Join(bob)
			require.NoError(t, err)
			require.NoError(t, b.Merge())
			require.ElementsMatch(t, []string{left.ID, right.ID}, b.Head())
			resolved, _ := b.StateEvent(spec.MRoomHistoryVisibility, "")
			require.Equal(t, left.ID, resolved, "a change made on one branch survives the merge")
			resolved, _ = b.StateEvent(spec.MRoomMember, bob)
			require.Equal(t, right.ID, resolved)

			merge, err := b.Message(bob, "bob's join survives the merge")
			require.NoError(t, err)
			parsed := checkRoom(t, b.Room())
			require.ElementsMatch(t, []string{left.ID, right.ID}, parsed[merge.ID].PrevEventIDs())
			require.Contains(t, parsed[merge.ID].AuthEventIDs(), right.ID)
			require.Equal(t, merge.Depth, max(left.Depth, right.Depth)+1)
		})
	}
}

func TestBuilderRejectedAndOutlier(t *testing.T) {
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{})
	require.NoError(t, err)
	require.NoError(t, b.StandardSetup())

	// A rejected event joins the DAG; its state change does not count.
	rejected, err := b.Event(roomgen.EventSpec{
		Sender: "@mallory:evil.example", Type: spec.MRoomHistoryVisibility, StateKey: new(string),
		Content: map[string]string{"history_visibility": "world_readable"}, Rejected: true,
	})
	require.NoError(t, err)
	require.Equal(t, []string{rejected.ID}, b.Head())

	// An outlier is not built upon.
	outlier, err := b.Event(roomgen.EventSpec{Sender: b.Creator(), Type: "m.room.message", Content: map[string]string{"body": "x"}, Outlier: true})
	require.NoError(t, err)
	require.Equal(t, []string{rejected.ID}, b.Head())

	after, err := b.Message(b.Creator(), "after")
	require.NoError(t, err)
	room := b.Room()
	parsed := checkRoom(t, room)
	require.Equal(t, []string{rejected.ID}, parsed[after.ID].PrevEventIDs())
	require.True(t, room.Events[len(room.Events)-2].Outlier)
	require.Equal(t, outlier.ID, room.Events[len(room.Events)-2].ID)
}

func TestBuilderErrors(t *testing.T) {
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{})
	require.NoError(t, err)
	require.NoError(t, b.StandardSetup())

	_, err = b.Event(roomgen.EventSpec{Sender: b.Creator(), Type: "m.room.message", PrevEvents: []string{"$nope"}})
	require.ErrorIs(t, err, roomgen.ErrUnknownEvent)
	_, err = b.Event(roomgen.EventSpec{Sender: b.Creator(), Type: "m.room.message", AuthEvents: []string{"$nope"}})
	require.ErrorIs(t, err, roomgen.ErrUnknownEvent)
	_, err = b.Message("not a user", "x")
	require.Error(t, err)
	require.Error(t, b.Branch(1))
	require.Error(t, b.Branch(-1))
	_, err = roomgen.NewBuilder(roomgen.BuilderOptions{ServerName: "hs1.example", Creator: "@alice:elsewhere.example"})
	require.Error(t, err)
	require.Len(t, b.Events(), 5, "failed events are not appended")
}

func TestBuilderExplicitPrevEvents(t *testing.T) {
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: "11"})
	require.NoError(t, err)
	require.NoError(t, b.StandardSetup())
	events := b.Events()
	a, err := b.Message(b.Creator(), "a")
	require.NoError(t, err)
	// Build on an older event: the DAG gets a second extremity.
	side, err := b.Event(roomgen.EventSpec{Sender: b.Creator(), Type: "m.room.message", Content: map[string]string{"body": "side"},
		PrevEvents: []string{events[len(events)-1].ID}})
	require.NoError(t, err)
	require.Equal(t, events[len(events)-1].Depth+1, side.Depth)
	merge, err := b.Event(roomgen.EventSpec{Sender: b.Creator(), Type: "m.room.message", Content: map[string]string{"body": "m"},
		PrevEvents: []string{a.ID, side.ID}})
	require.NoError(t, err)
	require.Equal(t, a.Depth+1, merge.Depth)
	parsed := checkRoom(t, b.Room())
	require.True(t, slices.Equal([]string{a.ID, side.ID}, parsed[merge.ID].PrevEventIDs()))
}

// BenchmarkGenerate reports generation speed; run the 10^5 case with
// -bench 'Generate/100000' -benchtime 1x.
func BenchmarkGenerate(b *testing.B) {
	for _, events := range []int{10000, 100000} {
		b.Run(fmt.Sprint(events), func(b *testing.B) {
			for b.Loop() {
				room, err := roomgen.Generate(roomgen.Options{Events: events, ForkEvery: 50})
				if err != nil {
					b.Fatal(err)
				}
				if len(room.Events) != events {
					b.Fatalf("got %d events", len(room.Events))
				}
			}
			b.ReportMetric(float64(events*b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// TestBuilderMergeConcurrentChanges changes the history visibility on both
// branches. From room version 2, state resolution orders the two by
// origin_server_ts (spec: rooms/v2, mainline ordering): the later one wins.
// Version 1 picks by depth, then by the SHA-1 of the event ID (spec:
// rooms/v1): either may win.
func TestBuilderMergeConcurrentChanges(t *testing.T) {
	for _, version := range []string{"1", "2", "10", "11", "12"} {
		t.Run("v"+version, func(t *testing.T) {
			b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: version})
			require.NoError(t, err)
			require.NoError(t, b.StandardSetup())
			alice := b.Creator()

			other := b.Fork()
			earlier, err := b.HistoryVisibility(alice, "joined")
			require.NoError(t, err)
			require.NoError(t, b.Branch(other))
			later, err := b.HistoryVisibility(alice, "invited")
			require.NoError(t, err)

			err = b.Merge()
			if version == "12" {
				require.ErrorIs(t, err, roomgen.ErrConcurrentStateChange)
				return
			}
			require.NoError(t, err)
			resolved, ok := b.StateEvent(spec.MRoomHistoryVisibility, "")
			require.True(t, ok)
			if version == "1" {
				require.Contains(t, []string{earlier.ID, later.ID}, resolved)
			} else {
				require.Equal(t, later.ID, resolved)
			}
			_, err = b.Message(alice, "after the merge")
			require.NoError(t, err)
			checkRoom(t, b.Room())
		})
	}
}

// TestBuilderOriginServerTS sets origin_server_ts explicitly: equal for two
// events, and earlier than the event's prev_event. The clock moves on
// regardless, so the next event without a timestamp keeps its usual one.
func TestBuilderOriginServerTS(t *testing.T) {
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: "10"})
	require.NoError(t, err)
	require.NoError(t, b.StandardSetup())
	noon := roomgen.BaseTimestamp.Add(12 * time.Hour)
	tests := []struct {
		name string
		at   time.Time // zero: the builder's clock
		want time.Time
	}{
		{"explicit", noon, noon},
		{"the same again", noon, noon},
		{"before the room was created", roomgen.BaseTimestamp.Add(-time.Hour), roomgen.BaseTimestamp.Add(-time.Hour)},
		{"the clock, which moved on by a second per event", time.Time{}, roomgen.BaseTimestamp.Add(8 * time.Second)},
	}
	for _, tc := range tests {
		ev, err := b.Event(roomgen.EventSpec{Sender: b.Creator(), Type: "m.room.message",
			Content: map[string]string{"body": tc.name}, OriginServerTS: tc.at})
		require.NoError(t, err, tc.name)
		var fields struct {
			OriginServerTS int64 `json:"origin_server_ts"`
		}
		require.NoError(t, json.Unmarshal(ev.JSON, &fields))
		require.Equal(t, tc.want.UnixMilli(), fields.OriginServerTS, tc.name)
	}
	checkRoom(t, b.Room())
}
