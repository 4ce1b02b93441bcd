package fedhistory

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/redact"
)

const (
	visTestRoom    = "!room:home.example"
	visTestOther   = "!other:home.example"
	visTestOrigin  = "remote.example"
	visTestAlice   = "@alice:remote.example" // a user of the origin
	visTestBob     = "@bob:other.example"    // a user of another server
	visTestVersion = "10"
)

var visTestDiscard = slog.New(slog.DiscardHandler)

func visStateKey(key string) *string { return &key }

// visTestEvent builds a stored event with hand-made federation JSON of the
// given room version. Every event carries a secret in its content and an
// unsigned section, so its redacted form always differs from the original.
func visTestEvent(t testing.TB, version, id, roomID, eventType string, stateKey *string, sender, redacts string, ts int) *Event {
	t.Helper()
	content := map[string]any{"body": fmt.Sprintf("secret %d", ts)}
	switch eventType {
	case eventTypeMember:
		content["membership"] = "join"
	case eventTypeHistoryVisibility:
		content["history_visibility"] = "joined"
	case eventTypeCreate:
		content["creator"] = sender
	}
	pdu := map[string]any{
		"room_id":          roomID,
		"type":             eventType,
		"sender":           sender,
		"origin_server_ts": ts,
		"depth":            ts,
		"prev_events":      []any{},
		"auth_events":      []any{},
		"hashes":           map[string]any{"sha256": "aGFzaA"},
		"signatures":       map[string]any{"home.example": map[string]any{"ed25519:1": "c2ln"}},
		"unsigned":         map[string]any{"age": 1234},
		"content":          content,
	}
	if stateKey != nil {
		pdu["state_key"] = *stateKey
	}
	if version == "1" || version == "2" {
		pdu["event_id"] = id
	}
	if redacts != "" {
		if version == "11" || version == "12" {
			content["redacts"] = redacts
		} else {
			pdu["redacts"] = redacts
		}
	}
	raw, err := json.Marshal(pdu)
	require.NoError(t, err)
	return &Event{
		ID: id, RoomID: roomID, Depth: int64(ts), Type: eventType, StateKey: stateKey,
		Sender: sender, Redacts: redacts, JSON: raw,
	}
}

// visRedacted is what the room version's redaction algorithm makes of ev.
func visRedacted(t testing.TB, version string, ev *Event) json.RawMessage {
	t.Helper()
	redacted, err := redact.Event(version, ev.JSON)
	require.NoError(t, err)
	return redacted
}

func visMembers(pairs ...string) map[string]string {
	members := make(map[string]string)
	for i := 0; i+1 < len(pairs); i += 2 {
		members[pairs[i]] = pairs[i+1]
	}
	return members
}

// historySettings are the m.room.history_visibility values under test; ""
// is a room without the event, "members_only" a value the spec does not
// define. The spec treats both like shared.
var historySettings = []string{"world_readable", "shared", "invited", "joined", "", "members_only"}

