package fedhistory

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/fedhistory/fedhistory/dag"
	"github.com/fedhistory/fedhistory/internal/matrixerr"
)

// timestampToEvent serves GET /timestamp_to_event/{roomId}?ts=…&dir=f|b
// (spec v1.6: server-server API, "Retrieving events"): the room's event
// whose origin_server_ts is nearest ts in direction dir, ts included.
//
// Authentication, the ACL and the joined-now check are those of backfill
// (the spec's accessToken security here is a copy-paste error; Synapse
// checks only the ACL, so any server learns event IDs of any room). Rejected
// events and outliers are never the answer; ties go to the later event
// topologically for "b" and the earlier for "f", then by event ID
// (TimestampStore).
func (h *Handler) timestampToEvent(req *request, params []string) {
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
	ts, dir, perr := parseTimestampQuery(req.r)
	if perr != nil {
		req.writeParamError(perr)
		return
	}
	if !req.admit() {
		return
	}
	// 3. Authorise.
	if _, err := req.authorise(roomID); err != nil {
		req.fail(err)
		return
	}
	// 4. Look up; a store's answer from another room, rejected or an
	// outlier is not believed.
	ev, err := h.store.(TimestampStore).EventAtTimestamp(req.ctx, roomID, ts, dir)
	if err != nil {
		req.fail(err)
		return
	}
	if ev == nil || !strings.HasPrefix(ev.ID, "$") || ev.RoomID != roomID || ev.Rejected || ev.Outlier ||
		(dir == Backward && ev.OriginServerTS > ts) || (dir == Forward && ev.OriginServerTS < ts) {
		req.h.cfg.Logger.Warn("fedhistory: the store's EventAtTimestamp answer is not a servable event of the room; ignored it",
			"room_id", roomID)
		req.fail(fmt.Errorf("fedhistory: timestamp %d in %s: %w", ts, roomID, ErrEventNotFound))
		return
	}
	// 5. Write.
	body := append([]byte(`{"event_id":`), appendJSONString(nil, ev.ID)...)
	body = append(body, `,"origin_server_ts":`...)
	body = strconv.AppendInt(body, ev.OriginServerTS, 10)
	req.writeOK(append(body, '}'))
}

// parseTimestampQuery reads "ts", a non-negative integer canonical JSON can
// carry (Synapse refuses negative values too), and "dir", "f" or "b".
func parseTimestampQuery(r *http.Request) (int64, Direction, *paramError) {
	query := r.URL.Query()
	tsValues, dirValues := query["ts"], query["dir"]
	if len(tsValues) == 0 {
		return 0, 0, &paramError{matrixerr.MissingParam, "missing required query parameter: ts"}
	}
	if len(dirValues) == 0 {
		return 0, 0, &paramError{matrixerr.MissingParam, "missing required query parameter: dir"}
	}
	ts, err := strconv.ParseInt(tsValues[0], 10, 64)
	if err != nil || !onlyDigits(tsValues[0]) || ts > dag.MaxCanonicalInt {
		return 0, 0, &paramError{matrixerr.InvalidParam, "ts must be a non-negative integer of milliseconds"}
	}
	switch dirValues[0] {
	case "f":
		return ts, Forward, nil
	case "b":
		return ts, Backward, nil
	}
	return 0, 0, &paramError{matrixerr.InvalidParam, `dir must be "f" or "b"`}
}

// onlyDigits reports whether s is decimal digits only (no sign).
func onlyDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
