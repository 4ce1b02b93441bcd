package fedhistory

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/fedhistory/fedhistory/dag"
	"github.com/fedhistory/fedhistory/internal/redact"
)

// errVisibilityMisaligned marks a Visibility answer whose length is not the
// number of IDs asked: a store bug, answered like any other store error.
var errVisibilityMisaligned = errors.New("the store's Visibility answer does not have one entry per event ID")

// filter is the one filter every endpoint passes its PDUs through, so that
// no endpoint can serve what another would hide. It turns events of roomID
// (in the endpoint's order, which it keeps) into what may be sent to the
// request's origin. For each event it returns:
//
//   - the stored JSON, untouched, when the origin may see the event
//     (serverMaySeeEvent, judged on the state at that event);
//   - the event in the room version's redacted form (keys removed, nothing
//     re-encoded) when the origin may not see it, when the store does not
//     know the state at it (EventVisibility.Known false: outliers, events
//     after a gap), when its sender is erased (ErasureStore), or when a
//     redaction applies to it (Event.Redacted). Redacting rather than
//     dropping keeps the DAG whole for the origin: the hashes and
//     signatures survive, so it can still check and link the event;
//   - nothing for a rejected event (never served anywhere);
//   - nothing for an m.room.redaction whose target the store does not hold
//     in roomID, or whose target is the room's create event (Synapse
//     withholds these from every reader: a redaction cannot be judged
//     without its target, and a redaction of the create event is never
//     honoured);
//   - nothing for an event of another room, a depth canonical JSON cannot
//     carry, or JSON that is not framed as an object: a misbehaving store,
//     logged once per call at Warn with the count;
//   - nothing for an event the redaction algorithm cannot parse (logged):
//     it cannot be redacted, and must not go out whole.
//
// It makes at most three store calls, each one batch: Visibility, Events for
// redaction targets not among events, and ErasedUsers when the store is an
// ErasureStore. roomID must already have passed authorizeRoom for the
// origin: "shared" history is served on the strength of the origin being in
// the room now. The result is never nil, so it encodes as a JSON array.
func (req *request) filter(roomVersion, roomID string, events []*Event) (pdus []json.RawMessage, err error) {
	end := req.stage("filter")
	defer func() {
		end(err)
		if err == nil {
			req.served += len(pdus) // the redacted ones are counted out below
			req.withheld += len(events) - len(pdus)
		}
	}()
	store, logger := req.h.store, req.h.cfg.Logger
	// Check the version before anything else: without its redaction
	// algorithm nothing hidden could be served safely.
	if !redact.Supported(roomVersion) {
		return nil, fmt.Errorf("fedhistory: room %s has version %q: %w", roomID, roomVersion, redact.ErrUnknownRoomVersion)
	}

	candidates := make([]*Event, 0, len(events))
	misbehaving := 0
	for _, ev := range events {
		switch {
		case ev == nil || ev.RoomID != roomID,
			ev.Depth > dag.MaxCanonicalInt || ev.Depth < dag.MinCanonicalInt,
			!framedAsJSONObject(ev.JSON):
			misbehaving++
		case ev.Rejected:
		default:
			candidates = append(candidates, ev)
		}
	}
	if misbehaving > 0 {
		logger.LogAttrs(req.ctx, slog.LevelWarn,
			"fedhistory: the store returned events of another room, with an out-of-range depth or with truncated JSON; dropped them",
			slog.String("room_id", roomID), slog.Int("count", misbehaving))
	}
	out := make([]json.RawMessage, 0, len(candidates))
	if len(candidates) == 0 {
		return out, nil
	}

	ids := make([]string, len(candidates))
	for i, ev := range candidates {
		ids[i] = ev.ID
	}
	visibility, err := store.Visibility(req.ctx, roomID, req.origin, ids)
	if err != nil {
		return nil, fmt.Errorf("fedhistory: reading the visibility of %d events in %s: %w", len(ids), roomID, err)
	}
	if len(visibility) != len(ids) {
		// The answers cannot be matched to the events any more. Failing the
		// request is the only safe choice: redacting everything would hide
		// a broken store behind plausible answers.
		return nil, fmt.Errorf("fedhistory: reading the visibility of %d events in %s: %w: got %d answers",
			len(ids), roomID, errVisibilityMisaligned, len(visibility))
	}
	withheld, err := withheldRedactions(req, roomID, candidates)
	if err != nil {
		return nil, err
	}
	erased, err := erasedSenders(req, candidates)
	if err != nil {
		return nil, err
	}

	for i, ev := range candidates {
		if withheld[ev.ID] {
			continue
		}
		// visibility[i] answers ids[i], which is candidates[i]. An
		// outlier's state is unknown whatever the store says.
		if !ev.Redacted && !ev.Outlier && visibility[i].Known && !erased[ev.Sender] && serverMaySeeEvent(ev, visibility[i], req.origin) {
			out = append(out, ev.JSON)
			continue
		}
		redacted, err := redact.Event(roomVersion, ev.JSON)
		if err != nil {
			logger.LogAttrs(req.ctx, slog.LevelWarn, "fedhistory: cannot redact a stored event; withholding it",
				slog.String("room_id", roomID), slog.String("event_id", ev.ID), slog.String("error", err.Error()))
			continue
		}
		out = append(out, redacted)
		req.redacted++
		req.served--
	}
	return out, nil
}