// TestHistoryVisibilityTimeline follows the origin's user through a room:
// events before any membership, an invite, a join, a leave and a rejoin,
// under each history visibility setting. The history visibility is the same
// before and after each event here; its own changes are tested below.
func TestHistoryVisibilityTimeline(t *testing.T) {
	type visibleUnder struct{ worldReadable, shared, invited, joined bool }
	steps := []struct {
		name          string
		eventType     string
		stateKey      *string
		before, after map[string]string // the origin's memberships
		want          visibleUnder
	}{
		{
			name:      "message before the origin was ever in the room",
			eventType: "m.room.message",
			want:      visibleUnder{worldReadable: true, shared: true},
		},
		{
			name:      "another server's member event before the origin was in the room",
			eventType: eventTypeMember, stateKey: visStateKey(visTestBob),
			want: visibleUnder{worldReadable: true, shared: true},
		},
		{
			name:      "the origin's own invite",
			eventType: eventTypeMember, stateKey: visStateKey(visTestAlice),
			after: visMembers(visTestAlice, "invite"),
			want:  visibleUnder{worldReadable: true, shared: true, invited: true},
		},
		{
			name:      "message while the origin is invited",
			eventType: "m.room.message",
			before:    visMembers(visTestAlice, "invite"), after: visMembers(visTestAlice, "invite"),
			want: visibleUnder{worldReadable: true, shared: true, invited: true},
		},
		{
			name:      "the origin's own join (visible by the membership after it)",
			eventType: eventTypeMember, stateKey: visStateKey(visTestAlice),
			before: visMembers(visTestAlice, "invite"), after: visMembers(visTestAlice, "join"),
			want: visibleUnder{worldReadable: true, shared: true, invited: true, joined: true},
		},
		{
			name:      "message while the origin is joined",
			eventType: "m.room.message",
			before:    visMembers(visTestAlice, "join"), after: visMembers(visTestAlice, "join"),
			want: visibleUnder{worldReadable: true, shared: true, invited: true, joined: true},
		},
		{
			name:      "another server's member event while the origin is joined",
			eventType: eventTypeMember, stateKey: visStateKey(visTestBob),
			before: visMembers(visTestAlice, "join"), after: visMembers(visTestAlice, "join"),
			want: visibleUnder{worldReadable: true, shared: true, invited: true, joined: true},
		},
		{
			name:      "the origin's own leave (visible by the membership before it)",
			eventType: eventTypeMember, stateKey: visStateKey(visTestAlice),
			before: visMembers(visTestAlice, "join"), after: visMembers(visTestAlice, "leave"),
			want: visibleUnder{worldReadable: true, shared: true, invited: true, joined: true},
		},
		{
			name:      "message after the origin left",
			eventType: "m.room.message",
			before:    visMembers(visTestAlice, "leave"), after: visMembers(visTestAlice, "leave"),
			want: visibleUnder{worldReadable: true, shared: true},
		},
		{
			name:      "another server's member event after the origin left",
			eventType: eventTypeMember, stateKey: visStateKey(visTestBob),
			before: visMembers(visTestAlice, "leave"), after: visMembers(visTestAlice, "leave"),
			want: visibleUnder{worldReadable: true, shared: true},
		},
		{
			name:      "the origin's own ban",
			eventType: eventTypeMember, stateKey: visStateKey(visTestAlice),
			before: visMembers(visTestAlice, "leave"), after: visMembers(visTestAlice, "ban"),
			want: visibleUnder{worldReadable: true, shared: true},
		},
		{
			name:      "the origin joins late (rejoin after leaving)",
			eventType: eventTypeMember, stateKey: visStateKey(visTestAlice),
			before: visMembers(visTestAlice, "leave"), after: visMembers(visTestAlice, "join"),
			want: visibleUnder{worldReadable: true, shared: true, invited: true, joined: true},
		},
		{
			name:      "message while a second user of the origin is joined and the first has left",
			eventType: "m.room.message",
			before:    visMembers(visTestAlice, "leave", "@carol:remote.example", "join"),
			want:      visibleUnder{worldReadable: true, shared: true, invited: true, joined: true},
		},
		{
			name:      "message while only another server is joined (misbehaving store)",
			eventType: "m.room.message",
			before:    visMembers(visTestBob, "join", "@alice:remote.example.evil", "join"),
			want:      visibleUnder{worldReadable: true, shared: true},
		},
		{
			name:      "member event of a look-alike user of another server",
			eventType: eventTypeMember, stateKey: visStateKey("@alice:remote.example.evil"),
			after: visMembers("@alice:remote.example.evil", "join"),
			want:  visibleUnder{worldReadable: true, shared: true},
		},
	}

	for _, setting := range historySettings {
		for i, step := range steps {
			t.Run(fmt.Sprintf("%q/%s", setting, step.name), func(t *testing.T) {
				want := step.want.shared // unset and unknown values count as shared
				switch setting {
				case "world_readable":
					want = step.want.worldReadable
				case "invited":
					want = step.want.invited
				case "joined":
					want = step.want.joined
				}
				store := newAuthzFakeStore()
				ev := visTestEvent(t, visTestVersion, "$step", visTestRoom, step.eventType, step.stateKey, visTestBob, "", i)
				store.visibility[ev.ID] = EventVisibility{
					Known:  true,
					Before: VisibilityState{HistoryVisibility: setting, Memberships: step.before},
					After:  VisibilityState{HistoryVisibility: setting, Memberships: step.after},
				}

				out, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, []*Event{ev}, visTestDiscard)
				require.NoError(t, err)
				require.Len(t, out, 1, "an event the origin may not see is redacted, never dropped")
				if want {
					require.Equal(t, ev.JSON, out[0], "served untouched")
				} else {
					require.Equal(t, visRedacted(t, visTestVersion, ev), out[0], "served redacted")
				}
			})
		}
	}
}

// TestHistoryVisibilityChangeEvent: an m.room.history_visibility event is
// visible if the setting before or after it allows.
func TestHistoryVisibilityChangeEvent(t *testing.T) {
	tests := []struct {
		name          string
		stateKey      *string
		before, after string
		members       map[string]string
		want          bool
	}{
		{"joined to world_readable, origin never in the room", visStateKey(""), "joined", "world_readable", nil, true},
		{"world_readable to joined, origin never in the room", visStateKey(""), "world_readable", "joined", nil, true},
		{"joined to shared, origin never in the room", visStateKey(""), "joined", "shared", nil, true},
		{"shared to joined, origin never in the room", visStateKey(""), "shared", "joined", nil, true},
		{"unset to joined (unset counts as shared)", visStateKey(""), "", "joined", nil, true},
		{"unknown value to joined (unknown counts as shared)", visStateKey(""), "members_only", "joined", nil, true},
		{"joined to invited, origin left", visStateKey(""), "joined", "invited", visMembers(visTestAlice, "leave"), false},
		{"invited to joined, origin invited", visStateKey(""), "invited", "joined", visMembers(visTestAlice, "invite"), true},
		{"joined to invited, origin invited", visStateKey(""), "joined", "invited", visMembers(visTestAlice, "invite"), true},
		{"joined to joined, origin joined", visStateKey(""), "joined", "joined", visMembers(visTestAlice, "join"), true},
		{"joined to joined, origin never in the room", visStateKey(""), "joined", "joined", nil, false},
		// Only the room's history visibility (state_key "") gets the
		// before-or-after treatment; anything else is judged before it.
		{"a non-state event of that type is judged on the state before it", nil, "joined", "world_readable", nil, false},
		{"a state event with another state key is judged on the state before it", visStateKey("x"), "joined", "world_readable", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := newAuthzFakeStore()
			ev := visTestEvent(t, visTestVersion, "$hv", visTestRoom, eventTypeHistoryVisibility, tt.stateKey, visTestBob, "", 1)
			store.visibility[ev.ID] = EventVisibility{
				Known:  true,
				Before: VisibilityState{HistoryVisibility: tt.before, Memberships: tt.members},
				After:  VisibilityState{HistoryVisibility: tt.after, Memberships: tt.members},
			}
			out, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, []*Event{ev}, visTestDiscard)
			require.NoError(t, err)
			require.Len(t, out, 1)
			if tt.want {
				require.Equal(t, ev.JSON, out[0])
			} else {
				require.Equal(t, visRedacted(t, visTestVersion, ev), out[0])
			}
		})
	}
}

