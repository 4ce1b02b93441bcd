package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"iter"
	"runtime"
	"slices"
	"testing"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/stretchr/testify/require"
)

// Users of the scenario rooms. Carol's server has a port and Dave's server is
// the same host without one: they are different servers.
const (
	bob     = "@bob:hs2.example"
	carol   = "@carol:other:8448"
	dave    = "@dave:other"
	eve     = "@eve:third.example"
	mallory = "@mallory:evil.example"
)

// servers are the servers whose view of the rooms the tests compare.
var servers = []string{"hs1.example", "hs2.example", "other:8448", "other", "third.example", "nobody.example"}

// scenarioRoom builds a room that exercises every part of the state
// machinery: more consecutive state changes than a delta chain holds, forks
// whose branches change state concurrently (resolved at the merge), a
// rejected state event, an outlier, an event left out of the store (a gap),
// and two forward extremities at the end, whose states disagree.
//
// It returns the room and the IDs of events to leave out of the store.
func scenarioRoom(t testing.TB, version string, seed int64) (*roomgen.Room, map[string]bool) {
	t.Helper()
	// Zoe, not roomgen.Generate's Alice, creates the room: from version 12
	// on, two rooms created by one user at one time would be one room.
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: version, Seed: seed, Creator: "@zoe:hs1.example"})
	require.NoError(t, err)
	require.NoError(t, b.StandardSetup())
	alice := b.Creator()
	must := func(_ roomgen.Event, err error) { t.Helper(); require.NoError(t, err) }

	for _, user := range []string{bob, carol, dave} {
		must(b.Join(user))
	}
	must(b.State(alice, "m.room.server_acl", "", map[string]any{"allow": []string{"*"}, "deny": []string{"evil.example"}, "allow_ip_literals": false}))
	for i := range maxDeltaChain + 7 {
		must(b.Event(roomgen.EventSpec{Sender: carol, Type: spec.MRoomMember, StateKey: ptr(carol),
			Content: map[string]string{"membership": "join", "displayname": fmt.Sprint("carol ", i)}}))
	}
	must(b.Message(bob, "before the fork"))
	// Redactions: by the room's creator, who may redact anything; by dave,
	// who may not and is not of carol's server (it applies in room versions
	// 1 and 2 only).
	secret, err := b.Message(bob, "my password is hunter2")
	require.NoError(t, err)
	must(b.Redact(alice, secret.ID))
	carols, err := b.Message(carol, "carol's message")
	require.NoError(t, err)
	must(b.Redact(dave, carols.ID))

	// A fork whose branches change state concurrently. Room version 12's
	// state resolution cannot be driven by roomgen to a conflict on one key
	// (see roomgen.ErrConcurrentStateChange), so there the branches change
	// different keys.
	other := b.Fork()
	must(b.HistoryVisibility(alice, "joined"))
	must(b.Member(alice, bob, "ban"))
	require.NoError(t, b.Branch(other))
	must(b.Message(bob, "on branch B"))
	if version != "12" {
		must(b.HistoryVisibility(alice, "invited"))
	}
	must(b.Leave(carol))
	require.NoError(t, b.Merge())
	must(b.Message(alice, "merged"))

	// A rejected state event: walks pass through it, it changes no state.
	must(b.Event(roomgen.EventSpec{Sender: mallory, Type: spec.MRoomHistoryVisibility, StateKey: ptr(""),
		Content: map[string]string{"history_visibility": "world_readable"}, Rejected: true}))
	// An outlier state event.
	must(b.Event(roomgen.EventSpec{Sender: eve, Type: spec.MRoomMember, StateKey: ptr(eve),
		Content: map[string]string{"membership": "join"}, Outlier: true}))
	gap, err := b.Message(dave, "never stored")
	require.NoError(t, err)
	must(b.Message(alice, "after the gap"))
	// A redaction whose target the store never holds: it waits for good.
	must(b.Redact(alice, gap.ID))

	// Two forward extremities whose states disagree.
	other = b.Fork()
	must(b.HistoryVisibility(alice, "shared"))
	require.NoError(t, b.Branch(other))
	must(b.Leave(dave))
	return b.Room(), map[string]bool{gap.ID: true}
}

