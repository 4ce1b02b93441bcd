package sqlstore

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/fedhistory/fedhistory/internal/pdu"
)

// upgradeToV2 completes migration 2 for the events a version 1 database
// holds, in the order they were added (event_nid):
//
//   - origin_server_ts, from the stored JSON;
//   - the auth chain links version 1 did not record: those of non-state
//     events, and those to non-state events (links to events added before,
//     in the same room, as Add records them now);
//   - the redactions, judged as Add judges them now, with the state before
//     each redaction (unknown where migration 2's SQL found a gap, so a
//     redaction there applies only as the same-server rule allows).
//
// Nothing is re-derived beyond that: the state groups of version 1 stay.
func upgradeToV2(ctx context.Context, s *Store, tx *sql.Tx) error {
	type stored struct {
		nid     int64
		version string
		parsed  *pdu.Parsed
		st      addedState
	}
	rows, err := s.query(ctx, tx, `
SELECT e.event_nid, r.room_version, e.json, e.rejected, e.outlier, e.state_known, e.before_group
FROM events e JOIN rooms r ON r.room_id = e.room_id
ORDER BY e.event_nid`)
	if err != nil {
		return fmt.Errorf("reading events: %w", err)
	}
	var events []stored
	err = func() error {
		defer rows.Close()
		for rows.Next() {
			var (
				ev                stored
				data              []byte
				rejected, outlier bool
				before            sql.NullInt64
			)
			if err := rows.Scan(&ev.nid, &ev.version, &data, &rejected, &outlier, &ev.st.known, &before); err != nil {
				return err
			}
			if ev.parsed, err = pdu.Parse(ev.version, data); err != nil {
				return err
			}
			// Keep the metadata only: the whole database passes through here.
			ev.parsed.PDU, ev.parsed.Event.JSON = nil, nil
			ev.parsed.Event.Rejected, ev.parsed.Event.Outlier = rejected, outlier
			ev.st.before = before.Int64
			events = append(events, ev)
		}
		return rows.Err()
	}()
	if err != nil {
		return fmt.Errorf("reading events: %w", err)
	}
	for _, ev := range events {
		e := &ev.parsed.Event
		if _, err := s.exec(ctx, tx, `UPDATE events SET origin_server_ts = $1 WHERE event_nid = $2`, e.OriginServerTS, ev.nid); err != nil {
			return fmt.Errorf("filling origin_server_ts of %s: %w", e.ID, err)
		}
		if _, err := s.exec(ctx, tx, `
INSERT INTO auth_edges (event_id, auth_event_id)
SELECT $1, a.event_id FROM events a
WHERE a.event_id IN (IDS($2)) AND a.room_id = $3 AND a.event_nid < $4
ON CONFLICT DO NOTHING`, e.ID, s.idList(ev.parsed.AuthEvents), e.RoomID, ev.nid); err != nil {
			return fmt.Errorf("linking auth events of %s: %w", e.ID, err)
		}
		if e.Type != pdu.TypeRedaction || e.Redacts == "" {
			continue
		}
		known, err := s.knownEvents(ctx, tx, []string{e.Redacts})
		if err != nil {
			return err
		}
		effects, err := s.judgeRedaction(ctx, tx, &newEvent{Parsed: ev.parsed, version: ev.version}, ev.st, known)
		if err != nil {
			return err
		}
		if err := effects.apply(ctx, tx); err != nil {
			return err
		}
	}
	return nil
}