func TestFilterEventsWithoutVisibilityEntryRedacts(t *testing.T) {
	store := newAuthzFakeStore()
	ev := visTestEvent(t, visTestVersion, "$nostate", visTestRoom, "m.room.message", nil, visTestAlice, "", 1)

	out, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, []*Event{ev}, visTestDiscard)
	require.NoError(t, err)
	require.Equal(t, []json.RawMessage{visRedacted(t, visTestVersion, ev)}, out,
		"with no known state the event is treated as not visible, even though an unset visibility would be shared")
}

func TestFilterEventsUnknownStateRedacts(t *testing.T) {
	// The store answers a state that would allow anybody, but says it does
	// not know it: Known decides, not the states.
	store := newAuthzFakeStore()
	readable := VisibilityState{HistoryVisibility: "world_readable"}
	known := visTestEvent(t, visTestVersion, "$known", visTestRoom, "m.room.message", nil, visTestBob, "", 1)
	unknown := visTestEvent(t, visTestVersion, "$unknown", visTestRoom, "m.room.message", nil, visTestBob, "", 2)
	store.visibility[known.ID] = EventVisibility{Known: true, Before: readable, After: readable}
	store.visibility[unknown.ID] = EventVisibility{Known: false, Before: readable, After: readable}

	out, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, []*Event{unknown, known}, visTestDiscard)
	require.NoError(t, err)
	require.Equal(t, []json.RawMessage{visRedacted(t, visTestVersion, unknown), known.JSON}, out)
}

// misalignedStore answers Visibility with its wrapped store's answer made
// longer or shorter by delta entries, as a buggy store might.
type misalignedStore struct {
	*authzFakeStore
	delta int
}

func (s *misalignedStore) Visibility(ctx context.Context, roomID, server string, eventIDs []string) ([]EventVisibility, error) {
	answer, err := s.authzFakeStore.Visibility(ctx, roomID, server, eventIDs)
	if err != nil {
		return nil, err
	}
	if s.delta < 0 {
		return answer[:len(answer)+s.delta], nil
	}
	readable := VisibilityState{HistoryVisibility: "world_readable"}
	for range s.delta {
		answer = append(answer, EventVisibility{Known: true, Before: readable, After: readable})
	}
	return answer, nil
}

func TestFilterEventsFailsOnAMisalignedVisibilityAnswer(t *testing.T) {
	readable := VisibilityState{HistoryVisibility: "world_readable"}
	for _, delta := range []int{-3, -1, 1, 2} {
		t.Run(fmt.Sprintf("%+d answers", delta), func(t *testing.T) {
			store := &misalignedStore{authzFakeStore: newAuthzFakeStore(), delta: delta}
			var events []*Event
			for i := range 3 {
				ev := visTestEvent(t, visTestVersion, fmt.Sprintf("$e%d", i), visTestRoom, "m.room.message", nil, visTestBob, "", i)
				store.visibility[ev.ID] = EventVisibility{Known: true, Before: readable, After: readable}
				events = append(events, ev)
			}
			out, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, events, visTestDiscard)
			require.ErrorIs(t, err, errVisibilityMisaligned)
			require.NotErrorIs(t, err, ErrForbidden, "a store bug must not pass for a refusal")
			require.ErrorContains(t, err, visTestRoom)
			require.ErrorContains(t, err, fmt.Sprintf("got %d answers", 3+delta))
			require.Nil(t, out, "nothing is served from an answer that cannot be matched")
		})
	}
}

func TestFilterEventsErasedSender(t *testing.T) {
	const erasedUser = "@erased:other.example"
	visible := EventVisibility{Known: true, Before: VisibilityState{HistoryVisibility: "world_readable"}, After: VisibilityState{HistoryVisibility: "world_readable"}}
	newEvents := func(t *testing.T) []*Event {
		return []*Event{
			visTestEvent(t, visTestVersion, "$a", visTestRoom, "m.room.message", nil, erasedUser, "", 1),
			visTestEvent(t, visTestVersion, "$b", visTestRoom, "m.room.message", nil, visTestBob, "", 2),
			visTestEvent(t, visTestVersion, "$c", visTestRoom, "m.room.message", nil, erasedUser, "", 3),
		}
	}

	t.Run("an erasure store's erased senders are redacted, others are not", func(t *testing.T) {
		events := newEvents(t)
		base := newAuthzFakeStore()
		for _, ev := range events {
			base.visibility[ev.ID] = visible
		}
		store := &authzFakeErasureStore{authzFakeStore: base, erased: map[string]bool{erasedUser: true}}

		out, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, events, visTestDiscard)
		require.NoError(t, err)
		require.Equal(t, []json.RawMessage{
			visRedacted(t, visTestVersion, events[0]),
			events[1].JSON,
			visRedacted(t, visTestVersion, events[2]),
		}, out)
		require.Equal(t, 1, store.callCount("ErasedUsers"), "one batched call")
		require.ElementsMatch(t, []string{erasedUser, visTestBob}, store.requested["ErasedUsers"][0], "each sender asked once")
	})

	t.Run("a store that cannot tell erases nobody", func(t *testing.T) {
		events := newEvents(t)
		store := newAuthzFakeStore()
		for _, ev := range events {
			store.visibility[ev.ID] = visible
		}
		out, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, events, visTestDiscard)
		require.NoError(t, err)
		require.Equal(t, []json.RawMessage{events[0].JSON, events[1].JSON, events[2].JSON}, out)
	})
}