func ptr[T any](v T) *T { return &v }

// testRooms are the rooms the store is compared with memstore on.
func testRooms(t testing.TB) map[string]*roomgen.Room {
	rooms := make(map[string]*roomgen.Room)
	for i, version := range []string{"1", "2", "3", "10", "11", "12"} {
		room, err := roomgen.Generate(roomgen.Options{
			Version: version, Events: 120, ForkEvery: 6, Seed: int64(100 + i),
			OtherServers:             []string{"hs2.example", "other:8448", "other"},
			HistoryVisibilityChanges: true, ServerACL: true, RejectedEvery: 5, MessageBytes: 300,
		})
		require.NoError(t, err)
		rooms["generated v"+version] = room
	}
	return rooms
}

// addRoom adds room's events, but those in skip, to both stores.
func addRoom(t testing.TB, s *Store, mem *memstore.Store, room *roomgen.Room, skip map[string]bool) {
	t.Helper()
	ctx := context.Background()
	for _, ev := range room.Events {
		if skip[ev.ID] {
			continue
		}
		id, err := s.Add(ctx, room.Version, ev.JSON, fedhistory.AddOptions{Rejected: ev.Rejected, Outlier: ev.Outlier})
		require.NoError(t, err)
		require.Equal(t, ev.ID, id)
		if mem != nil {
			_, err = mem.Add(room.Version, ev.JSON, fedhistory.AddOptions{Rejected: ev.Rejected, Outlier: ev.Outlier})
			require.NoError(t, err)
		}
	}
}

// requireSameAsMemstore compares every read of the EventStore interface on
// room between the two stores.
func requireSameAsMemstore(t *testing.T, s *Store, mem *memstore.Store, room *roomgen.Room) {
	t.Helper()
	ctx := context.Background()
	ids := []string{"$unknown:hs1.example"}
	for _, ev := range room.Events {
		ids = append(ids, ev.ID)
	}

	version, err := s.RoomVersion(ctx, room.ID)
	require.NoError(t, err)
	require.Equal(t, room.Version, version)

	want, err := mem.Events(ctx, room.ID, ids)
	require.NoError(t, err)
	got, err := s.Events(ctx, room.ID, ids)
	require.NoError(t, err)
	require.Equal(t, want, got)

	for _, server := range servers {
		wantVis, err := mem.Visibility(ctx, room.ID, server, ids)
		require.NoError(t, err)
		gotVis, err := s.Visibility(ctx, room.ID, server, ids)
		require.NoError(t, err)
		require.Equal(t, wantVis, gotVis, "visibility for %s", server)

		// A room with a gap upstream of a forward extremity has no known
		// current state: both stores must say so.
		wantCurrent, wantErr := mem.CurrentState(ctx, room.ID, server)
		gotCurrent, err := s.CurrentState(ctx, room.ID, server)
		if wantErr != nil {
			require.ErrorIs(t, wantErr, fedhistory.ErrStateUnknown)
			require.ErrorIs(t, err, fedhistory.ErrStateUnknown)
			continue
		}
		require.NoError(t, err)
		require.Equal(t, wantCurrent, gotCurrent, "current state for %s", server)
	}

	// StateIDs (from the auth counts, or, after an upgrade, the walk) is
	// memstore's StateBefore and AuthChain.
	for _, ev := range room.Events {
		wantState, wantChain, wantErr := fedhistory.StateIDs(ctx, mem, room.ID, ev.ID)
		if wantErr != nil {
			_, _, err := s.StateIDs(ctx, room.ID, ev.ID)
			require.Error(t, err, "StateIDs of %s", ev.ID)
			continue
		}
		gotState, gotChain, err := s.StateIDs(ctx, room.ID, ev.ID)
		require.NoError(t, err, "StateIDs of %s", ev.ID)
		require.ElementsMatch(t, wantState, gotState, "state before %s", ev.ID)
		require.ElementsMatch(t, wantChain, gotChain, "auth chain of the state before %s", ev.ID)
	}
}

