package fedhistory

import (
	"context"
	"encoding/json"
	"errors"
)

// ErrRoomNotFound is returned by an EventStore for a room it does not hold.
// The handler answers it exactly like "the origin is not in the room" (403),
// so that a probe cannot learn which rooms exist here.
var ErrRoomNotFound = errors.New("fedhistory: room not found")

// Event is one stored PDU together with the metadata the walks and the
// visibility filter need. The metadata duplicates fields of JSON on purpose:
// it lets the handler decide what to serve without decoding a single event on
// the hot path, and then copy JSON to the wire untouched.
//
// A store fills every field from the event as it was received; it must not
// modify JSON after it has been handed out.
type Event struct {
	// ID is the event ID ("$…").
	ID string
	// RoomID is the room the event belongs to.
	RoomID string
	// Depth is the event's "depth" field.
	Depth int64
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
	// the bytes that will be written to the wire.
	JSON json.RawMessage
	// Rejected marks an event that failed authorisation: it stays in the DAG
	// (walks pass through it) but is never served.
	Rejected bool
	// Outlier marks an event whose state is not known (fetched as an auth
	// event, say): walks never enter it and it is never served.
	Outlier bool
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
	// ID it does not hold in the room, or an outlier. Such an event is served
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
// Implementations must be safe for concurrent use.
//
// storetest.Run checks an implementation against this contract.
type EventStore interface {
	// RoomVersion returns the room's version ("1" … "12"), or an error
	// wrapping ErrRoomNotFound when the store does not hold the room.
	RoomVersion(ctx context.Context, roomID string) (string, error)

	// Events returns the events among ids that the store holds in roomID, in
	// any order. IDs it does not hold, and IDs of events in other rooms, are
	// left out; that is not an error.
	Events(ctx context.Context, roomID string, ids []string) ([]*Event, error)

	// CurrentState returns the room's current server ACL and the current
	// memberships of server's users, or an error wrapping ErrRoomNotFound.
	CurrentState(ctx context.Context, roomID, server string) (*CurrentState, error)

	// Visibility returns one EventVisibility per entry of eventIDs, in the
	// same order: result[i] answers eventIDs[i] (repeated IDs are answered
	// each time). An entry is Known, with the visibility state before and
	// after the event for server's users, when the store holds the event in
	// roomID and knows its state: rejected events included, outliers not.
	// Every other entry (an unknown ID, an event of another room, an
	// outlier) has Known false, and the handler serves that event redacted.
	// An unknown room gives all entries Known false, or an error wrapping
	// ErrRoomNotFound. The answer is indexed rather than keyed by ID so that
	// neither side hashes: a backfill page asks for up to 100 events.
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

// BackfillWalker is an optional capability of an EventStore that can run a
// whole backfill walk itself (in one database query, say). It must return
// exactly what dag.Backfill returns for the same inputs with the default
// visit budget (MaxVisits 0), and bound its own work likewise; storetest
// checks this. The handler still filters the result (room, visibility).
type BackfillWalker interface {
	EventStore
	WalkBackfill(ctx context.Context, roomID string, from []string, limit int) ([]*Event, error)
}

// MissingEventsWalker is an optional capability of an EventStore that can
// run a whole get_missing_events walk itself. It must return exactly what
// dag.MissingEvents returns for the same inputs with the default visit
// budget, and bound its own work likewise.
type MissingEventsWalker interface {
	EventStore
	WalkMissingEvents(ctx context.Context, roomID string, earliest, latest []string, limit int, minDepth int64) ([]*Event, error)
}