// withheldRedactions returns the IDs of the m.room.redaction events among
// events that must not be served at all: those whose target the store does
// not hold in roomID, and those that target the room's create event (see
// filter). Targets among events are taken from there; the rest are fetched
// with one Events call, whose answer is checked again for the room.
func withheldRedactions(req *request, roomID string, events []*Event) (map[string]bool, error) {
	var missing []string
	known := make(map[string]*Event)
	for _, ev := range events {
		if ev.Type == eventTypeRedaction {
			known[ev.Redacts] = nil
		}
	}
	if len(known) == 0 {
		return nil, nil // most pages hold no redaction
	}
	for _, ev := range events {
		if _, wanted := known[ev.ID]; wanted {
			known[ev.ID] = ev
		}
	}
	for id, target := range known {
		if target == nil && id != "" {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		fetched, err := req.h.store.Events(req.ctx, roomID, missing)
		if err != nil {
			return nil, fmt.Errorf("fedhistory: reading %d redaction targets in %s: %w", len(missing), roomID, err)
		}
		for _, target := range fetched {
			if target == nil || target.RoomID != roomID {
				continue
			}
			if t, wanted := known[target.ID]; wanted && t == nil {
				known[target.ID] = target
			}
		}
	}
	withheld := make(map[string]bool)
	for _, ev := range events {
		if ev.Type != eventTypeRedaction {
			continue
		}
		if target := known[ev.Redacts]; target == nil || isCreateEvent(target) {
			withheld[ev.ID] = true
		}
	}
	return withheld, nil
}

// isCreateEvent reports whether ev is a room's m.room.create state event.
func isCreateEvent(ev *Event) bool {
	return ev.Type == eventTypeCreate && ev.StateKey != nil && *ev.StateKey == ""
}

// erasedSenders returns the erased users among the senders of events, with
// one ErasedUsers call, or nil when the store cannot tell (it is not an
// ErasureStore).
func erasedSenders(req *request, events []*Event) (map[string]bool, error) {
	erasure, ok := req.h.store.(ErasureStore)
	if !ok {
		return nil, nil
	}
	seen := make(map[string]bool)
	var senders []string
	for _, ev := range events {
		if !seen[ev.Sender] {
			seen[ev.Sender] = true
			senders = append(senders, ev.Sender)
		}
	}
	erased, err := erasure.ErasedUsers(req.ctx, senders)
	if err != nil {
		return nil, fmt.Errorf("fedhistory: reading which of %d senders are erased: %w", len(senders), err)
	}
	return erased, nil
}

// framedAsJSONObject is a constant-time sanity check of stored event JSON,
// which is served without being parsed: it must start with '{' and end with
// '}'. It catches a missing or truncated row; full validation (json.Valid)
// would cost more than the rest of a backfill, for bytes the store vouches
// for.
func framedAsJSONObject(event json.RawMessage) bool {
	return len(event) >= 2 && event[0] == '{' && event[len(event)-1] == '}'
}
