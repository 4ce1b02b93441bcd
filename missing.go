package fedhistory

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/fedhistory/fedhistory/dag"
	"github.com/fedhistory/fedhistory/internal/matrixerr"
)

// missingEventsRequest is the request body. Pointers tell "absent" from zero.
type missingEventsRequest struct {
	Limit          *int64   `json:"limit"`
	MinDepth       *int64   `json:"min_depth"`
	EarliestEvents []string `json:"earliest_events"`
	LatestEvents   []string `json:"latest_events"`
}

// getMissingEvents serves POST /get_missing_events/{roomId} (spec:
// server-server API, "Backfilling and retrieving missing events"): a
// breadth-first walk of prev_events from latest_events, stopping at
// earliest_events, oldest first.
func (h *Handler) getMissingEvents(req *request, params []string) {
	// 1. Authenticate (which reads the body, bounded).
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
	body, perr := h.parseMissingEvents(req.r)
	if perr != nil {
		req.writeParamError(perr)
		return
	}
	if !req.admit() {
		return
	}
	// 3. Authorise: server ACL and "is the origin in the room now".
	roomVersion, err := req.authorise(roomID)
	if err != nil {
		req.fail(err)
		return
	}
	// 4. Walk.
	walked, err := req.walkMissingEvents(dag.MissingEventsRequest{
		RoomID: roomID, Earliest: body.earliest, Latest: body.latest,
		Limit: body.limit, MinDepth: body.minDepth, MaxVisits: h.cfg.MaxWalkVisits,
	})
	if err != nil {
		req.fail(err)
		return
	}
	// 5. Filter: history visibility, erasure, applied redactions.
	pdus, err := req.filter(roomVersion, roomID, walked.Events)
	if err != nil {
		req.fail(err)
		return
	}
	// 6. Write the stored bytes.
	req.writeBuilt(func(buf []byte) []byte { return appendObject(buf, `{"events":`, pdus) })
}

// parsedMissingEvents is a validated request.
type parsedMissingEvents struct {
	limit    int
	minDepth int64
	earliest []string
	latest   []string
}

// parseMissingEvents reads the body, which authentication has already read
// once within Config.MaxRequestBodyBytes.
func (h *Handler) parseMissingEvents(r *http.Request) (*parsedMissingEvents, *paramError) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return nil, &paramError{matrixerr.TooLarge, "request body is larger than " +
				strconv.FormatInt(h.cfg.MaxRequestBodyBytes, 10) + " bytes"}
		}
		return nil, &paramError{matrixerr.NotJSON, "could not read request body"}
	}
	req, perr := parseMissingEventsBody(body)
	if perr != nil {
		return nil, perr
	}
	parsed := &parsedMissingEvents{
		// The spec's default is capped too: a server configured below it
		// means its cap.
		limit:    min(DefaultMissingEventsLimit, h.cfg.MaxMissingEvents),
		earliest: req.EarliestEvents,
		latest:   req.LatestEvents,
	}
	if req.Limit != nil {
		parsed.limit = int(min(*req.Limit, int64(h.cfg.MaxMissingEvents)))
	}
	if req.MinDepth != nil {
		parsed.minDepth = *req.MinDepth
	}
	// In a fixed order, so that the message does not depend on map order.
	for _, list := range []struct {
		name string
		ids  []string
	}{{"earliest_events", parsed.earliest}, {"latest_events", parsed.latest}} {
		if len(list.ids) > h.cfg.MaxMissingEventIDs {
			return nil, &paramError{matrixerr.InvalidParam, list.name + " holds more than " +
				strconv.Itoa(h.cfg.MaxMissingEventIDs) + " event IDs"}
		}
	}
	return parsed, nil
}

// parseMissingEventsBody decodes a get_missing_events body. Not JSON is
// M_NOT_JSON; JSON that is not an object or has a field of the wrong type is
// M_BAD_JSON. Missing or null lists count as empty: the spec marks both
// required, but gomatrixserverlib's client sends "earliest_events": null and
// Sytest sends {} and expects 200, so rejecting them would break real peers.
func parseMissingEventsBody(body []byte) (*missingEventsRequest, *paramError) {
	// Only JSON's own whitespace (RFC 8259): bytes.TrimSpace would also
	// strip "\v" or U+00A0 and let a body that is not JSON through.
	trimmed := bytes.Trim(body, " \t\r\n")
	if !json.Valid(trimmed) {
		return nil, &paramError{matrixerr.NotJSON, "request body is not JSON"}
	}
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, &paramError{matrixerr.BadJSON, "request body must be a JSON object"}
	}
	var req missingEventsRequest
	if err := json.Unmarshal(trimmed, &req); err != nil {
		return nil, &paramError{matrixerr.BadJSON, "malformed get_missing_events body: " + jsonFieldError(err)}
	}
	return &req, nil
}

// jsonFieldError names the offending field without echoing input back.
func jsonFieldError(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) && typeErr.Field != "" {
		return typeErr.Field + " has the wrong type"
	}
	return "a field has the wrong type"
}
