package fedhistory

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/fedhistory/fedhistory/dag"
)

// Errors an EventStore returns, wrapped, for conditions the handler answers
// in its own way.
var (
	// ErrRoomNotFound: the store does not hold the room. The handler answers
	// it exactly like "the origin is not in the room" (403), so that a probe
	// cannot learn which rooms exist here.
	ErrRoomNotFound = errors.New("fedhistory: room not found")

	// ErrEventNotFound: the store holds no servable event with this ID where
	// it was asked for (unknown, in another room, rejected, or, where the
	// method says so, an outlier). Answered 404 M_NOT_FOUND.
	ErrEventNotFound = errors.New("fedhistory: event not found")

	// ErrStateUnknown: the store holds the event (or room) but does not know
	// the state at it. A store never invents state (see "State" on
	// EventStore): the state endpoints answer 404 M_NOT_FOUND, and a room
	// whose current state is unknown is answered like a room the origin is
	// not in (403).
	ErrStateUnknown = errors.New("fedhistory: state unknown")
)

// Errors a store's Add returns, wrapped. memstore and sqlstore share them so
// that a caller can treat both alike.
var (
	// ErrDuplicateEvent: the store already holds an event with this ID.
	ErrDuplicateEvent = errors.New("fedhistory: duplicate event")
	// ErrRoomVersionMismatch: the event's room already exists with another
	// version.
	ErrRoomVersionMismatch = errors.New("fedhistory: room version mismatch")
	// ErrUnsupportedRoomVersion: not one of the stable room versions 1–12.
	ErrUnsupportedRoomVersion = errors.New("fedhistory: unsupported room version")
	// ErrInvalidEvent: the PDU could not be parsed for its room version.
	ErrInvalidEvent = errors.New("fedhistory: invalid event")
	// ErrInvalidStateBefore: AddOptions.StateBefore names an event the store
	// does not hold in the room, an event that is not a state event, a
	// rejected event, or two events for one (type, state_key); or it is given
	// for an outlier, whose state is unknown by definition.
	ErrInvalidStateBefore = errors.New("fedhistory: invalid StateBefore")
)

// AddOptions qualify one event given to a store's Add (memstore.Store.Add,
// sqlstore.Store.Add, the callback of storetest.Load).
type AddOptions struct {
	// Rejected marks an event that failed authorisation: it stays in the DAG
	// (walks pass through it, its children inherit the state before it) but
	// it is never served, never part of the room state, and a rejected
	// redaction redacts nothing.
	Rejected bool

	// Outlier marks an event whose place in the DAG and state are not known
	// (fetched as an auth event, or part of the state a join returned):
	// walks never enter it, Visibility answers it Known false, and it is
	// served only by GET /event, redacted. An outlier state event can still
	// be named in StateBefore and is still an auth event of later events.
	Outlier bool

	// StateBefore, when not nil, is the room's state just before the event,
	// as the homeserver learnt it (from send_join, /state_ids, or its own
	// state resolution): the IDs of state events the store already holds in
	// the room, outliers included, at most one per (type, state_key). An
	// empty non-nil slice is the empty state. It overrides what the store
	// would derive from prev_events, and it is the only way to give an event
	// whose prev_events the store does not fully hold a known state (see
	// "State" on EventStore).
	StateBefore []string
}