func TestFilterEventsRedactionWithholding(t *testing.T) {
	visible := EventVisibility{Known: true, Before: VisibilityState{HistoryVisibility: "shared"}, After: VisibilityState{HistoryVisibility: "shared"}}
	tests := []struct {
		name string
		// target is the redacted event, stored where targetRoom says and,
		// if inBatch, also part of the walk's result. No target when
		// targetType is "".
		targetType     string
		targetStateKey *string
		targetRoom     string
		inBatch        bool
		redacts        string // overrides the target's ID when set
		served         bool
	}{
		{name: "redaction of an event in the same batch is served", targetType: "m.room.message", targetRoom: visTestRoom, inBatch: true, served: true},
		{name: "redaction of a stored event outside the batch is served", targetType: "m.room.message", targetRoom: visTestRoom, served: true},
		{name: "redaction of an unknown event is withheld", redacts: "$unknown", served: false},
		{name: "redaction with no target is withheld", served: false},
		{name: "redaction of the create event is withheld", targetType: eventTypeCreate, targetStateKey: visStateKey(""), targetRoom: visTestRoom, served: false},
		{name: "redaction of the create event in the same batch is withheld", targetType: eventTypeCreate, targetStateKey: visStateKey(""), targetRoom: visTestRoom, inBatch: true, served: false},
		{name: "redaction of a non-state event that calls itself m.room.create is served", targetType: eventTypeCreate, targetRoom: visTestRoom, served: true},
		{name: "redaction of an event in another room is withheld", targetType: "m.room.message", targetRoom: visTestOther, served: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			store := newAuthzFakeStore()
			var events []*Event
			redacts := tt.redacts
			if tt.targetType != "" {
				target := visTestEvent(t, visTestVersion, "$target", tt.targetRoom, tt.targetType, tt.targetStateKey, visTestBob, "", 1)
				store.events[target.ID] = target
				store.visibility[target.ID] = visible
				if tt.inBatch {
					events = append(events, target)
				}
				redacts = target.ID
			}
			redaction := visTestEvent(t, visTestVersion, "$redaction", visTestRoom, eventTypeRedaction, nil, visTestBob, redacts, 2)
			store.visibility[redaction.ID] = visible
			events = append(events, redaction)

			out, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, events, visTestDiscard)
			require.NoError(t, err)
			if tt.served {
				require.Contains(t, out, redaction.JSON)
			} else {
				require.NotContains(t, out, redaction.JSON)
				require.NotContains(t, out, visRedacted(t, visTestVersion, redaction), "withheld means not even redacted")
			}
			if tt.inBatch {
				require.Zero(t, store.callCount("Events"), "targets in the batch need no store call")
			}
		})
	}

	t.Run("a store that returns a target of another room does not make it held", func(t *testing.T) {
		store := &authzLeakyEventsStore{authzFakeStore: newAuthzFakeStore()}
		target := visTestEvent(t, visTestVersion, "$target", visTestOther, "m.room.message", nil, visTestBob, "", 1)
		store.events[target.ID] = target
		redaction := visTestEvent(t, visTestVersion, "$redaction", visTestRoom, eventTypeRedaction, nil, visTestBob, target.ID, 2)
		store.visibility[redaction.ID] = visible

		out, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, []*Event{redaction}, visTestDiscard)
		require.NoError(t, err)
		require.Empty(t, out)
	})

	t.Run("an invisible redaction of a known target is redacted, not withheld", func(t *testing.T) {
		store := newAuthzFakeStore()
		target := visTestEvent(t, visTestVersion, "$target", visTestRoom, "m.room.message", nil, visTestBob, "", 1)
		store.events[target.ID] = target
		redaction := visTestEvent(t, visTestVersion, "$redaction", visTestRoom, eventTypeRedaction, nil, visTestBob, target.ID, 2)

		out, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, []*Event{redaction}, visTestDiscard)
		require.NoError(t, err)
		require.Equal(t, []json.RawMessage{visRedacted(t, visTestVersion, redaction)}, out)
	})
}

// authzLeakyEventsStore ignores the room in Events, as a buggy store might.
type authzLeakyEventsStore struct{ *authzFakeStore }

func (s *authzLeakyEventsStore) Events(_ context.Context, _ string, ids []string) ([]*Event, error) {
	if err := s.record("Events", ids); err != nil {
		return nil, err
	}
	var found []*Event
	for _, id := range ids {
		if ev, ok := s.events[id]; ok {
			found = append(found, ev)
		}
	}
	return found, nil
}

