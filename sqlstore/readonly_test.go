package sqlstore

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/fedhistory/fedhistory/memstore"
)

// TestServingOnAReadOnlyConnection: a Store opened on a PostgreSQL
// connection where every transaction is read only (as on a read replica,
// or with default_transaction_read_only set on the serving role) opens and
// answers every read exactly like memstore.
func TestServingOnAReadOnlyConnection(t *testing.T) {
	writer, reader := openWriterAndReader(t)
	require.Error(t, reader.EraseUser(context.Background(), bob), "the connection refuses writes")

	for i, version := range []string{"1", "11"} {
		for seed := range int64(2) {
			room, skip := scenarioRoom(t, version, 10*int64(i)+seed)
			mem := memstore.New()
			addRoom(t, writer, mem, room, skip)
			requireSameAsMemstore(t, reader, mem, room)
		}
	}
}

// TestForkedRoomOnAReadOnlyConnection: the current state of a room whose
// forward extremities disagree (one branch set an ACL, the other saw a
// user leave) is resolved in memory: a reader that may not write answers
// CurrentState exactly like memstore, for a server on each side.
func TestForkedRoomOnAReadOnlyConnection(t *testing.T) {
	ctx := context.Background()
	writer, reader := openWriterAndReader(t)

	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: "10", Seed: 7, Creator: "@zoe:hs1.example"})
	require.NoError(t, err)
	require.NoError(t, b.StandardSetup())
	must := func(_ roomgen.Event, err error) { t.Helper(); require.NoError(t, err) }
	for _, user := range []string{bob, carol, dave} {
		must(b.Join(user))
	}
	other := b.Fork()
	must(b.State(b.Creator(), "m.room.server_acl", "", map[string]any{"allow": []string{"*"}, "deny": []string{"hs4.example"}}))
	require.NoError(t, b.Branch(other))
	must(b.Leave(carol))
	room := b.Room()
	mem := memstore.New()
	addRoom(t, writer, mem, room, nil)

	for _, server := range []string{"hs2.example", "other:8448", "other", "hs4.example"} {
		want, err := mem.CurrentState(ctx, room.ID, server)
		require.NoError(t, err)
		for i := range 2 { // computed, then cached
			got, err := reader.CurrentState(ctx, room.ID, server)
			require.NoError(t, err, "server %s, call %d", server, i)
			require.Equal(t, want, got, "server %s, call %d", server, i)
		}
	}
	require.NotNil(t, func() []byte { c, _ := reader.CurrentState(ctx, room.ID, "hs2.example"); return c.ServerACL }(),
		"the resolved state keeps the ACL one branch set")
}

// openWriterAndReader migrates a fresh PostgreSQL schema and opens two
// stores on it: one that may write, and one whose every transaction is
// read only, as on a read replica or with default_transaction_read_only
// set on the serving role. Both close when the test ends.
func openWriterAndReader(t *testing.T) (writer, reader *Store) {
	t.Helper()
	dsn := testDSN(t, "postgres")
	ctx := context.Background()
	require.NoError(t, Migrate(ctx, dsn))
	writer, err := Open(ctx, dsn, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { writer.Close() })
	reader, err = Open(ctx, dsn+"&options=-c%20default_transaction_read_only%3Don", Options{})
	require.NoError(t, err)
	t.Cleanup(func() { reader.Close() })
	return writer, reader
}
