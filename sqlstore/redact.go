package sqlstore

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/pdu"
)

// Redactions follow "Redactions" on fedhistory.EventStore with the rules of
// package pdu (RedactionApplies, MayRedact), as memstore does. A redaction
// is judged once: whether its sender may redact is decided with the state
// before it when it is added, and whether it applies when both it and its
// target are held. A redaction whose target is not held yet waits in
// pending_redactions, with that decision, until the target arrives.

// redactionEffects is what adding one event does to redactions.
type redactionEffects struct {
	s  *Store
	ev *newEvent
	// target is the held event that ev, a redaction, redacts.
	target string
	// waitFor is ev's target when the store does not hold it yet; ev then
	// waits in pending_redactions with senderMayRedact.
	waitFor         string
	senderMayRedact bool
}

// judgeRedaction works out what ev does as a redaction: redact a held
// target, wait for its target, or nothing.
func (s *Store) judgeRedaction(ctx context.Context, q querier, ev *newEvent, st addedState, known map[string]knownEvent) (redactionEffects, error) {
	effects := redactionEffects{s: s, ev: ev}
	e := &ev.Event
	// A redaction naming itself is no redaction of another event; the
	// contract leaves the redaction event itself unaffected.
	if e.Type != pdu.TypeRedaction || e.Redacts == "" || e.Redacts == e.ID || e.Rejected {
		return effects, nil
	}
	may, err := s.senderMayRedact(ctx, q, ev, st)
	if err != nil {
		return redactionEffects{}, err
	}
	if target, ok := known[e.Redacts]; ok {
		if pdu.RedactionApplies(ev.version, e, may, &target.event) {
			effects.target = target.event.ID
		}
		return effects, nil
	}
	effects.waitFor, effects.senderMayRedact = e.Redacts, may
	return effects, nil
}

// pendingRedactionsApply reports whether a redaction waiting for ev applies
// to it, and takes the waiting redactions of ev off the table: they have
// been judged.
func (w *batchWriter) pendingRedactionsApply(ev *newEvent) bool {
	waiting := w.pending[ev.Event.ID]
	applies, stored := false, false
	for _, p := range waiting {
		if pdu.RedactionApplies(ev.version, &p.redaction, p.senderMayRedact, &ev.Event) {
			applies = true
		}
		stored = stored || p.stored
	}
	if stored {
		w.settled = append(w.settled, ev.Event.ID)
	}
	delete(w.pending, ev.Event.ID)
	return applies
}

// judgeRedaction is Store.judgeRedaction in the batch: what the batch holds
// is in w.known, and the power levels are read from the database, so a
// redaction that needs them writes out the batch so far first.
func (w *batchWriter) judgeRedaction(ctx context.Context, ev *newEvent, st addedState) (redactionEffects, error) {
	if e := &ev.Event; e.Type != pdu.TypeRedaction || e.Redacts == "" {
		return redactionEffects{}, nil
	}
	if needsPowerLevels(ev, st) {
		if err := w.flush(ctx); err != nil {
			return redactionEffects{}, err
		}
	}
	return w.s.judgeRedaction(ctx, w.tx, ev, st, w.known)
}

// applyRedaction records what judgeRedaction decided for ev: its target
// redacted (the buffered row, or the stored event at flush), or ev waiting
// for its target.
func (w *batchWriter) applyRedaction(ev *newEvent, effects redactionEffects) {
	if effects.target != "" {
		if row, ok := w.unflushed[effects.target]; ok {
			row.args[eventRedactedArg] = true
		} else {
			w.redactStored = append(w.redactStored, effects.target)
		}
	}
	if effects.waitFor != "" {
		w.pending[effects.waitFor] = append(w.pending[effects.waitFor], pendingRedaction{
			redaction: fedhistory.Event{
				ID: ev.Event.ID, RoomID: ev.Event.RoomID, Type: ev.Event.Type, Sender: ev.Event.Sender,
				Redacts: ev.Event.Redacts, Rejected: ev.Event.Rejected,
			},
			senderMayRedact: effects.senderMayRedact,
		})
	}
}