func TestFilterEventsDropsForeignRoomEventsAndLogsOnce(t *testing.T) {
	store := newAuthzFakeStore()
	visible := EventVisibility{Known: true, Before: VisibilityState{HistoryVisibility: "shared"}}
	var events []*Event
	for i, room := range []string{visTestRoom, visTestOther, visTestRoom, visTestOther, visTestRoom} {
		ev := visTestEvent(t, visTestVersion, fmt.Sprintf("$e%d", i), room, "m.room.message", nil, visTestBob, "", i)
		store.visibility[ev.ID] = visible // the store even claims they are visible
		events = append(events, ev)
	}
	events = append(events, nil)
	var logs bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, nil))

	out, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, events, logger)
	require.NoError(t, err)
	require.Equal(t, []json.RawMessage{events[0].JSON, events[2].JSON, events[4].JSON}, out)

	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	require.Len(t, lines, 1, "one log line per call, not per event")
	var record map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &record))
	require.Equal(t, "WARN", record["level"])
	require.EqualValues(t, 3, record["count"])
	require.Equal(t, visTestRoom, record["room_id"])
	require.ElementsMatch(t, []string{"$e0", "$e2", "$e4"}, store.requested["Visibility"][0], "foreign events are not even looked up")
}

// TestFilterEventsNeverServesRejectedEventsNorOutliersWhole: rejected events
// are never served; an outlier's state is unknown, so it is served redacted
// even when a store claims to know its visibility.
func TestFilterEventsNeverServesRejectedEventsNorOutliersWhole(t *testing.T) {
	store := newAuthzFakeStore()
	visible := EventVisibility{Known: true, Before: VisibilityState{HistoryVisibility: "world_readable"}}
	rejected := visTestEvent(t, visTestVersion, "$rejected", visTestRoom, "m.room.message", nil, visTestBob, "", 1)
	rejected.Rejected = true
	outlier := visTestEvent(t, visTestVersion, "$outlier", visTestRoom, "m.room.message", nil, visTestBob, "", 2)
	outlier.Outlier = true
	normal := visTestEvent(t, visTestVersion, "$normal", visTestRoom, "m.room.message", nil, visTestBob, "", 3)
	for _, ev := range []*Event{rejected, outlier, normal} {
		store.visibility[ev.ID] = visible
	}

	out, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, []*Event{rejected, outlier, normal}, visTestDiscard)
	require.NoError(t, err)
	require.Equal(t, []json.RawMessage{visRedacted(t, visTestVersion, outlier), normal.JSON}, out)
}

func TestFilterEventsBatchesStoreCalls(t *testing.T) {
	base := newAuthzFakeStore()
	store := &authzFakeErasureStore{authzFakeStore: base, erased: map[string]bool{}}
	var events []*Event
	for i := range 100 {
		ev := visTestEvent(t, visTestVersion, fmt.Sprintf("$e%d", i), visTestRoom, "m.room.message", nil, fmt.Sprintf("@u%d:other.example", i%7), "", i)
		if i%10 == 0 {
			// A redaction of a stored event outside the batch.
			target := visTestEvent(t, visTestVersion, fmt.Sprintf("$old%d", i), visTestRoom, "m.room.message", nil, visTestBob, "", 1000+i)
			base.events[target.ID] = target
			ev = visTestEvent(t, visTestVersion, ev.ID, visTestRoom, eventTypeRedaction, nil, visTestBob, target.ID, i)
		}
		events = append(events, ev)
	}

	out, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, events, visTestDiscard)
	require.NoError(t, err)
	require.Len(t, out, 100)
	require.Equal(t, map[string]int{"Visibility": 1, "Events": 1, "ErasedUsers": 1}, base.calls)
	require.Len(t, base.requested["Events"][0], 10)
	require.Len(t, base.requested["ErasedUsers"][0], 8, "seven senders and Bob, each once")
}

func TestFilterEventsEmptyInput(t *testing.T) {
	store := newAuthzFakeStore()
	out, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, nil, nil)
	require.NoError(t, err)
	require.NotNil(t, out, "an empty result must encode as [], not null")
	require.Empty(t, out)
	require.Empty(t, store.calls)
}

func TestFilterEventsErrors(t *testing.T) {
	ev := visTestEvent(t, visTestVersion, "$e", visTestRoom, "m.room.message", nil, visTestBob, "", 1)

	t.Run("unknown room version", func(t *testing.T) {
		_, err := filterEvents(context.Background(), newAuthzFakeStore(), "no-such-version", visTestRoom, visTestOrigin, []*Event{ev}, visTestDiscard)
		require.Error(t, err)
		require.NotErrorIs(t, err, ErrForbidden)
	})
	t.Run("store failures are returned wrapped", func(t *testing.T) {
		redaction := visTestEvent(t, visTestVersion, "$r", visTestRoom, eventTypeRedaction, nil, visTestBob, "$elsewhere", 2)
		for _, method := range []string{"Visibility", "Events", "ErasedUsers"} {
			t.Run(method, func(t *testing.T) {
				base := newAuthzFakeStore()
				base.err, base.failOn = errors.New("database on fire"), method
				store := &authzFakeErasureStore{authzFakeStore: base}
				_, err := filterEvents(context.Background(), store, visTestVersion, visTestRoom, visTestOrigin, []*Event{ev, redaction}, visTestDiscard)
				require.ErrorIs(t, err, base.err)
				require.Equal(t, 1, base.callCount(method))
			})
		}
	})
	t.Run("an event the algorithm cannot parse is withheld, not served whole", func(t *testing.T) {
		broken := &Event{ID: "$broken", RoomID: visTestRoom, Type: "m.room.message", Sender: visTestBob, JSON: json.RawMessage(`{"type": 5}`)}
		out, err := filterEvents(context.Background(), newAuthzFakeStore(), visTestVersion, visTestRoom, visTestOrigin, []*Event{broken, ev}, visTestDiscard)
		require.NoError(t, err)
		require.Equal(t, []json.RawMessage{visRedacted(t, visTestVersion, ev)}, out)
	})
}

