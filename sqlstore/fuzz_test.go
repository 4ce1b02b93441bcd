package sqlstore

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/roomgen"
)

// FuzzAdd feeds arbitrary bytes to Add, on a store that already holds a
// real room, with an arbitrary StateBefore (stateBefore: comma-separated
// IDs, "-" for none). Add must answer with an event ID or an error, never
// panic, and an event it accepts must be served back byte for byte, with a
// known state when it was given one; the reads of its room must not fail
// (CurrentState may, on state resolution over nonsense or unknown state).
func FuzzAdd(f *testing.F) {
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: "10"})
	require.NoError(f, err)
	require.NoError(f, b.StandardSetup())
	_, err = b.Message(b.Creator(), "hello")
	require.NoError(f, err)
	room := b.Room()
	var stateIDs []string
	for _, ev := range room.Events[:len(room.Events)-1] {
		stateIDs = append(stateIDs, ev.ID)
	}
	for _, ev := range room.Events {
		f.Add("10", []byte(ev.JSON), "-")
		f.Add("10", []byte(ev.JSON), strings.Join(stateIDs, ","))
	}
	f.Add("10", []byte(room.Events[len(room.Events)-1].JSON), "")
	f.Add("10", []byte(room.Events[len(room.Events)-1].JSON), stateIDs[0]+","+stateIDs[0])
	f.Add("1", []byte(`{"event_id":"$a:b","room_id":"!r:b","type":"m.room.member","state_key":"@x:y","sender":"@x:y","content":{"membership":7},"prev_events":[["$p:b",{}]],"auth_events":[],"depth":1}`), "-")
	f.Add("12", []byte(`{"type":"m.room.create","state_key":"","sender":"@a:b","content":{"additional_creators":"x"},"prev_events":[],"auth_events":[],"depth":1}`), "-")
	f.Add("11", []byte(`{"room_id":"!r:b","type":"m.room.redaction","sender":"@a:b","content":{"redacts":["x"]},"prev_events":[],"auth_events":[],"depth":1}`), "-")

	s, err := Open(context.Background(), "sqlite::memory:", Options{})
	require.NoError(f, err)
	f.Cleanup(func() { s.Close() })
	ctx := context.Background()
	for _, ev := range room.Events {
		_, err := s.Add(ctx, room.Version, ev.JSON, fedhistory.AddOptions{})
		require.NoError(f, err)
	}

	f.Fuzz(func(t *testing.T, version string, pdu []byte, stateBefore string) {
		var given []string
		if stateBefore != "-" {
			given = strings.Split(stateBefore, ",")
			if stateBefore == "" {
				given = []string{}
			}
		}
		for _, opts := range []fedhistory.AddOptions{{StateBefore: given}, {Rejected: true, StateBefore: given}, {Outlier: true}} {
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
			vis, err := s.Visibility(ctx, roomID, "b", []string{id})
			require.NoError(t, err)
			if opts.StateBefore != nil {
				require.True(t, vis[0].Known, "an event given its state has a known state")
			}
			_, err = walkBackfill(ctx, s, roomID, []string{id}, 5)
			require.NoError(t, err)
			_, _ = s.CurrentState(ctx, roomID, "b")
			break
		}
	})
}

// FuzzDecodeIDList requires decodeIDList, the prev_events column's decoder,
// to give exactly what encoding/json gives for any input: the same IDs (nil
// and empty told apart) and an error exactly when encoding/json fails.
func FuzzDecodeIDList(f *testing.F) {
	for _, seed := range []string{
		`[]`, `null`, `["$a:b"]`, `["$a:b","$c:d"]`, `[ "$a" ]`, `["\u0041"]`, `["a\"b"]`,
		`["é"]`, "[\"\xff\"]", `["a",]`, `[,"a"]`, `["a""b"]`, `[1]`, `["a",1]`, `{}`, `[`, ``, `"a"`,
		`["a"] `, `[""]`, `["",""]`, "[\"a\x7f\"]", `[null]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var want []string
		wantErr := json.Unmarshal(b, &want)
		got, err := decodeIDList(b)
		if wantErr != nil {
			require.Error(t, err)
			return
		}
		require.NoError(t, err)
		require.Equal(t, want == nil, got == nil, "nil and empty told apart")
		require.Equal(t, want, got)
		if fast, ok := decodeIDListFast(b); ok {
			require.Equal(t, want, fast)
		}
	})
}