// TestSameAsMemstore checks that every read answers exactly as memstore, the
// reference implementation, does for the same events.
func TestSameAsMemstore(t *testing.T) {
	rooms := testRooms(t)
	scenarios := make(map[string]map[string]bool)
	for i, version := range []string{"1", "3", "10", "11", "12"} {
		room, skip := scenarioRoom(t, version, int64(200+i))
		name := "scenario v" + version
		rooms[name], scenarios[name] = room, skip
	}
	forEachDialect(t, func(t *testing.T, s *Store) {
		// All rooms share one store, as they would in production: no read
		// may see another room's events.
		mem := memstore.New()
		for name, room := range rooms {
			addRoom(t, s, mem, room, scenarios[name])
		}
		for name, room := range rooms {
			t.Run(name, func(t *testing.T) {
				requireSameAsMemstore(t, s, mem, room)
			})
		}
	})
}

func TestStateIsStoredAsBoundedDeltas(t *testing.T) {
	room, skip := scenarioRoom(t, "10", 5)
	forEachDialect(t, func(t *testing.T, s *Store) {
		addRoom(t, s, nil, room, skip)
		ctx := context.Background()

		var groups, entries, longest, stateEvents int
		require.NoError(t, s.db.QueryRowContext(ctx, `SELECT COUNT(*), MAX(chain_length) FROM state_groups`).Scan(&groups, &longest))
		require.NoError(t, s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM state_group_entries`).Scan(&entries))
		require.NoError(t, s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM events WHERE state_key IS NOT NULL AND NOT rejected AND NOT outlier`).Scan(&stateEvents))
		require.LessOrEqual(t, longest, maxDeltaChain, "delta chains are bounded")

		// A full copy per state change would hold about stateEvents²/2
		// entries; deltas hold one per change plus a snapshot per chain
		// (and the few entries of the merges).
		require.Less(t, entries, 3*stateEvents+stateEvents/maxDeltaChain*20+20)
		require.Less(t, groups, stateEvents+5, "messages share their before-group")
	})
}

func TestAddErrors(t *testing.T) {
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: "10"})
	require.NoError(t, err)
	require.NoError(t, b.StandardSetup())
	room := b.Room()
	create := room.Events[0]

	tests := []struct {
		name    string
		version string
		pdu     []byte
		want    error
	}{
		{name: "a duplicate event", version: "10", pdu: create.JSON, want: fedhistory.ErrDuplicateEvent},
		{name: "another version for the same room", version: "9", pdu: room.Events[1].JSON, want: fedhistory.ErrRoomVersionMismatch},
		{name: "an unknown room version", version: "13", pdu: create.JSON, want: fedhistory.ErrUnsupportedRoomVersion},
		{name: "an unstable room version", version: "org.matrix.hydra.11", pdu: create.JSON, want: fedhistory.ErrUnsupportedRoomVersion},
		{name: "not JSON", version: "10", pdu: []byte(`{"type":`), want: fedhistory.ErrInvalidEvent},
		{name: "no room ID", version: "10", pdu: []byte(`{"type":"m.room.message","sender":"@a:b","content":{},"prev_events":[],"auth_events":[],"depth":1}`), want: fedhistory.ErrInvalidEvent},
	}
	forEachDialect(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		_, err := s.Add(ctx, room.Version, create.JSON, fedhistory.AddOptions{})
		require.NoError(t, err)
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				_, err := s.Add(ctx, tt.version, tt.pdu, fedhistory.AddOptions{})
				require.ErrorIs(t, err, tt.want)
			})
		}
	})
}

func TestAddBatchIsAllOrNothing(t *testing.T) {
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: "11"})
	require.NoError(t, err)
	require.NoError(t, b.StandardSetup())
	room := b.Room()
	forEachDialect(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		var batch []Pending
		for _, ev := range room.Events {
			batch = append(batch, Pending{RoomVersion: room.Version, PDU: ev.JSON})
		}
		// The last event repeats the first: the whole batch fails.
		err := s.AddBatch(ctx, append(batch, batch[0]))
		require.ErrorIs(t, err, fedhistory.ErrDuplicateEvent)
		_, err = s.RoomVersion(ctx, room.ID)
		require.ErrorIs(t, err, fedhistory.ErrRoomNotFound)

		require.NoError(t, s.AddBatch(ctx, batch))
		requireStoredAsByAdd(t, s, []*roomgen.Room{room})
	})
}

