package sqlstore

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/memstore"
)

// downgradeToV1 turns a current database back into what version 1 stored:
// no timestamps, redactions, state_known, group levels or auth counts, auth links of state events to
// state events only.
var downgradeToV1 = []string{
	// migration 5's, undone: the links by event ID again.
	`CREATE TABLE edges (
		event_id TEXT NOT NULL, ord INTEGER NOT NULL, prev_event_id TEXT NOT NULL, room_id TEXT NOT NULL,
		PRIMARY KEY (event_id, ord))`,
	`INSERT INTO edges SELECT e.event_id, p.ord, p.prev_event_id, e.room_id FROM prev_edges p JOIN events e ON e.event_nid = p.event_nid`,
	`CREATE INDEX edges_prev ON edges (prev_event_id)`,
	`DROP TABLE prev_edges`,
	`CREATE TABLE auth_edges (event_id TEXT NOT NULL, auth_event_id TEXT NOT NULL, PRIMARY KEY (event_id, auth_event_id))`,
	`INSERT INTO auth_edges SELECT e.event_id, x.event_id FROM auth_links a
		JOIN events e ON e.event_nid = a.event_nid JOIN events x ON x.event_nid = a.auth_nid`,
	`DROP TABLE auth_links`,
	`CREATE UNIQUE INDEX events_room_event ON events (room_id, event_id)`,
	`DROP INDEX events_room_timestamp`,
	`ALTER TABLE events DROP COLUMN origin_server_ts`,
	`ALTER TABLE events DROP COLUMN redacted`,
	`ALTER TABLE events DROP COLUMN state_known`,
	`DROP TABLE pending_redactions`,
	`DROP TABLE state_group_auth`,                       // migration 4's
	`ALTER TABLE state_groups DROP COLUMN auth_counted`, // migration 4's
	`ALTER TABLE state_groups DROP COLUMN level`,        // migration 3's
	`DELETE FROM auth_edges WHERE event_id IN (SELECT event_id FROM events WHERE state_key IS NULL)
		OR auth_event_id IN (SELECT event_id FROM events WHERE state_key IS NULL)`,
	`UPDATE schema_version SET version = 1`,
}

// TestUpgradeFromV1 checks migration 2 on a version 1 database: reopened,
// the store answers as memstore does for the same events (timestamps,
// applied redactions, state unknown after the scenario's gap), and holds
// the auth links a fresh Add records.
func TestUpgradeFromV1(t *testing.T) {
	for _, version := range []string{"1", "10", "11"} {
		room, skip := scenarioRoom(t, version, 300)
		for _, d := range dialects {
			t.Run(d+" v"+version, func(t *testing.T) {
				ctx := context.Background()
				dsn := testDSN(t, d)
				s, err := Open(ctx, dsn, Options{Migrate: true})
				require.NoError(t, err)
				mem := memstore.New()
				addRoom(t, s, mem, room, skip)
				var links int
				require.NoError(t, s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM auth_links`).Scan(&links))
				for _, stmt := range downgradeToV1 {
					_, err := s.db.ExecContext(ctx, stmt)
					require.NoError(t, err, stmt)
				}
				require.NoError(t, s.Close())

				s, err = Open(ctx, dsn, Options{Migrate: true})
				require.NoError(t, err)
				defer s.Close()
				requireSameAsMemstore(t, s, mem, room)
				var upgradedLinks int
				require.NoError(t, s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM auth_links`).Scan(&upgradedLinks))
				require.Equal(t, links, upgradedLinks)
			})
		}
	}
}
