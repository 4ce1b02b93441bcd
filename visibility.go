package fedhistory

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"slices"

	"github.com/matrix-org/gomatrixserverlib"
)

// Event types and history_visibility values the filter needs.
const (
	eventTypeCreate            = "m.room.create"
	eventTypeMember            = "m.room.member"
	eventTypeHistoryVisibility = "m.room.history_visibility"
	eventTypeRedaction         = "m.room.redaction"

	historyVisibilityWorldReadable = "world_readable"
	historyVisibilityShared        = "shared"
	historyVisibilityInvited       = "invited"
	historyVisibilityJoined        = "joined"
)

// errVisibilityMisaligned marks a Visibility answer whose length is not the
// number of IDs asked: a store bug, answered like any other store error.
var errVisibilityMisaligned = errors.New("the store's Visibility answer does not have one entry per event ID")

// filterEvents turns the result of a walk (in the walk's order) into what may
// be sent to origin, keeping that order. For each event it returns:
//
//   - the stored JSON, untouched, when origin may see the event;
//   - the event redacted with roomVersion's redaction algorithm when origin
//     may not see it (serverMaySeeEvent), when the store knows no state for
//     it (EventVisibility.Known is false), or when its sender is erased
//     (ErasureStore). Redacting rather than dropping keeps the DAG whole for
//     origin: the hashes and signatures survive, so origin can still check
//     and link the event;
//   - nothing for an m.room.redaction whose target the store does not hold
//     in roomID, or whose target is the room's create event;
//   - nothing for an event of another room (a misbehaving store; logged once
//     per call at Warn with the count), and nothing for a rejected or outlier
//     event, which Event documents as never served (the walks should not
//     return them; this is the last line of defence);
//   - nothing for an event whose JSON the redaction algorithm cannot parse
//     (logged at Warn): it cannot be redacted, and must not go out whole;
//   - nothing for an event whose JSON is not even framed as an object
//     (empty, or not starting with '{' and ending with '}': a truncated or
//     missing row; logged once per call at Warn with the count): written
//     out raw, it would corrupt the whole response.
//
// It makes at most three store calls, each one batch for all events:
// Visibility, Events for the redaction targets not among events, and
// ErasedUsers when store is an ErasureStore. roomID must already have passed
// authorizeRoom for origin: "shared" history is served on the strength of
// origin being in the room now. A nil logger means slog.Default(). A
// Visibility answer without exactly one entry per event asked is a store
// error (errVisibilityMisaligned).
//
// The result is never nil, so that it encodes as a JSON array.
func filterEvents(ctx context.Context, store EventStore, roomVersion, roomID, origin string, events []*Event, logger *slog.Logger) ([]json.RawMessage, error) {
	if logger == nil {
		logger = slog.Default()
	}
	// Resolve the version before anything else: without its redaction
	// algorithm nothing hidden could be served safely.
	version, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(roomVersion))
	if err != nil {
		return nil, fmt.Errorf("fedhistory: room %s has version %q: %w", roomID, roomVersion, err)
	}

	candidates := make([]*Event, 0, len(events))
	foreign, malformed := 0, 0
	for _, ev := range events {
		switch {
		case ev == nil || ev.RoomID != roomID:
			foreign++
		case ev.Rejected || ev.Outlier:
		case ev.Depth > canonicalJSONMaxInt || ev.Depth < -canonicalJSONMaxInt:
			// Canonical JSON cannot carry such a depth, so no receiver could
			// check the event's signature. The dag walks never return one;
			// this catches a store's own walker.
			malformed++
		case !framedAsJSONObject(ev.JSON):
			malformed++
		default:
			candidates = append(candidates, ev)
		}
	}
	if foreign > 0 {
		logger.Warn("fedhistory: the store returned events that are not in the requested room; dropped them",
			"room_id", roomID, "count", foreign)
	}
	if malformed > 0 {
		logger.Warn("fedhistory: the store returned events with empty or truncated JSON or an out-of-range depth; dropped them",
			"room_id", roomID, "count", malformed)
	}
	out := make([]json.RawMessage, 0, len(candidates))
	if len(candidates) == 0 {
		return out, nil
	}

	ids := make([]string, len(candidates))
	for i, ev := range candidates {
		ids[i] = ev.ID
	}
	visibility, err := store.Visibility(ctx, roomID, origin, ids)
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
	withheld, err := withheldRedactions(ctx, store, roomID, candidates)
	if err != nil {
		return nil, err
	}
	erased, err := erasedSenders(ctx, store, candidates)
	if err != nil {
		return nil, err
	}

	verdicts := visibilityVerdicts{server: origin}
	for i, ev := range candidates {
		if withheld[ev.ID] {
			continue
		}
		// visibility[i] answers ids[i], which is candidates[i].
		if visibility[i].Known && !erased[ev.Sender] && serverMaySeeEvent(ev, visibility[i], &verdicts) {
			out = append(out, ev.JSON)
			continue
		}
		redacted, err := version.RedactEventJSON(ev.JSON)
		if err != nil {
			logger.Warn("fedhistory: cannot redact a stored event; withholding it",
				"room_id", roomID, "event_id", ev.ID, "error", err)
			continue
		}
		out = append(out, redacted)
	}
	return out, nil
}