// apply marks the redacted target and files ev under its awaited target,
// at once: for the schema upgrade, which judges stored redactions one by
// one. It runs once ev is stored (pending_redactions refers to it).
func (e redactionEffects) apply(ctx context.Context, tx querier) error {
	if e.target != "" {
		if _, err := e.s.exec(ctx, tx, `UPDATE events SET redacted = TRUE WHERE event_id = $1`, e.target); err != nil {
			return fmt.Errorf("sqlstore: redacting %s: %w", e.target, err)
		}
	}
	if e.waitFor != "" {
		if _, err := e.s.exec(ctx, tx, `
INSERT INTO pending_redactions (target_id, redaction_id, sender_may_redact) VALUES ($1, $2, $3)`,
			e.waitFor, e.ev.Event.ID, e.senderMayRedact); err != nil {
			return fmt.Errorf("sqlstore: filing redaction %s: %w", e.ev.Event.ID, err)
		}
	}
	return nil
}

// senderMayRedact reports whether the sender of ev has the power level
// "redact" in the state before ev: never when that state is unknown (the
// contract), and irrelevant in room versions 1 and 2, where a redaction
// that passed the auth rules always applies.
func (s *Store) senderMayRedact(ctx context.Context, q querier, ev *newEvent, st addedState) (bool, error) {
	if !needsPowerLevels(ev, st) {
		return false, nil
	}
	events, err := s.stateEvents(ctx, q, ev.version, st.before, []stateKey{
		{eventType: pdu.TypeCreate}, {eventType: pdu.TypePowerLevels},
	})
	if err != nil {
		return false, fmt.Errorf("sqlstore: power levels before %s: %w", ev.Event.ID, err)
	}
	create := events[stateKey{eventType: pdu.TypeCreate}]
	if create == nil {
		return false, nil
	}
	// A nil power_levels event: the state has none.
	return pdu.MayRedact(ev.version, create, events[stateKey{eventType: pdu.TypePowerLevels}], ev.Event.Sender), nil
}

// needsPowerLevels reports whether senderMayRedact reads the state before
// ev, a redaction.
func needsPowerLevels(ev *newEvent, st addedState) bool {
	return st.known && st.before != 0 && ev.version != "1" && ev.version != "2"
}

// stateEvents returns the parsed events that group's state holds under
// keys (absent keys are left out), in one query along the group's delta
// chain.
func (s *Store) stateEvents(ctx context.Context, q querier, version string, group int64, keys []stateKey) (map[stateKey]gomatrixserverlib.PDU, error) {
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", fedhistory.ErrUnsupportedRoomVersion, err)
	}
	wanted := make(map[stateKey]bool, len(keys))
	var types []string
	for _, k := range keys {
		wanted[k] = true
		types = append(types, k.eventType)
	}
	rows, err := s.query(ctx, q, `
WITH RECURSIVE chain (group_id, dist) AS (
	SELECT CAST($1 AS BIGINT), 0
	UNION ALL
	SELECT g.parent_id, c.dist + 1
	FROM chain c JOIN state_groups g ON g.group_id = c.group_id
	WHERE g.parent_id IS NOT NULL
)
SELECT c.dist, e.event_type, e.state_key, e.event_id, ev.json
FROM chain c
JOIN state_group_entries e ON e.group_id = c.group_id
LEFT JOIN events ev ON ev.event_id = e.event_id
WHERE e.event_type IN (IDS($2))`, group, jsonList(types))
	if err != nil {
		return nil, fmt.Errorf("reading state group %d: %w", group, err)
	}
	var entries []groupEntry
	err = func() error {
		defer rows.Close()
		for rows.Next() {
			var (
				e       groupEntry
				eventID sql.NullString
			)
			if err := rows.Scan(&e.dist, &e.key.eventType, &e.key.stateKey, &eventID, &e.content); err != nil {
				return err
			}
			e.root, e.eventID, e.removed = group, eventID.String, !eventID.Valid
			if wanted[e.key] {
				entries = append(entries, e)
			}
		}
		return rows.Err()
	}()
	if err != nil {
		return nil, fmt.Errorf("reading state group %d: %w", group, err)
	}
	events := make(map[stateKey]gomatrixserverlib.PDU, len(keys))
	for _, e := range nearestEntries(entries) {
		if e.removed {
			continue
		}
		parsed, err := s.parseStored(verImpl, e.eventID, e.content)
		if err != nil {
			return nil, err
		}
		events[e.key] = parsed
	}
	return events, nil
}
