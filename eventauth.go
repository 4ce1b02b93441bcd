package fedhistory

import (
	"errors"
	"fmt"
)

// eventAuth serves GET /event_auth/{roomId}/{eventId} (spec: server-server
// API, "Retrieving event authorisation information"): the auth chain of one
// event of the room, without the event itself, as PDUs through the filter
// every endpoint uses.
//
// Unlike Synapse, the event must belong to {roomId}: Synapse serves the
// chain of any room's event to a server joined to the room in the path,
// which leaks the other room's state. A rejected or unknown event is 404.
func (h *Handler) eventAuth(req *request, params []string) {
	// 1. Authenticate.
	if !req.authenticate() {
		return
	}
	// 2. Parse.
	roomID, perr := pathRoomID(params[0])
	if perr != nil {
		req.writeParamError(perr)
		return
	}
	req.roomID = roomID
	eventID, perr := pathEventID(params[1])
	if perr != nil {
		req.writeParamError(perr)
		return
	}
	if !req.admit() {
		return
	}
	// 3. Authorise.
	roomVersion, err := req.authorise(roomID)
	if err != nil {
		req.fail(err)
		return
	}
	// 4. Look up: the event, in this room and not rejected, then its chain.
	events, err := h.store.Events(req.ctx, roomID, []string{eventID})
	if err != nil {
		req.fail(err)
		return
	}
	if !holdsServable(events, roomID, eventID) {
		req.fail(fmt.Errorf("fedhistory: event_auth of %s in %s: %w", eventID, roomID, ErrEventNotFound))
		return
	}
	chain, err := h.store.(StateStore).AuthChain(req.ctx, roomID, []string{eventID})
	if err != nil {
		req.fail(err)
		return
	}
	chain = withoutID(chain, eventID)
	// 5 and 6. Filter and write, a batch at a time.
	req.streamPDUs(roomVersion, roomID, []pduList{{key: "auth_chain", ids: chain}})
}

// holdsServable reports whether events (a store's answer) hold eventID in
// roomID, not rejected.
func holdsServable(events []*Event, roomID, eventID string) bool {
	for _, ev := range events {
		if ev != nil && ev.ID == eventID && ev.RoomID == roomID && !ev.Rejected {
			return true
		}
	}
	return false
}

// withoutID returns ids without id (the chain of an event never holds the
// event itself; a store that says otherwise is not believed).
func withoutID(ids []string, id string) []string {
	out := ids[:0:0]
	for _, other := range ids {
		if other != id {
			out = append(out, other)
		}
	}
	return out
}

// errNotServable is why /event answers 404 for an event it holds.
var errNotServable = errors.New("the event may not be served to this server")
