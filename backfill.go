package fedhistory

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/fedhistory/fedhistory/dag"
	"github.com/fedhistory/fedhistory/internal/matrixerr"
)

// backfill serves GET /backfill/{roomId}?v=…&limit=N (spec: server-server
// API, "Backfilling and retrieving missing events"): a bounded, best-first
// walk back from the v events, newest first, as a transaction.
func (h *Handler) backfill(req *request, params []string) {
	// 1. Authenticate (the body, if any, is read and bounded there).
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
	seeds, limit, perr := h.parseBackfillQuery(req.r)
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
	walked, err := req.walkBackfill(dag.BackfillRequest{
		RoomID: roomID, From: seeds, Limit: limit, MaxVisits: h.cfg.MaxWalkVisits,
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
	// 6. Write the stored bytes as a transaction.
	req.writeBuilt(func(buf []byte) []byte { return appendTransaction(buf, h.cfg.ServerName, h.cfg.Now(), pdus) })
}

// parseBackfillQuery reads "v" and "limit".
func (h *Handler) parseBackfillQuery(r *http.Request) (seeds []string, limit int, perr *paramError) {
	query := r.URL.Query()
	values, present := query["v"]
	if !present {
		return nil, 0, &paramError{matrixerr.MissingParam, "missing required query parameter: v"}
	}
	// "v" is repeated (v=a&v=b), as gomatrixserverlib's and mautrix-go's
	// clients send it; a single comma-joined value is accepted too.
	seen := make(map[string]struct{}, len(values))
	for _, value := range values {
		for _, id := range strings.Split(value, ",") {
			if id == "" {
				continue
			}
			if _, dup := seen[id]; dup {
				continue
			}
			if len(seeds) == h.cfg.MaxBackfillSeeds {
				return nil, 0, &paramError{matrixerr.InvalidParam,
					"too many v parameters: at most " + strconv.Itoa(h.cfg.MaxBackfillSeeds)}
			}
			seen[id] = struct{}{}
			seeds = append(seeds, id)
		}
	}
	if len(seeds) == 0 {
		return nil, 0, &paramError{matrixerr.MissingParam, "missing required query parameter: v"}
	}
	limits, present := query["limit"]
	if !present || len(limits) == 0 {
		return nil, 0, &paramError{matrixerr.MissingParam, "missing required query parameter: limit"}
	}
	limit, ok := parsePositiveCapped(limits[0], h.cfg.MaxBackfillLimit)
	if !ok {
		return nil, 0, &paramError{matrixerr.InvalidParam, "limit must be a positive integer"}
	}
	return seeds, limit, nil
}

// parsePositiveCapped parses a decimal positive integer, lowering it to max.
// A number too large for an int is still a positive integer: it is capped,
// not refused (Synapse caps silently too).
func parsePositiveCapped(s string, max int) (int, bool) {
	if s == "" || len(s) > 1000 {
		return 0, false
	}
	s = strings.TrimPrefix(s, "+")
	n, capped := 0, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		digit := int(c - '0')
		// Stop before n*10+digit would pass max: with max near the top
		// of int (a server configured "unlimited"), it could overflow.
		switch {
		case capped:
		case n > max/10 || n*10 > max-digit:
			capped = true
		default:
			n = n*10 + digit
		}
	}
	if capped {
		return max, true
	}
	if n == 0 {
		return 0, false
	}
	return n, true
}
