package fedhistory

import (
	"errors"
	"fmt"
)

// event serves GET /event/{eventId} (spec: server-server API, "Retrieving
// events"): one event, as a transaction, through the filter every endpoint
// uses.
//
// The event's room decides who may have it: its current server ACL and "the
// origin has a joined user now", as for backfill. An event we do not hold,
// an event of a room the origin may not read, and a rejected event all get
// the same 404 M_NOT_FOUND, so probing reveals nothing (Synapse answers an
// unknown event 404 before authenticating, and serves rejected events; we
// do neither). An outlier is served redacted: its redacted form keeps what
// an auth check needs.
func (h *Handler) event(req *request, params []string) {
	// 1. Authenticate: nothing about an event is revealed before.
	if !req.authenticate() {
		return
	}
	// 2. Parse.
	eventID, perr := pathEventID(params[0])
	if perr != nil {
		req.writeParamError(perr)
		return
	}
	if !req.admit() {
		return
	}
	// 3. Look up the event, which names the room to authorise against.
	ev, err := h.store.(EventLookupStore).EventByID(req.ctx, eventID)
	switch {
	case err != nil:
		req.fail(err)
		return
	case ev == nil || ev.ID != eventID || ev.Rejected:
		req.fail(fmt.Errorf("fedhistory: event %s: %w", eventID, ErrEventNotFound))
		return
	}
	req.roomID = ev.RoomID
	// 4. Authorise; a refusal is the same 404 as an unknown event.
	roomVersion, err := req.authorise(ev.RoomID)
	if errors.Is(err, ErrForbidden) {
		err = fmt.Errorf("fedhistory: event %s: %w: %w", eventID, ErrEventNotFound, errNotServable)
	}
	if err != nil {
		req.fail(err)
		return
	}
	// 5. Filter.
	pdus, err := req.filter(roomVersion, ev.RoomID, []*Event{ev})
	if err != nil {
		req.fail(err)
		return
	}
	if len(pdus) == 0 {
		// Withheld (a redaction whose target we lack, a malformed event).
		req.fail(fmt.Errorf("fedhistory: event %s: %w: %w", eventID, ErrEventNotFound, errNotServable))
		return
	}
	// 6. Write.
	req.writeBuilt(func(buf []byte) []byte { return appendTransaction(buf, h.cfg.ServerName, h.cfg.Now(), pdus) })
}