func TestUnknownRoom(t *testing.T) {
	forEachDialect(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		_, err := s.RoomVersion(ctx, "!nowhere:hs1.example")
		require.ErrorIs(t, err, fedhistory.ErrRoomNotFound)
		_, err = s.CurrentState(ctx, "!nowhere:hs1.example", "hs1.example")
		require.ErrorIs(t, err, fedhistory.ErrRoomNotFound)
		events, err := s.Events(ctx, "!nowhere:hs1.example", []string{"$a"})
		require.NoError(t, err)
		require.Empty(t, events)
		vis, err := s.Visibility(ctx, "!nowhere:hs1.example", "hs1.example", []string{"$a"})
		require.NoError(t, err)
		require.Equal(t, []fedhistory.EventVisibility{{}}, vis, "one answer, not known")
	})
}

func TestErasure(t *testing.T) {
	forEachDialect(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		require.NoError(t, s.EraseUser(ctx, bob))
		require.NoError(t, s.EraseUser(ctx, bob), "erasing twice is no error")
		require.NoError(t, s.EraseUser(ctx, carol))
		erased, err := s.ErasedUsers(ctx, []string{bob, dave, carol})
		require.NoError(t, err)
		require.Equal(t, map[string]bool{bob: true, carol: true}, erased)
		erased, err = s.ErasedUsers(ctx, nil)
		require.NoError(t, err)
		require.Empty(t, erased)
	})
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	t.Run("unsupported DSNs", func(t *testing.T) {
		for _, dsn := range []string{"", "mysql://localhost/db", "sqlite:", "/tmp/file.db"} {
			_, err := Open(ctx, dsn, Options{})
			require.Error(t, err, dsn)
		}
		_, err := Open(ctx, "mysql://localhost/db", Options{})
		require.ErrorIs(t, err, ErrUnsupportedDSN)
	})
	t.Run("in-memory SQLite", func(t *testing.T) {
		s, err := Open(ctx, "sqlite::memory:", Options{})
		require.NoError(t, err)
		defer s.Close()
		room, skip := scenarioRoom(t, "11", 1)
		mem := memstore.New()
		addRoom(t, s, mem, room, skip)
		requireSameAsMemstore(t, s, mem, room)
	})
	for _, d := range dialects {
		t.Run("reopening keeps the data and migrates once: "+d, func(t *testing.T) {
			dsn := testDSN(t, d)
			// Concurrent migrations of one fresh database: the migration
			// lock makes exactly one of them create the schema.
			errs := make(chan error, 4)
			for range cap(errs) {
				go func() { errs <- Migrate(ctx, dsn) }()
			}
			for range cap(errs) {
				require.NoError(t, <-errs)
			}
			s, err := Open(ctx, dsn, Options{})
			require.NoError(t, err)
			require.NoError(t, s.EraseUser(ctx, bob))
			require.NoError(t, s.Close())

			s, err = Open(ctx, dsn, Options{})
			require.NoError(t, err)
			defer s.Close()
			var version, rows int
			require.NoError(t, s.db.QueryRowContext(ctx, `SELECT MAX(version), COUNT(*) FROM schema_version`).Scan(&version, &rows))
			require.Equal(t, len(migrations), version)
			require.Equal(t, 1, rows)
			erased, err := s.ErasedUsers(ctx, []string{bob})
			require.NoError(t, err)
			require.True(t, erased[bob])
		})
	}
	t.Run("a database from a newer build", func(t *testing.T) {
		dsn := testDSN(t, "sqlite")
		s, err := Open(ctx, dsn, Options{Migrate: true})
		require.NoError(t, err)
		_, err = s.db.ExecContext(ctx, `UPDATE schema_version SET version = 999`)
		require.NoError(t, err)
		require.NoError(t, s.Close())
		_, err = Open(ctx, dsn, Options{})
		require.True(t, errors.Is(err, ErrSchemaTooNew), "got %v", err)
		require.ErrorIs(t, Migrate(ctx, dsn), ErrSchemaTooNew)
	})
	for _, d := range dialects {
		t.Run("serving never migrates: "+d, func(t *testing.T) {
			dsn := testDSN(t, d)
			_, err := Open(ctx, dsn, Options{})
			require.ErrorIs(t, err, ErrSchemaTooOld)
			require.ErrorContains(t, err, "fedhistory migrate --db")
			// Open only looked: the database has no table yet.
			raw, err := Open(ctx, dsn, Options{Migrate: false, MaxOpenConns: 1})
			require.ErrorIs(t, err, ErrSchemaTooOld)
			require.Nil(t, raw)
			require.ErrorContains(t, err, "at version 0")
			require.NoError(t, Migrate(ctx, dsn))
			s, err := Open(ctx, dsn, Options{})
			require.NoError(t, err)
			require.NoError(t, s.Close())
		})
	}
}