// Event is one stored PDU together with the metadata the walks and the filter
// need. The metadata duplicates fields of JSON on purpose: it lets the
// handler decide what to serve without decoding a single event on the hot
// path, and then copy JSON to the wire untouched.
//
// A store fills every field from the event as it was received, except
// Redacted, which it maintains; it must not modify an Event or its JSON
// after it has been handed out (hand out a new one instead).
type Event struct {
	// ID is the event ID ("$…").
	ID string
	// RoomID is the room the event belongs to.
	RoomID string
	// Depth is the event's "depth" field.
	Depth int64
	// OriginServerTS is the event's "origin_server_ts" field (milliseconds).
	OriginServerTS int64
	// PrevEvents are the IDs in the event's "prev_events" (for room versions 1
	// and 2, the IDs of the [id, hashes] pairs).
	PrevEvents []string
	// Type, StateKey and Sender are the event's "type", "state_key" and
	// "sender". StateKey is nil for a non-state event.
	Type     string
	StateKey *string
	Sender   string
	// Redacts is the target of an m.room.redaction event (the top-level
	// "redacts" key before room version 11, content.redacts from 11 on), or "".
	Redacts string
	// JSON is the PDU in the federation format of the room's version, exactly
	// as received. The handler serves it byte for byte, or with keys removed
	// by the room version's redaction algorithm; it never re-encodes it.
	JSON json.RawMessage
	// Rejected marks an event that failed authorisation: it stays in the DAG
	// (walks pass through it) but is never served.
	Rejected bool
	// Outlier marks an event whose state is not known: walks never enter it
	// and only GET /event serves it, redacted.
	Outlier bool
	// Redacted is true when the store holds a redaction of this event that
	// the spec applies (see "Redactions" on EventStore). Every endpoint then
	// serves the event in its room version's redacted form, to everyone.
	Redacted bool
}

// VisibilityState is the part of a room's state that decides whether one
// server may see an event: the room's history visibility and the memberships
// of that server's users.
type VisibilityState struct {
	// HistoryVisibility is content.history_visibility of the m.room.history_visibility
	// state event, or "" when the room has none.
	HistoryVisibility string
	// Memberships maps the user IDs of the requested server (user IDs ending
	// in ":"+server, port included) to their content.membership ("join",
	// "invite", "leave", "ban", "knock"). Users without a membership event are
	// absent.
	Memberships map[string]string
}

// EventVisibility is the visibility state just before and just after one
// event. Both are needed: the spec judges most events on the state before
// them, but an m.room.history_visibility event, or a membership event of the
// requesting server's user, is visible if the state before *or* after it
// allows. Returning the pair from one call saves the store a second round trip.
type EventVisibility struct {
	// Known is false when the store does not know the state at the event: an
	// ID it does not hold in the room, an outlier, or an event whose state
	// it cannot derive (see "State" on EventStore). Such an event is served
	// redacted, like one the server may not see. The zero value is therefore
	// fail-closed.
	Known bool
	// Before and After are meaningful only when Known is true.
	Before VisibilityState
	After  VisibilityState
}

// CurrentState is the part of a room's current state that authorises a
// request: the server ACL and the memberships of the requesting server's users.
type CurrentState struct {
	// ServerACL is the content of the current m.room.server_acl event, or nil
	// when the room has none.
	ServerACL json.RawMessage
	// Memberships: as in VisibilityState, for the current state.
	Memberships map[string]string
}

