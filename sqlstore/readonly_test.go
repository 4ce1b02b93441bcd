package sqlstore

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/memstore"
)

// TestServingOnAReadOnlyConnection: a Store opened on a PostgreSQL
// connection where every transaction is read only (as on a read replica,
// or with default_transaction_read_only set on the serving role) opens and
// answers every read exactly like memstore.
func TestServingOnAReadOnlyConnection(t *testing.T) {
	dsn := testDSN(t, "postgres")
	ctx := context.Background()
	require.NoError(t, Migrate(ctx, dsn))
	writer, err := Open(ctx, dsn, Options{})
	require.NoError(t, err)
	defer writer.Close()

	readOnly := dsn + "&options=-c%20default_transaction_read_only%3Don"
	reader, err := Open(ctx, readOnly, Options{})
	require.NoError(t, err)
	defer reader.Close()
	require.Error(t, reader.EraseUser(ctx, bob), "the connection refuses writes")

	for i, version := range []string{"1", "11"} {
		for seed := range int64(2) {
			room, skip := scenarioRoom(t, version, 10*int64(i)+seed)
			mem := memstore.New()
			addRoom(t, writer, mem, room, skip)
			requireSameAsMemstore(t, reader, mem, room)
		}
	}
}