// TestStringsTheDatabaseCannotHold: IDs with NUL characters or invalid UTF-8,
// which PostgreSQL's text type refuses, find nothing instead of failing.
func TestStringsTheDatabaseCannotHold(t *testing.T) {
	// Without the scenario's gaps: the room's current state is known.
	room, _ := scenarioRoom(t, "10", 77)
	forEachDialect(t, func(t *testing.T, s *Store) {
		addRoom(t, s, nil, room, nil)
		ctx := context.Background()
		latest := room.Events[len(room.Events)-1].ID
		for _, bad := range []string{"$a\x00b", "!r\x00:hs1.example", "\xff\xfe"} {
			_, err := s.RoomVersion(ctx, bad)
			require.ErrorIs(t, err, fedhistory.ErrRoomNotFound)
			_, err = s.CurrentState(ctx, bad, "hs1.example")
			require.ErrorIs(t, err, fedhistory.ErrRoomNotFound)
			current, err := s.CurrentState(ctx, room.ID, bad)
			require.NoError(t, err)
			require.Empty(t, current.Memberships)

			events, err := s.Events(ctx, room.ID, []string{bad, latest})
			require.NoError(t, err)
			require.Equal(t, []string{latest}, eventIDs(events))
			events, err = s.Events(ctx, bad, []string{latest})
			require.NoError(t, err)
			require.Empty(t, events)

			vis, err := s.Visibility(ctx, room.ID, bad, []string{bad, latest})
			require.NoError(t, err)
			require.Len(t, vis, 2)
			require.False(t, vis[0].Known, "an unstorable ID is unknown")
			require.True(t, vis[1].Known)
			require.Empty(t, vis[1].Before.Memberships)

			// The walks answer as if the unstorable ID were any unknown one.
			walked, err := walkBackfill(ctx, s, room.ID, []string{bad, latest}, 3)
			require.NoError(t, err)
			want, err := walkBackfill(ctx, s, room.ID, []string{"$unknown", latest}, 3)
			require.NoError(t, err)
			require.NotEmpty(t, walked)
			require.Equal(t, want, walked)
			walked, err = walkMissingEvents(ctx, s, room.ID, []string{bad}, []string{bad, latest}, 3, 0)
			require.NoError(t, err)
			want, err = walkMissingEvents(ctx, s, room.ID, []string{"$unknown"}, []string{"$unknown2", latest}, 3, 0)
			require.NoError(t, err)
			require.NotEmpty(t, walked)
			require.Equal(t, want, walked)
			walked, err = walkBackfill(ctx, s, bad, []string{latest}, 3)
			require.NoError(t, err)
			require.Empty(t, walked)

			erased, err := s.ErasedUsers(ctx, []string{bad})
			require.NoError(t, err)
			require.Empty(t, erased)
		}
	})
}

