package memstore

import (
	"context"
	"testing"

	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
)

// redaction is a redaction of target by sender, "redacts" where the room
// version puts it (content from room version 11, spec: rooms/v11).
func (r *testRoom) redaction(sender, target string, prev, auth []string) testEvent {
	ev := testEvent{sender: sender, typ: spec.MRoomRedaction, content: map[string]string{}, prev: prev, auth: auth}
	if r.version == "11" || r.version == "12" {
		ev.content = map[string]string{"redacts": r.id(target)}
	} else {
		ev.redacts = target
	}
	return ev
}

// redactedEverywhere returns Redacted of id as every method that hands out
// events reports it, and fails when two disagree.
func redactedEverywhere(t *testing.T, s *Store, roomID, id string) bool {
	t.Helper()
	ctx := context.Background()
	events, err := s.Events(ctx, roomID, []string{id})
	require.NoError(t, err)
	require.Len(t, events, 1)
	redacted := events[0].Redacted
	byID, err := s.EventByID(ctx, id)
	require.NoError(t, err)
	require.Equal(t, redacted, byID.Redacted, "EventByID")
	if events[0].Outlier || events[0].Rejected {
		return redacted
	}
	walked, err := walkBackfill(ctx, s, roomID, []string{id}, 1)
	require.NoError(t, err)
	require.Len(t, walked, 1)
	require.Equal(t, redacted, walked[0].Redacted, "WalkBackfill")
	at, err := s.EventAtTimestamp(ctx, roomID, events[0].OriginServerTS, fedhistory.Backward)
	require.NoError(t, err)
	if at.ID == id {
		require.Equal(t, redacted, at.Redacted, "EventAtTimestamp")
	}
	return redacted
}

// TestRedactions follows "Redactions" on fedhistory.EventStore: whether a
// redaction applies depends on the room version, the state before the
// redaction (never one the store does not know), the senders' servers, and
// nothing else; the order of arrival does not matter.
func TestRedactions(t *testing.T) {
	auth := names("create", "pl", "alice")
	tests := []struct {
		name    string
		version string
		// build adds the target "msg", and the redaction "red" before or
		// after it.
		build   func(t *testing.T, s *Store, r *testRoom)
		applies bool
	}{
		{"v10: by power (alice has 100)", "10", func(t *testing.T, s *Store, r *testRoom) {
			r.add(s, "msg", r.message(dave, "x", names("msg1"), auth), fedhistory.AddOptions{})
			r.add(s, "red", r.redaction(alice, "msg", names("msg"), auth), fedhistory.AddOptions{})
		}, true},
		{"v10: neither power nor the same server", "10", func(t *testing.T, s *Store, r *testRoom) {
			r.add(s, "msg", r.message(alice, "x", names("msg1"), auth), fedhistory.AddOptions{})
			r.add(s, "red", r.redaction(dave, "msg", names("msg"), auth), fedhistory.AddOptions{})
		}, false},
		{"v10: the same server, port included", "10", func(t *testing.T, s *Store, r *testRoom) {
			r.add(s, "msg", r.message("@zed:other:8448", "x", names("msg1"), auth), fedhistory.AddOptions{})
			r.add(s, "red", r.redaction(bob, "msg", names("msg"), auth), fedhistory.AddOptions{})
		}, true},
		{"v10: a server that differs only in its port is another server", "10", func(t *testing.T, s *Store, r *testRoom) {
			r.add(s, "msg", r.message(dave, "x", names("msg1"), auth), fedhistory.AddOptions{})
			r.add(s, "red", r.redaction(bob, "msg", names("msg"), auth), fedhistory.AddOptions{})
		}, false},
		{"v10: the redaction arrives first", "10", func(t *testing.T, s *Store, r *testRoom) {
			r.build("msg", r.message(dave, "x", names("msg1"), auth))
			r.add(s, "red", r.redaction(alice, "msg", names("msg1"), auth), fedhistory.AddOptions{})
			_, err := s.Add("10", r.json("msg"), fedhistory.AddOptions{})
			require.NoError(t, err)
		}, true},
		{"v10: the redaction arrives first, and does not apply", "10", func(t *testing.T, s *Store, r *testRoom) {
			r.build("msg", r.message(alice, "x", names("msg1"), auth))
			r.add(s, "red", r.redaction(dave, "msg", names("msg1"), auth), fedhistory.AddOptions{})
			_, err := s.Add("10", r.json("msg"), fedhistory.AddOptions{})
			require.NoError(t, err)
		}, false},
		{"v10: power in a state the store does not know does not count", "10", func(t *testing.T, s *Store, r *testRoom) {
			r.add(s, "msg", r.message(dave, "x", names("msg1"), auth), fedhistory.AddOptions{})
			r.build("gap", r.message(alice, "lost", names("msg"), auth))
			r.add(s, "red", r.redaction(alice, "msg", names("gap"), auth), fedhistory.AddOptions{})
		}, false},
		{"v10: an outlier redaction of the same server applies", "10", func(t *testing.T, s *Store, r *testRoom) {
			r.add(s, "msg", r.message(alice, "x", names("msg1"), auth), fedhistory.AddOptions{})
			r.add(s, "red", r.redaction("@al:hs1.example", "msg", names("msg"), auth), fedhistory.AddOptions{Outlier: true})
		}, true},
		{"v10: a rejected redaction does not apply", "10", func(t *testing.T, s *Store, r *testRoom) {
			r.add(s, "msg", r.message(dave, "x", names("msg1"), auth), fedhistory.AddOptions{})
			r.add(s, "red", r.redaction(alice, "msg", names("msg"), auth), fedhistory.AddOptions{Rejected: true})
		}, false},
		{"v10: never the create event", "10", func(t *testing.T, s *Store, r *testRoom) {
			r.add(s, "red", r.redaction(alice, "create", names("msg1"), auth), fedhistory.AddOptions{})
			r.events["msg"] = r.events["create"]
		}, false},
		{"v1: the auth rules checked it: it applies in any state", "1", func(t *testing.T, s *Store, r *testRoom) {
			r.add(s, "msg", r.message(dave, "x", names("msg1"), auth), fedhistory.AddOptions{})
			r.build("gap", r.message(alice, "lost", names("msg"), auth))
			r.add(s, "red", r.redaction(alice, "msg", names("gap"), auth), fedhistory.AddOptions{})
		}, true},
		{"v12: the creator is above every level", "12", func(t *testing.T, s *Store, r *testRoom) {
			r.add(s, "msg", r.message(dave, "x", names("msg1"), auth), fedhistory.AddOptions{})
			r.add(s, "red", r.redaction(alice, "msg", names("msg"), auth), fedhistory.AddOptions{})
		}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New()
			r := newTestRoom(t, tc.version)
			r.addSetup(s)
			tc.build(t, s, r)
			require.Equal(t, tc.applies, redactedEverywhere(t, s, r.roomID, r.id("msg")))
			require.False(t, redactedEverywhere(t, s, r.roomID, r.id("red")), "the redaction itself is unaffected")
		})
	}
}