// TestFilterEventsRedactionAlgorithms checks what survives redaction in the
// room versions whose algorithms differ (rooms/v1, v6, v9 and v11 of the
// spec), on hand-written federation JSON.
func TestFilterEventsRedactionAlgorithms(t *testing.T) {
	// The envelopes are the top-level keys every event here has; before room
	// version 11 the algorithms keep all of them (the v1 one adds prev_state).
	const envelopeV1 = `"room_id": "!r:home.example", "sender": "@a:home.example", "origin": "home.example",
		"origin_server_ts": 1, "depth": 1, "prev_events": [], "auth_events": [], "prev_state": [],
		"hashes": {"sha256": "aGFzaA"}, "signatures": {"home.example": {"ed25519:1": "c2ln"}}`
	const envelope = `"room_id": "!r:home.example", "sender": "@a:home.example", "origin": "home.example",
		"origin_server_ts": 1, "depth": 1, "prev_events": [], "auth_events": [],
		"hashes": {"sha256": "aGFzaA"}, "signatures": {"home.example": {"ed25519:1": "c2ln"}}`
	// Room version 11 no longer keeps origin, membership and prev_state.
	const kept11 = `"room_id": "!r:home.example", "sender": "@a:home.example",
		"origin_server_ts": 1, "depth": 1, "prev_events": [], "auth_events": [],
		"hashes": {"sha256": "aGFzaA"}, "signatures": {"home.example": {"ed25519:1": "c2ln"}}`

	tests := []struct {
		name, version, event, redacted string
	}{
		// Room version 1: the event ID travels in the event and must stay.
		{
			name: "v1 message keeps event_id, origin and prev_state, loses content and unsigned", version: "1",
			event:    `{"event_id": "$m:home.example", "type": "m.room.message", "content": {"body": "secret"}, "unsigned": {"age": 1}, ` + envelopeV1 + `}`,
			redacted: `{"event_id": "$m:home.example", "type": "m.room.message", "content": {}, ` + envelopeV1 + `}`,
		},
		{
			name: "v1 create keeps only creator", version: "1",
			event:    `{"event_id": "$c:home.example", "type": "m.room.create", "state_key": "", "content": {"creator": "@a:home.example", "m.federate": false}, ` + envelopeV1 + `}`,
			redacted: `{"event_id": "$c:home.example", "type": "m.room.create", "state_key": "", "content": {"creator": "@a:home.example"}, ` + envelopeV1 + `}`,
		},
		{
			name: "v1 aliases keeps aliases", version: "1",
			event:    `{"event_id": "$al:home.example", "type": "m.room.aliases", "state_key": "home.example", "content": {"aliases": ["#a:home.example"], "x": 1}, ` + envelopeV1 + `}`,
			redacted: `{"event_id": "$al:home.example", "type": "m.room.aliases", "state_key": "home.example", "content": {"aliases": ["#a:home.example"]}, ` + envelopeV1 + `}`,
		},
		{
			name: "v1 redaction loses the top-level redacts", version: "1",
			event:    `{"event_id": "$r:home.example", "type": "m.room.redaction", "redacts": "$m:home.example", "content": {"reason": "spam"}, ` + envelopeV1 + `}`,
			redacted: `{"event_id": "$r:home.example", "type": "m.room.redaction", "content": {}, ` + envelopeV1 + `}`,
		},
		{
			name: "v1 member keeps membership at both levels", version: "1",
			event:    `{"event_id": "$j:home.example", "type": "m.room.member", "state_key": "@a:home.example", "membership": "join", "content": {"membership": "join", "displayname": "A"}, ` + envelopeV1 + `}`,
			redacted: `{"event_id": "$j:home.example", "type": "m.room.member", "state_key": "@a:home.example", "membership": "join", "content": {"membership": "join"}, ` + envelopeV1 + `}`,
		},
		// Room version 6: aliases lose their protection.
		{
			name: "v6 aliases keeps nothing", version: "6",
			event:    `{"type": "m.room.aliases", "state_key": "home.example", "content": {"aliases": ["#a:home.example"]}, ` + envelope + `}`,
			redacted: `{"type": "m.room.aliases", "state_key": "home.example", "content": {}, ` + envelope + `}`,
		},
		{
			name: "v6 join rules keep join_rule but not allow", version: "6",
			event:    `{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!s:home.example"}]}, ` + envelope + `}`,
			redacted: `{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "restricted"}, ` + envelope + `}`,
		},
		{
			name: "v6 member loses join_authorised_via_users_server", version: "6",
			event:    `{"type": "m.room.member", "state_key": "@a:home.example", "content": {"membership": "join", "join_authorised_via_users_server": "@b:home.example"}, ` + envelope + `}`,
			redacted: `{"type": "m.room.member", "state_key": "@a:home.example", "content": {"membership": "join"}, ` + envelope + `}`,
		},
		// Room version 9: restricted joins keep what they need.
		{
			name: "v9 join rules keep allow", version: "9",
			event:    `{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!s:home.example"}], "x": 1}, ` + envelope + `}`,
			redacted: `{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "restricted", "allow": [{"type": "m.room_membership", "room_id": "!s:home.example"}]}, ` + envelope + `}`,
		},
		{
			name: "v9 member keeps join_authorised_via_users_server", version: "9",
			event:    `{"type": "m.room.member", "state_key": "@a:home.example", "content": {"membership": "join", "join_authorised_via_users_server": "@b:home.example", "avatar_url": "mxc://x/y"}, ` + envelope + `}`,
			redacted: `{"type": "m.room.member", "state_key": "@a:home.example", "content": {"membership": "join", "join_authorised_via_users_server": "@b:home.example"}, ` + envelope + `}`,
		},
		{
			name: "v9 power levels lose invite", version: "9",
			event:    `{"type": "m.room.power_levels", "state_key": "", "content": {"ban": 50, "invite": 50, "users": {"@a:home.example": 100}, "notifications": {"room": 50}}, ` + envelope + `}`,
			redacted: `{"type": "m.room.power_levels", "state_key": "", "content": {"ban": 50, "users": {"@a:home.example": 100}}, ` + envelope + `}`,
		},
		// Room version 11.
		{
			name: "v11 create keeps all of its content", version: "11",
			event:    `{"type": "m.room.create", "state_key": "", "content": {"creator": "@a:home.example", "m.federate": false, "room_version": "11"}, ` + envelope + `}`,
			redacted: `{"type": "m.room.create", "state_key": "", "content": {"creator": "@a:home.example", "m.federate": false, "room_version": "11"}, ` + kept11 + `}`,
		},
		{
			name: "v11 power levels keep invite", version: "11",
			event:    `{"type": "m.room.power_levels", "state_key": "", "content": {"ban": 50, "invite": 50, "notifications": {"room": 50}}, ` + envelope + `}`,
			redacted: `{"type": "m.room.power_levels", "state_key": "", "content": {"ban": 50, "invite": 50}, ` + kept11 + `}`,
		},
		{
			name: "v11 redaction keeps content.redacts", version: "11",
			event:    `{"type": "m.room.redaction", "content": {"redacts": "$m", "reason": "spam"}, ` + envelope + `}`,
			redacted: `{"type": "m.room.redaction", "content": {"redacts": "$m"}, ` + kept11 + `}`,
		},
		{
			name: "v11 member loses top-level membership and origin", version: "11",
			event:    `{"type": "m.room.member", "state_key": "@a:home.example", "membership": "join", "content": {"membership": "join", "displayname": "A"}, ` + envelope + `}`,
			redacted: `{"type": "m.room.member", "state_key": "@a:home.example", "content": {"membership": "join"}, ` + kept11 + `}`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The metadata says "m.room.message" so that no redaction here is
			// withheld for its target; the algorithm reads only the JSON.
			ev := &Event{ID: "$event", RoomID: visTestRoom, Type: "m.room.message", Sender: visTestBob, JSON: json.RawMessage(tt.event)}
			store := newAuthzFakeStore() // no visibility entry: the event is redacted

			out, err := filterEvents(context.Background(), store, tt.version, visTestRoom, visTestOrigin, []*Event{ev}, visTestDiscard)
			require.NoError(t, err)
			require.Len(t, out, 1)
			require.JSONEq(t, tt.redacted, string(out[0]))
		})
	}
}