// TestPostgresSessionsRunWithoutJIT: the store's PostgreSQL sessions have
// jit=off (its recursive lookups were compiled for longer than they ran),
// unless the DSN sets jit itself.
func TestPostgresSessionsRunWithoutJIT(t *testing.T) {
	dsn := testDSN(t, "postgres")
	ctx := context.Background()
	for _, tc := range []struct{ dsn, want string }{
		{dsn, "off"},
		{dsn + "&jit=on", "on"},
	} {
		s, err := Open(ctx, tc.dsn, Options{Migrate: true})
		require.NoError(t, err)
		var jit string
		require.NoError(t, s.db.QueryRowContext(ctx, `SHOW jit`).Scan(&jit))
		require.Equal(t, tc.want, jit, tc.dsn)
		require.NoError(t, s.Close())
	}
}

// TestAddBatchParsedAhead runs batches of several chunks, which AddBatch
// parses one chunk ahead of its writes (see parseAhead): two rooms in one
// batch, one of them of room version 12 (whose create event names no room,
// so roomsOf parses it to lock its room), are stored as one Add per event
// would store them; an event that does not parse, in the last chunk, fails
// the whole batch with its error after the earlier chunks were written,
// leaving nothing behind, even when an earlier chunk holds a duplicate.
func TestAddBatchParsedAhead(t *testing.T) {
	rooms, batch := twoRoomBatch(t)
	require.Equal(t, []string{rooms[0].ID, rooms[1].ID}, roomsOf(batch), "the rooms PostgreSQL locks before the first write")
	forEachDialect(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		s.addChunk = 7
		bad := append(slices.Clone(batch), Pending{RoomVersion: "11", PDU: []byte(`{"type":`)})
		require.ErrorIs(t, s.AddBatch(ctx, bad), fedhistory.ErrInvalidEvent)
		// As when a batch was parsed whole first: an event that does not
		// parse wins over an earlier error found while writing.
		bad[3] = bad[0]
		err := s.AddBatch(ctx, bad)
		require.ErrorIs(t, err, fedhistory.ErrInvalidEvent)
		require.NotErrorIs(t, err, fedhistory.ErrDuplicateEvent)
		require.ErrorIs(t, s.AddBatch(ctx, bad[:len(bad)-1]), fedhistory.ErrDuplicateEvent)
		requireNoRoom(t, s, rooms)

		require.NoError(t, s.AddBatch(ctx, batch))
		requireStoredAsByAdd(t, s, rooms)
	})
}

// twoRoomBatch returns two generated rooms, of versions 11 and 12, and all
// their events in one batch, more than four chunks of 7.
func twoRoomBatch(t *testing.T) ([]*roomgen.Room, []Pending) {
	var (
		rooms []*roomgen.Room
		batch []Pending
	)
	for i, version := range []string{"11", "12"} {
		room, err := roomgen.Generate(roomgen.Options{Version: version, Events: 30, Seed: int64(i + 1)})
		require.NoError(t, err)
		rooms = append(rooms, room)
		for _, ev := range room.Events {
			batch = append(batch, Pending{RoomVersion: room.Version, PDU: ev.JSON})
		}
	}
	require.Greater(t, len(batch), 4*7)
	return rooms, batch
}

// requireNoRoom checks that s holds nothing of rooms: a failed batch
// stored nothing.
func requireNoRoom(t *testing.T, s *Store, rooms []*roomgen.Room) {
	t.Helper()
	for _, room := range rooms {
		_, err := s.RoomVersion(context.Background(), room.ID)
		require.ErrorIs(t, err, fedhistory.ErrRoomNotFound, "nothing of the failed batch is stored")
	}
}

// requireStoredAsByAdd checks that s holds rooms as memstore does after
// one Add per event.
func requireStoredAsByAdd(t *testing.T, s *Store, rooms []*roomgen.Room) {
	t.Helper()
	for _, room := range rooms {
		mem := memstore.New()
		for _, ev := range room.Events {
			_, err := mem.Add(room.Version, ev.JSON, fedhistory.AddOptions{})
			require.NoError(t, err)
		}
		requireSameAsMemstore(t, s, mem, room)
	}
}