func TestRedactionOfAnotherRoomsEvent(t *testing.T) {
	s := New()
	r := newTestRoom(t, "1")
	r.addSetup(s)
	other := newTestRoom(t, "1")
	other.addSetup(s)
	// In room version 1 any redaction that passed the auth rules applies,
	// but only in its own room: both arrival orders.
	r.build("late", r.message(alice, "late", names("msg1"), names("create", "pl", "alice")))
	other.events["target"], other.events["late"] = r.events["msg1"], r.events["late"]
	other.add(s, "red1", other.redaction(alice, "target", names("msg1"), names("create", "pl", "alice")), fedhistory.AddOptions{})
	other.add(s, "red2", other.redaction(alice, "late", names("red1"), names("create", "pl", "alice")), fedhistory.AddOptions{})
	_, err := s.Add("1", r.json("late"), fedhistory.AddOptions{})
	require.NoError(t, err)
	require.False(t, redactedEverywhere(t, s, r.roomID, r.id("msg1")))
	require.False(t, redactedEverywhere(t, s, r.roomID, r.id("late")))
}

// TestRedactedEventsAreNewEvents: handed-out events never change; a
// redaction publishes a new event for its target.
func TestRedactedEventsAreNewEvents(t *testing.T) {
	s := New()
	r := newTestRoom(t, "10")
	r.addSetup(s)
	ctx := context.Background()
	before, err := s.EventByID(ctx, r.id("msg1"))
	require.NoError(t, err)
	r.add(s, "red", r.redaction(alice, "msg1", names("msg1"), names("create", "pl", "alice")), fedhistory.AddOptions{})
	after, err := s.EventByID(ctx, r.id("msg1"))
	require.NoError(t, err)
	require.False(t, before.Redacted, "an event handed out before the redaction is not modified")
	require.True(t, after.Redacted)
	require.NotSame(t, before, after)
	wantSame := *before
	wantSame.Redacted = true
	require.Equal(t, wantSame, *after, "only Redacted differs")
	// A second redaction changes nothing more.
	r.add(s, "red2", r.redaction(alice, "msg1", names("red"), names("create", "pl", "alice")), fedhistory.AddOptions{})
	again, err := s.EventByID(ctx, r.id("msg1"))
	require.NoError(t, err)
	require.Same(t, after, again)
}

func TestSelfRedactionIsNoRedaction(t *testing.T) {
	s := New()
	r := newTestRoom(t, "1")
	r.addSetup(s)
	// In room version 1 the event ID is chosen before the event is built,
	// so an event can name itself; whatever it means, the contract leaves
	// the redaction event itself unaffected.
	pdu := []byte(`{"event_id":"$self:hs1.example","room_id":"` + r.roomID + `","sender":"` + alice + `","type":"m.room.redaction","redacts":"$self:hs1.example",` +
		`"content":{},"depth":7,"origin_server_ts":1,"hashes":{"sha256":"x"},"prev_events":[["` + r.id("msg1") + `",{}]],"auth_events":[]}`)
	_, err := s.Add("1", pdu, fedhistory.AddOptions{})
	require.NoError(t, err)
	require.False(t, redactedEverywhere(t, s, r.roomID, "$self:hs1.example"))
}