// EventStore is what fedhistory needs from a homeserver's database. Every
// method takes a batch, so that no walk costs one round trip per event.
// Implementations must be safe for concurrent use. storetest.Run checks an
// implementation against this contract.
//
// # State
//
// A store never invents state. The state before an event is known when
//
//   - the event is a room's m.room.create event (the empty state);
//   - the homeserver supplied it (AddOptions.StateBefore); or
//   - every one of the event's prev_events is held in the room, is no
//     outlier and has a known state: then it is the state after the single
//     prev_event, or the room version's state resolution of the states after
//     them.
//
// Otherwise (a prev_event the store does not hold, an outlier prev_event, a
// prev_event whose own state is unknown) it is unknown, and so is the state
// after the event. The state after an event is the state before it, with the
// event itself applied when it is a state event that is not rejected. The
// current state is the state after the forward extremities (the non-outlier,
// non-rejected events no such event names as a prev_event), resolved when
// there are several; it is unknown when any of theirs is.
//
// # Redactions
//
// A store applies a redaction, marking its target Redacted, exactly when the
// spec does ("Redactions" in the room versions): the redaction is neither
// rejected nor of another room than its target, the target is not the
// room's m.room.create event, and
//
//   - in room versions 1 and 2: always (the auth rules already checked the
//     redaction);
//   - from room version 3 on: the redaction's sender has the power level
//     "redact" in the state before the redaction (never, when that state is
//     unknown), or belongs to the same server as the target's sender.
//
// A redaction may arrive before its target: it applies once the target is
// stored.
//
// # Order of adds
//
// Events are added in topological order: an event's prev_events and
// auth_events are added before it, when they are added at all. The auth
// chain links of an event (see StateStore) are the ones to events the store
// held when it was added, so the answers about an event never change once it
// is stored, except Redacted.
type EventStore interface {
	// RoomVersion returns the room's version ("1" … "12"), or an error
	// wrapping ErrRoomNotFound when the store does not hold the room.
	RoomVersion(ctx context.Context, roomID string) (string, error)

	// Events returns the events among ids that the store holds in roomID, in
	// any order, outliers and rejected events included (their flags say
	// so). IDs it does not hold, and IDs of events in other rooms, are left
	// out; that is not an error.
	Events(ctx context.Context, roomID string, ids []string) ([]*Event, error)

	// CurrentState returns the room's current server ACL and the current
	// memberships of server's users, or an error wrapping ErrRoomNotFound,
	// or ErrStateUnknown when the current state is not known.
	CurrentState(ctx context.Context, roomID, server string) (*CurrentState, error)

	// Visibility returns one EventVisibility per entry of eventIDs, in the
	// same order: result[i] answers eventIDs[i] (repeated IDs are answered
	// each time). An entry is Known, with the visibility state before and
	// after the event for server's users, when the store holds the event in
	// roomID and knows its state: rejected events included, outliers not.
	// Every other entry (an unknown ID, an event of another room, an
	// outlier, an event whose state is unknown) has Known false, and the
	// handler serves that event redacted. An unknown room gives all entries
	// Known false, or an error wrapping ErrRoomNotFound.
	//
	// A result whose length is not len(eventIDs) is a store bug: the handler
	// fails the request with its store-error answer rather than guess.
	Visibility(ctx context.Context, roomID, server string, eventIDs []string) ([]EventVisibility, error)
}

// ErasureStore is an optional capability of an EventStore that knows which
// users have been erased (GDPR erasure): their events are served redacted.
type ErasureStore interface {
	EventStore
	// ErasedUsers returns the subset of userIDs that are erased.
	ErasedUsers(ctx context.Context, userIDs []string) (map[string]bool, error)
}

// WalkResult is the answer of a walk: the events to serve, in the walk's
// order (before filtering), and what the walk cost.
type WalkResult struct {
	Events []*Event
	// Visits is the number of event IDs the walk fetched (or the store's
	// nearest measure of it); Exhausted is true when the visit budget ran out
	// before the walk was done. Both are for metrics only.
	Visits    int
	Exhausted bool
}

// BackfillWalker is an optional capability of an EventStore that runs a whole
// backfill walk itself (in one database query, say). Its Events must be
// exactly those dag.Backfill returns for the same request over the store's
// Events, visit budget (req.MaxVisits) included, and its own work bounded
// likewise; storetest checks this. Use WalkBackfill to walk any store.
type BackfillWalker interface {
	EventStore
	WalkBackfill(ctx context.Context, req dag.BackfillRequest) (WalkResult, error)
}

// MissingEventsWalker is an optional capability of an EventStore that runs a
// whole get_missing_events walk itself, with the same obligations as
// BackfillWalker towards dag.MissingEvents. Use WalkMissingEvents to walk any
// store.
type MissingEventsWalker interface {
	EventStore
	WalkMissingEvents(ctx context.Context, req dag.MissingEventsRequest) (WalkResult, error)
}