func TestAddSeq(t *testing.T) {
	rooms, batch := twoRoomBatch(t)
	errSource := errors.New("the source's own error")
	yieldErr := func(yield func(Pending, error) bool) { yield(Pending{}, errSource) }
	// seqOf yields events, then calls end (when not nil) with its yield;
	// ended reports whether the sequence's function has returned.
	seqOf := func(events []Pending, end func(yield func(Pending, error) bool)) (seq iter.Seq2[Pending, error], ended *bool) {
		ended = new(bool)
		return func(yield func(Pending, error) bool) {
			defer func() { *ended = true }()
			for _, p := range events {
				if !yield(p, nil) {
					return
				}
			}
			if end != nil {
				end(yield)
			}
		}, ended
	}
	forEachDialect(t, func(t *testing.T, s *Store) {
		ctx := context.Background()
		s.addChunk = 7

		seq, ended := seqOf(batch, yieldErr)
		require.ErrorIs(t, s.AddSeq(ctx, seq), errSource)
		require.True(t, *ended)
		requireNoRoom(t, s, rooms)

		// An error the sequence yields wins over an earlier one found
		// while writing, as an event that does not parse does.
		dup := slices.Clone(batch)
		dup[3] = dup[0]
		seq, ended = seqOf(dup, yieldErr)
		err := s.AddSeq(ctx, seq)
		require.ErrorIs(t, err, errSource)
		require.NotErrorIs(t, err, fedhistory.ErrDuplicateEvent)
		require.True(t, *ended)
		seq, _ = seqOf(append(dup, Pending{RoomVersion: "11", PDU: []byte(`{"type":`)}), nil)
		require.ErrorIs(t, s.AddSeq(ctx, seq), fedhistory.ErrInvalidEvent)
		seq, _ = seqOf(dup, nil)
		require.ErrorIs(t, s.AddSeq(ctx, seq), fedhistory.ErrDuplicateEvent)
		requireNoRoom(t, s, rooms)

		// A cancelled context ends it at once: the rest of an endless
		// sequence is not looked at.
		cancelled, cancel := context.WithCancel(ctx)
		endless := func(yield func(Pending, error) bool) {
			for i := 0; ; i++ {
				if i == 3*7 {
					cancel()
				}
				if !yield(batch[i%len(batch)], nil) {
					return
				}
			}
		}
		require.ErrorIs(t, s.AddSeq(cancelled, endless), context.Canceled)
		requireNoRoom(t, s, rooms)

		// The sequences below stop in the fourth chunk, three written.
		written := batch[:3*7+2]

		// A sequence that blocks and ends when ctx is done, as the doc
		// asks: AddSeq returns ctx's error, not a commit of the events so
		// far.
		cancelled, cancel = context.WithCancel(ctx)
		blocking, _ := seqOf(written, func(func(Pending, error) bool) {
			cancel()
			<-cancelled.Done()
		})
		require.ErrorIs(t, s.AddSeq(cancelled, blocking), context.Canceled)
		requireNoRoom(t, s, rooms)

		// A panic or runtime.Goexit in the sequence, which runs in another
		// goroutine, reaches AddSeq's caller as if it had run there, after
		// the rollback.
		panicking, _ := seqOf(written, func(func(Pending, error) bool) { panic("the sequence's own panic") })
		require.PanicsWithValue(t, "the sequence's own panic", func() { _ = s.AddSeq(ctx, panicking) })
		requireNoRoom(t, s, rooms)
		exiting, _ := seqOf(written, func(func(Pending, error) bool) { runtime.Goexit() })
		returned := make(chan bool)
		go func() {
			defer close(returned)
			_ = s.AddSeq(ctx, exiting)
			returned <- true
		}()
		require.False(t, <-returned, "the caller's goroutine exits")
		requireNoRoom(t, s, rooms)

		empty, _ := seqOf(nil, nil)
		require.NoError(t, s.AddSeq(ctx, empty))
		requireNoRoom(t, s, rooms)

		seq, ended = seqOf(batch, nil)
		require.NoError(t, s.AddSeq(ctx, seq))
		require.True(t, *ended)
		requireStoredAsByAdd(t, s, rooms)
	})
}
