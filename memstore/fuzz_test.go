package memstore

import (
	"context"
	"testing"

	"github.com/fedhistory/fedhistory"
	"github.com/stretchr/testify/require"
)

// FuzzAdd feeds arbitrary bytes to Add, as the first event of a store and
// after a real room. Add must answer with an event ID or an error, never
// panic, and an event it accepts must be served back byte for byte.
func FuzzAdd(f *testing.F) {
	seedRoom := newTestRoom(f, "10")
	seedRoom.addSetup(New())
	var setup [][]byte
	for _, name := range []string{"create", "alice", "pl", "jr", "hv", "msg1"} {
		setup = append(setup, seedRoom.json(name))
		f.Add("10", seedRoom.json(name))
	}
	f.Add("1", []byte(`{"event_id":"$a:b","room_id":"!r:b","type":"m.room.member","state_key":"@x:y","sender":"@x:y","content":{"membership":7},"prev_events":[["$p:b",{}]],"auth_events":[],"depth":1}`))
	f.Add("12", []byte(`{"type":"m.room.create","state_key":"","sender":"@a:b","content":{"additional_creators":"x"},"prev_events":[],"auth_events":[],"depth":1}`))
	f.Add("12", []byte(`{"room_id":"!","type":"m.room.message","sender":"@a:b","content":{},"prev_events":[],"auth_events":[],"depth":1}`))
	f.Add("11", []byte(`{"room_id":"!r:b","type":"m.room.redaction","sender":"@a:b","content":{"redacts":["x"]},"prev_events":[],"auth_events":[],"depth":1}`))

	f.Fuzz(func(t *testing.T, version string, pdu []byte) {
		fresh := New()
		used := New()
		for _, pdu := range setup {
			_, err := used.Add("10", pdu, fedhistory.AddOptions{})
			require.NoError(t, err)
		}
		for _, s := range []*Store{fresh, used} {
			for _, opts := range []fedhistory.AddOptions{{}, {Rejected: true}, {Outlier: true}} {
				id, err := s.Add(version, pdu, opts)
				if err != nil {
					continue
				}
				s.mu.RLock()
				rec := s.events.at(id)
				s.mu.RUnlock()
				events, err := s.Events(context.Background(), rec.RoomID, []string{id})
				require.NoError(t, err)
				require.Len(t, events, 1)
				require.Equal(t, pdu, []byte(events[0].JSON))
				_, err = s.Visibility(context.Background(), rec.RoomID, "b", []string{id})
				require.NoError(t, err)
				// May fail (state resolution over nonsense), must not panic.
				_, _ = s.CurrentState(context.Background(), rec.RoomID, "b")
				break
			}
		}
	})
}