// TestFilterEventsProperty runs the filter on random walks with random store
// answers (fixed seeds) and checks it against the rules, stated once more
// independently: nothing the origin may not see leaves unredacted, the order
// is kept, nothing of another room leaves, withheld redactions do not leave
// at all, and everything else leaves exactly once.
func TestFilterEventsProperty(t *testing.T) {
	const erasedUser = "@erased:other.example"
	senders := []string{visTestAlice, visTestBob, erasedUser}
	memberships := []string{"", "join", "invite", "leave", "ban", "knock"}
	randomState := func(rng *rand.Rand) VisibilityState {
		state := VisibilityState{
			HistoryVisibility: historySettings[rng.IntN(len(historySettings))],
			Memberships:       map[string]string{},
		}
		for _, user := range []string{visTestAlice, "@carol:remote.example", visTestBob} {
			if m := memberships[rng.IntN(len(memberships))]; m != "" {
				state.Memberships[user] = m
			}
		}
		return state
	}
	// mayUserOfOriginSee is the spec's rule for one state, said plainly.
	mayOriginSee := func(state VisibilityState) bool {
		hv := state.HistoryVisibility
		if hv != "invited" && hv != "joined" {
			return true
		}
		for user, membership := range state.Memberships {
			if !strings.HasSuffix(user, ":"+visTestOrigin) {
				continue
			}
			if membership == "join" || (hv == "invited" && membership == "invite") {
				return true
			}
		}
		return false
	}

	var servedWhole, servedRedacted, withheld, foreign int
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 0x5eed))
		version := []string{"1", "6", "9", "11"}[seed%4]
		store := newAuthzFakeStore()
		erasure := seed%2 == 0
		var filterStore EventStore = store
		erased := map[string]bool{}
		if erasure {
			erased[erasedUser] = true
			filterStore = &authzFakeErasureStore{authzFakeStore: store, erased: erased}
		}

		// Events the store holds outside the walk: the create event, an
		// ordinary event and an event of another room.
		held := []*Event{
			visTestEvent(t, version, "$create", visTestRoom, eventTypeCreate, visStateKey(""), visTestBob, "", 100000),
			visTestEvent(t, version, "$held", visTestRoom, "m.room.message", nil, visTestBob, "", 100001),
			visTestEvent(t, version, "$foreign", visTestOther, "m.room.message", nil, visTestBob, "", 100002),
		}
		for _, ev := range held {
			store.events[ev.ID] = ev
		}

		n := rng.IntN(40)
		events := make([]*Event, n)
		for i := range events {
			id := fmt.Sprintf("$e%d", i)
			room := visTestRoom
			if rng.IntN(8) == 0 {
				room = visTestOther
			}
			sender := senders[rng.IntN(len(senders))]
			var ev *Event
			switch rng.IntN(6) {
			case 0:
				ev = visTestEvent(t, version, id, room, eventTypeMember, visStateKey(visTestAlice), sender, "", i)
			case 1:
				ev = visTestEvent(t, version, id, room, eventTypeMember, visStateKey(visTestBob), sender, "", i)
			case 2:
				ev = visTestEvent(t, version, id, room, eventTypeHistoryVisibility, visStateKey(""), sender, "", i)
			case 3:
				targets := []string{"$create", "$held", "$foreign", "$unknown", ""}
				for j := range i {
					targets = append(targets, fmt.Sprintf("$e%d", j))
				}
				ev = visTestEvent(t, version, id, room, eventTypeRedaction, nil, sender, targets[rng.IntN(len(targets))], i)
			default:
				ev = visTestEvent(t, version, id, room, "m.room.message", nil, sender, "", i)
			}
			ev.Rejected = rng.IntN(20) == 0
			if rng.IntN(5) != 0 {
				// Now and then the store has an answer but does not know
				// the state: whatever the states say, that is not visible.
				store.visibility[id] = EventVisibility{Before: randomState(rng), After: randomState(rng), Known: rng.IntN(10) != 0}
			}
			events[i] = ev
			store.events[id] = ev
		}

		out, err := filterEvents(context.Background(), filterStore, version, visTestRoom, visTestOrigin, events, visTestDiscard)
		require.NoError(t, err, "seed %d", seed)

		// The oracle.
		inRoom := map[string]*Event{}
		for _, ev := range events {
			if ev.RoomID == visTestRoom && !ev.Rejected {
				inRoom[ev.ID] = ev
			}
		}
		// The store holds the walk's events too, as a real one would, so
		// a rejected event is held; an event of the other room is not held
		// in this one.
		isHeldInRoom := func(id string) (*Event, bool) {
			ev, ok := store.events[id]
			return ev, ok && ev.RoomID == visTestRoom
		}
		var expected []int // indices into events, in order
		for i, ev := range events {
			if ev.RoomID != visTestRoom || ev.Rejected {
				continue
			}
			if ev.Type == eventTypeRedaction {
				target, ok := isHeldInRoom(ev.Redacts)
				if !ok || target.ID == "$create" {
					continue
				}
			}
			expected = append(expected, i)
		}
		maySeeWhole := func(ev *Event) bool {
			vis := store.visibility[ev.ID]
			if !vis.Known || erased[ev.Sender] {
				return false
			}
			if mayOriginSee(vis.Before) {
				return true
			}
			hvEvent := ev.Type == eventTypeHistoryVisibility && ev.StateKey != nil && *ev.StateKey == ""
			ownMember := ev.Type == eventTypeMember && ev.StateKey != nil && *ev.StateKey == visTestAlice
			return (hvEvent || ownMember) && mayOriginSee(vis.After)
		}

		require.Len(t, out, len(expected), "seed %d: every event that is not withheld leaves, once", seed)
		for _, ev := range events {
			if ev.RoomID != visTestRoom {
				foreign++
			}
		}
		withheld += len(inRoom) - len(expected)
		for k, raw := range out {
			var fields struct {
				RoomID string `json:"room_id"`
				TS     int    `json:"origin_server_ts"`
			}
			require.NoError(t, json.Unmarshal(raw, &fields))
			require.Equal(t, visTestRoom, fields.RoomID, "seed %d: an event of another room left", seed)
			require.Equal(t, expected[k], fields.TS, "seed %d: order not kept", seed)
			ev := events[fields.TS]
			if maySeeWhole(ev) {
				servedWhole++
				require.Equal(t, ev.JSON, raw, "seed %d: %s should leave whole", seed, ev.ID)
			} else {
				servedRedacted++
				require.Equal(t, visRedacted(t, version, ev), raw, "seed %d: %s left unredacted", seed, ev.ID)
				require.NotContains(t, string(raw), "secret", "seed %d", seed)
			}
		}
		wantCalls := 1 // Visibility, when anything is left to filter
		if len(inRoom) == 0 {
			wantCalls = 0
		}
		require.Equal(t, wantCalls, store.callCount("Visibility"), "seed %d", seed)
		require.LessOrEqual(t, store.callCount("Events"), 1, "seed %d", seed)
		require.LessOrEqual(t, store.callCount("ErasedUsers"), 1, "seed %d", seed)
	}
	// The random walks must exercise every outcome, or the test proves little.
	require.Positive(t, servedWhole)
	require.Positive(t, servedRedacted)
	require.Positive(t, withheld)
	require.Positive(t, foreign)
	t.Logf("served whole %d, redacted %d, withheld %d redactions, dropped %d of other rooms", servedWhole, servedRedacted, withheld, foreign)
}