// serverMaySeeEvent applies the history visibility rules of the
// client-server spec ("Room History Visibility", server behaviour) to a
// whole server: the server may see an event when any one of its users may.
// The state judged is the state at the event, which is the state before it
// (vis.Before); two kinds of state event are also judged on the state after
// them (vis.After), as the spec asks:
//
//   - the room's m.room.history_visibility event (state_key ""), visible if
//     the visibility before or after it allows;
//   - the m.room.member event of one of the server's users, visible if the
//     membership before or after it allows, so a server always sees its
//     users' joins, and the leaves that end a joined period. The state
//     after a membership event differs from the state before only in that
//     user's membership, so judging the whole After state is the spec's
//     "that user's membership after it".
func serverMaySeeEvent(ev *Event, vis EventVisibility, verdicts *visibilityVerdicts) bool {
	if verdicts.visible(vis.Before) {
		return true
	}
	if ev.StateKey == nil {
		return false
	}
	roomHistoryVisibility := ev.Type == eventTypeHistoryVisibility && *ev.StateKey == ""
	ownMembership := ev.Type == eventTypeMember && isUserOfServer(*ev.StateKey, verdicts.server)
	if roomHistoryVisibility || ownMembership {
		return verdicts.visible(vis.After)
	}
	return false
}

// visibilityVerdicts is historyVisibleToServer for one server, remembering
// its last answer. Neighbouring events mostly share their state, and a
// store may hand out the very same memberships map for them (memstore
// does): then the answer is known without reading the map again.
type visibilityVerdicts struct {
	server  string
	last    VisibilityState
	verdict bool
	valid   bool
}

func (v *visibilityVerdicts) visible(state VisibilityState) bool {
	if v.valid && state.HistoryVisibility == v.last.HistoryVisibility && sameMap(state.Memberships, v.last.Memberships) {
		return v.verdict
	}
	v.last, v.verdict, v.valid = state, historyVisibleToServer(state, v.server), true
	return v.verdict
}

// sameMap reports whether a and b are the same map (not merely equal ones).
func sameMap(a, b map[string]string) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// historyVisibleToServer reports whether, with the room in state, an event
// may be shown to server:
//
//   - world_readable: to anybody;
//   - shared, and any value the spec does not define, or none at all (the
//     spec's default): yes. The spec allows a shared event to a user who
//     "joined the room at any point after the event was sent"; filterEvents
//     only runs once authorizeRoom has found a user of server joined now,
//     and that user was either joined at the event (which allows in any
//     case) or joined after it. Synapse's filter for servers decides the
//     same way;
//   - invited: if a user of server was joined or invited;
//   - joined: if a user of server was joined.
//
// Memberships of users of other servers never count, even if the store
// returns some.
func historyVisibleToServer(state VisibilityState, server string) bool {
	switch state.HistoryVisibility {
	case historyVisibilityInvited:
		for userID, membership := range state.Memberships {
			if (membership == "join" || membership == "invite") && isUserOfServer(userID, server) {
				return true
			}
		}
		return false
	case historyVisibilityJoined:
		return serverHasJoinedUser(state.Memberships, server)
	default: // world_readable, shared, unset or unknown
		return true
	}
}

// withheldRedactions returns the IDs of the m.room.redaction events among
// events that must not be served at all: those whose target the store does
// not hold in roomID, and those that target the room's create event. This
// follows Synapse, which withholds the same redactions from every reader: a
// redaction cannot be judged without its target (before room version 3 its
// authorisation depends on the target's sender), and a redaction of the
// create event is never honoured, so serving it would only invite receivers
// to strip the event every auth check starts from.
//
// Targets that are themselves among events are taken from there; the rest
// are fetched with one Events call. The store's answer is checked again for
// the room, so a target in another room is "not held".
func withheldRedactions(ctx context.Context, store EventStore, roomID string, events []*Event) (map[string]bool, error) {
	// Most pages hold no redaction: then there is nothing to index.
	if !slices.ContainsFunc(events, func(ev *Event) bool { return ev.Type == eventTypeRedaction }) {
		return nil, nil
	}
	known := make(map[string]*Event, len(events))
	for _, ev := range events {
		known[ev.ID] = ev
	}
	var missing []string
	requested := make(map[string]bool)
	for _, ev := range events {
		if ev.Type != eventTypeRedaction || ev.Redacts == "" {
			continue
		}
		if _, ok := known[ev.Redacts]; !ok && !requested[ev.Redacts] {
			requested[ev.Redacts] = true
			missing = append(missing, ev.Redacts)
		}
	}
	if len(missing) > 0 {
		fetched, err := store.Events(ctx, roomID, missing)
		if err != nil {
			return nil, fmt.Errorf("fedhistory: reading %d redaction targets in %s: %w", len(missing), roomID, err)
		}
		for _, target := range fetched {
			if target != nil && target.RoomID == roomID && requested[target.ID] {
				known[target.ID] = target
			}
		}
	}

	withheld := make(map[string]bool)
	for _, ev := range events {
		if ev.Type != eventTypeRedaction {
			continue
		}
		target, ok := known[ev.Redacts]
		if ev.Redacts == "" || !ok || isCreateEvent(target) {
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
func erasedSenders(ctx context.Context, store EventStore, events []*Event) (map[string]bool, error) {
	erasure, ok := store.(ErasureStore)
	if !ok {
		return nil, nil
	}
	// A page has few senders: compare with the last one and scan the list
	// before falling back to a map.
	var seen map[string]bool
	var senders []string
	for i, ev := range events {
		if i > 0 && ev.Sender == events[i-1].Sender {
			continue
		}
		if seen == nil && len(senders) < 8 {
			if !slices.Contains(senders, ev.Sender) {
				senders = append(senders, ev.Sender)
			}
			continue
		}
		if seen == nil {
			seen = make(map[string]bool, 2*len(senders))
			for _, sender := range senders {
				seen[sender] = true
			}
		}
		if !seen[ev.Sender] {
			seen[ev.Sender] = true
			senders = append(senders, ev.Sender)
		}
	}
	erased, err := erasure.ErasedUsers(ctx, senders)
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
