package sqlstore

import (
	"context"
	"github.com/fedhistory/fedhistory"
	"testing"

	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/stretchr/testify/require"
)

// FuzzAdd feeds arbitrary bytes to Add, on a store that already holds a
// real room. Add must answer with an event ID or an error, never panic, and
// an event it accepts must be served back byte for byte; the reads of its
// room must not fail (CurrentState may, on state resolution over nonsense).
func FuzzAdd(f *testing.F) {
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: "10"})
	require.NoError(f, err)
	require.NoError(f, b.StandardSetup())
	_, err = b.Message(b.Creator(), "hello")
	require.NoError(f, err)
	room := b.Room()
	for _, ev := range room.Events {
		f.Add("10", []byte(ev.JSON))
	}
	f.Add("1", []byte(`{"event_id":"$a:b","room_id":"!r:b","type":"m.room.member","state_key":"@x:y","sender":"@x:y","content":{"membership":7},"prev_events":[["$p:b",{}]],"auth_events":[],"depth":1}`))
	f.Add("12", []byte(`{"type":"m.room.create","state_key":"","sender":"@a:b","content":{"additional_creators":"x"},"prev_events":[],"auth_events":[],"depth":1}`))
	f.Add("11", []byte(`{"room_id":"!r:b","type":"m.room.redaction","sender":"@a:b","content":{"redacts":["x"]},"prev_events":[],"auth_events":[],"depth":1}`))

	s, err := Open(context.Background(), "sqlite::memory:")
	require.NoError(f, err)
	f.Cleanup(func() { s.Close() })
	ctx := context.Background()
	for _, ev := range room.Events {
		_, err := s.Add(ctx, room.Version, ev.JSON, fedhistory.AddOptions{})
		require.NoError(f, err)
	}

	f.Fuzz(func(t *testing.T, version string, pdu []byte) {
		for _, opts := range []fedhistory.AddOptions{{}, {Rejected: true}, {Outlier: true}} {
			id, err := s.Add(ctx, version, pdu, opts)
			if err != nil {
				continue
			}
			var roomID string
			require.NoError(t, s.db.QueryRowContext(ctx, `SELECT room_id FROM events WHERE event_id = ?`, id).Scan(&roomID))
			events, err := s.Events(ctx, roomID, []string{id})
			require.NoError(t, err)
			require.Len(t, events, 1)
			require.Equal(t, pdu, []byte(events[0].JSON))
			_, err = s.Visibility(ctx, roomID, "b", []string{id})
			require.NoError(t, err)
			_, err = walkBackfill(ctx, s, roomID, []string{id}, 5)
			require.NoError(t, err)
			_, _ = s.CurrentState(ctx, roomID, "b")
			break
		}
	})
}