// StateStore is an optional capability of an EventStore that knows the state
// at each event and the events' auth chains. With it the handler serves
// GET /state_ids, /state and /event_auth; without it those routes answer
// 404 M_UNRECOGNIZED.
type StateStore interface {
	EventStore

	// StateBefore returns the IDs of the events that make up roomID's state
	// just before eventID (spec: "prior to considering any state changes
	// induced by the requested event"), one per (type, state_key), in any
	// order. It fails with an error wrapping ErrEventNotFound when the store
	// holds no event eventID in roomID, or holds it rejected or as an
	// outlier, and with ErrStateUnknown when the state before it is unknown.
	StateBefore(ctx context.Context, roomID, eventID string) ([]string, error)

	// AuthChain returns, without duplicates and in any order, the IDs of the
	// events reachable from eventIDs through one or more auth_events links:
	// their auth events, those events' auth events, and so on. Only links to
	// events held in roomID when the linking event was added count, rejected
	// events are neither returned nor walked through, outliers are both. In
	// room version 12 the room's m.room.create event is an auth event of
	// every other event of the room (as Synapse and gomatrixserverlib treat
	// it). IDs among eventIDs that the store does not hold in roomID
	// contribute nothing. An eventID is in the answer only if another one
	// reaches it.
	AuthChain(ctx context.Context, roomID string, eventIDs []string) ([]string, error)
}

// StateIDsStore is an optional capability of a StateStore that answers
// /state_ids' two questions at once: the state before an event and its auth
// chain, exactly StateBefore(roomID, eventID) and AuthChain(roomID, that
// state), with the same errors. A store that keeps something per state
// (sqlstore counts each state's auth events) can then spare itself a walk
// from every state event. Use StateIDs to ask any StateStore.
type StateIDsStore interface {
	StateStore
	StateIDs(ctx context.Context, roomID, eventID string) (pduIDs, authChainIDs []string, err error)
}

// StateIDs returns the state before eventID and its auth chain: through
// store's StateIDs when it is a StateIDsStore, else with StateBefore and
// AuthChain.
func StateIDs(ctx context.Context, store StateStore, roomID, eventID string) (pduIDs, authChainIDs []string, err error) {
	if both, ok := store.(StateIDsStore); ok {
		return both.StateIDs(ctx, roomID, eventID)
	}
	pduIDs, err = store.StateBefore(ctx, roomID, eventID)
	if err != nil {
		return nil, nil, err
	}
	authChainIDs, err = store.AuthChain(ctx, roomID, pduIDs)
	if err != nil {
		return nil, nil, err
	}
	return pduIDs, authChainIDs, nil
}

// EventLookupStore is an optional capability of an EventStore that finds an
// event by ID alone, whatever its room. With it the handler serves
// GET /event/{eventId}.
type EventLookupStore interface {
	EventStore
	// EventByID returns the event eventID, outliers and rejected events
	// included (their flags say so), or an error wrapping ErrEventNotFound.
	EventByID(ctx context.Context, eventID string) (*Event, error)
}

// Direction is the direction of a timestamp lookup: Forward ('f') or
// Backward ('b'), as /timestamp_to_event's "dir" parameter.
type Direction byte

const (
	Forward  Direction = 'f'
	Backward Direction = 'b'
)

// TimestampStore is an optional capability of an EventStore that finds a
// room's event nearest a point in time. With it the handler serves
// GET /timestamp_to_event.
type TimestampStore interface {
	EventStore
	// EventAtTimestamp returns, among the events of roomID that are neither
	// rejected nor outliers, the one whose OriginServerTS is nearest ts in
	// direction dir, ts included: Backward, the greatest (OriginServerTS,
	// Depth, ID) with OriginServerTS <= ts; Forward, the least with
	// OriginServerTS >= ts (IDs compared as byte strings). It fails with an
	// error wrapping ErrEventNotFound when there is none, and ErrRoomNotFound
	// for a room it does not hold. Its cost must not grow linearly with the
	// room (an index on (room, origin_server_ts)).
	EventAtTimestamp(ctx context.Context, roomID string, ts int64, dir Direction) (*Event, error)
}
