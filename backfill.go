package fedhistory

import (
	"context"
	"net/http"
	"strconv"
	"strings"

	"github.com/fedhistory/fedhistory/dag"
	"github.com/fedhistory/fedhistory/internal/matrixerr"
)

// backfillHandler serves GET /backfill/{roomId}?v=…&limit=N
// (spec: server-server API, "Backfilling and retrieving missing events").
type backfillHandler struct {
	cfg Config
	// txnPrefix is `{"origin":"<server name>","origin_server_ts":`, encoded
	// once: the rest of the response is the timestamp and stored bytes.
	txnPrefix []byte
}

func (h *backfillHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	// 1. Authenticated by the Authenticator that wraps this handler; 2. parse.
	origin, roomID, ok := requestRoom(w, r)
	if !ok {
		return
	}
	seeds, limit, perr := h.parseQuery(r)
	if perr != nil {
		perr.write(w)
		return
	}

	// 3. Authorise: server ACL and "is the origin in the room now".
	roomVersion, err := authorise(ctx, h.cfg.Store, roomID, origin)
	if err != nil {
		writeStoreError(w, r, h.cfg.Logger, "backfill", err)
		return
	}

	// 4. Walk.
	events, err := h.walk(ctx, roomID, seeds, limit)
	if err != nil {
		writeStoreError(w, r, h.cfg.Logger, "backfill", err)
		return
	}

	// 5. Filter: history visibility, erasure, redaction withholding.
	pdus, err := filterEvents(ctx, h.cfg.Store, roomVersion, roomID, origin, events, h.cfg.Logger)
	if err != nil {
		writeStoreError(w, r, h.cfg.Logger, "backfill", err)
		return
	}

	// 6. Write the stored bytes as a transaction.
	var headBuf [512]byte // the prefix holds a server name of at most 255 bytes
	head := append(headBuf[:0], h.txnPrefix...)
	head = strconv.AppendInt(head, h.cfg.Now().UnixMilli(), 10)
	head = append(head, `,"pdus":`...)
	writePDUResponse(w, head, pdus)
}

// parseQuery reads "v" and "limit".
func (h *backfillHandler) parseQuery(r *http.Request) (seeds []string, limit int, perr *paramError) {
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

// walk runs the backfill walk, honouring MaxWalkVisits.
func (h *backfillHandler) walk(ctx context.Context, roomID string, seeds []string, limit int) ([]*Event, error) {
	result, err := WalkBackfill(ctx, h.cfg.Store, dag.BackfillRequest{
		RoomID: roomID, From: seeds, Limit: limit, MaxVisits: h.cfg.MaxWalkVisits,
	})
	return result.Events, err
}
