package fedhistory

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"unicode/utf8"

	"github.com/fedhistory/fedhistory/internal/matrixerr"
)

// DefaultStateCacheBytes is the default of Config.StateCacheBytes. Matrix
// HQ's /state_ids answer, about 200k IDs, is some 10 MB.
const DefaultStateCacheBytes = 64 << 20

// stateBatch is how many events /state and /event_auth read, filter and
// write at a time: the request's memory holds one batch of event JSON, never
// the whole room's state.
const stateBatch = 500

// stateIDs is the answer of /state_ids: the state before an event and the
// auth chain of that state, as IDs.
type stateIDs struct {
	pduIDs, authChainIDs []string
	// body is the encoded /state_ids answer.
	body []byte
}

func (s *stateIDs) size() int {
	n := len(s.body) + 64
	for _, id := range s.pduIDs {
		n += len(id) + 16
	}
	for _, id := range s.authChainIDs {
		n += len(id) + 16
	}
	return n
}

// stateIDs serves GET /state_ids/{roomId}?event_id=… (spec: server-server
// API, "Retrieving events"): the IDs of the room's state just before the
// event, and of that state's auth chain.
func (h *Handler) stateIDs(req *request, params []string) {
	// 1. Authenticate.
	if !req.authenticate() {
		return
	}
	// 2. Parse: event_id is checked before any room lookup (SyTest).
	roomID, eventID, perr := parseStateRequest(req.r, params)
	if perr != nil {
		req.writeParamError(perr)
		return
	}
	req.roomID = roomID
	if !req.admit() {
		return
	}
	// 3. Authorise: server ACL and "is the origin in the room now".
	if _, err := req.authorise(roomID); err != nil {
		req.fail(err)
		return
	}
	// 4. Look up (IDs only: nothing to filter).
	state, err := req.lookupStateIDs(roomID, eventID)
	if err != nil {
		req.fail(err)
		return
	}
	// 5. Write.
	req.writeOK(state.body)
}

// state serves GET /state/{roomId}?event_id=…: the same sets as /state_ids,
// as PDUs, each through the filter every endpoint uses, streamed a batch at
// a time.
func (h *Handler) state(req *request, params []string) {
	// 1. Authenticate.
	if !req.authenticate() {
		return
	}
	// 2. Parse.
	roomID, eventID, perr := parseStateRequest(req.r, params)
	if perr != nil {
		req.writeParamError(perr)
		return
	}
	req.roomID = roomID
	if !req.admit() {
		return
	}
	// 3. Authorise.
	roomVersion, err := req.authorise(roomID)
	if err != nil {
		req.fail(err)
		return
	}
	// 4. Look up the IDs.
	state, err := req.lookupStateIDs(roomID, eventID)
	if err != nil {
		req.fail(err)
		return
	}
	// 5 and 6. Read, filter and write the events a batch at a time.
	req.streamPDUs(roomVersion, roomID, []pduList{
		{key: "auth_chain", ids: state.authChainIDs},
		{key: "pdus", ids: state.pduIDs, oneOfEachKey: true},
	})
}

// parseStateRequest reads {roomId} and the required event_id.
func parseStateRequest(r *http.Request, params []string) (roomID, eventID string, perr *paramError) {
	eventIDs := r.URL.Query()["event_id"]
	if len(eventIDs) == 0 || eventIDs[0] == "" {
		// Synapse answers an empty event_id with a 500; it is as missing
		// as an absent one.
		return "", "", &paramError{matrixerr.MissingParam, "missing required query parameter: event_id"}
	}
	roomID, perr = pathRoomID(params[0])
	if perr != nil {
		return "", "", perr
	}
	if !strings.HasPrefix(eventIDs[0], "$") || len(eventIDs[0]) > 255 {
		return "", "", &paramError{matrixerr.InvalidParam, "event_id is not an event ID"}
	}
	return roomID, eventIDs[0], nil
}

// lookupStateIDs returns the state before eventID and its auth chain: from
// the cache, or from the store (StateIDs: one StateIDs call, or one
// StateBefore and one AuthChain call), with concurrent requests for the
// same event sharing one lookup.
func (req *request) lookupStateIDs(roomID, eventID string) (state *stateIDs, err error) {
	end := req.stage("lookup")
	defer func() { end(err) }()
	h, ctx := req.h, req.ctx
	key := stateIDsKey{roomID, eventID}
	if cached, ok := h.stateCache.get(key); ok {
		return cached, nil
	}
	store := h.store.(StateStore)
	result := h.stateLookups.DoChan(roomID+"\x00"+eventID, func() (_ any, err error) {
		// The lookup runs on a goroutine of its own, where a panic (in a
		// store, say) would take the process down: make it an error.
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("fedhistory: panic reading the state at %s: %v\n%s", eventID, p, debug.Stack())
			}
		}()
		// The lookup outlives the request that started it when others
		// wait for it too, so it runs on its own deadline.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.cfg.RequestTimeout)
		defer cancel()
		pduIDs, authChainIDs, err := StateIDs(ctx, store, roomID, eventID)
		if err != nil {
			return nil, err
		}
		state := &stateIDs{pduIDs: pduIDs, authChainIDs: authChainIDs}
		state.body = appendStringArray(append([]byte(nil), `{"auth_chain_ids":`...), authChainIDs)
		state.body = append(appendStringArray(append(state.body, `,"pdu_ids":`...), pduIDs), '}')
		h.stateCache.put(key, state)
		return state, nil
	})
	select {
	case r := <-result:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*stateIDs), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// appendStringArray appends ids as a JSON array of strings.
func appendStringArray(buf []byte, ids []string) []byte {
	buf = append(buf, '[')
	for i, id := range ids {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendJSONString(buf, id)
	}
	return append(buf, ']')
}

// appendJSONString appends s as a JSON string. Event IDs need no escaping,
// so they are copied as they are; anything else goes through encoding/json.
func appendJSONString(buf []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			encoded, _ := json.Marshal(s) // a string always encodes
			return append(buf, encoded...)
		}
	}
	buf = append(buf, '"')
	buf = append(buf, s...)
	return append(buf, '"')
}

// pduList is one array of PDUs in a streamed answer.
type pduList struct {
	key string
	ids []string
	// oneOfEachKey drops any second event for a (type, state_key), so that
	// a misbehaving store cannot make the answer one that
	// gomatrixserverlib's CheckStateResponse rejects whole.
	oneOfEachKey bool
}

// streamPDUs writes a JSON object of PDU arrays, reading, filtering and
// writing the events of each list a batch at a time, so that the request
// holds one batch of event JSON however large the answer. Only state events
// are served: the auth chain and the state hold nothing else, and a store
// that says otherwise is not believed. Once the first byte is out the
// status cannot change: a failure after it aborts the connection, so the
// client sees a broken answer, never a short one that parses.
func (req *request) streamPDUs(roomVersion, roomID string, lists []pduList) {
	var out *bufio.Writer
	begin := func() {
		if out == nil {
			out = req.beginStream()
			_ = out.WriteByte('{')
		}
	}
	for li, list := range lists {
		opened, written := false, 0
		openList := func() {
			begin()
			if !opened {
				if li > 0 {
					_ = out.WriteByte(',')
				}
				_, _ = out.WriteString(`"` + list.key + `":[`)
				opened = true
			}
		}
		seen := make(map[string]bool)
		seenKeys := make(map[[2]string]bool)
		for start := 0; start < len(list.ids); start += stateBatch {
			batch := list.ids[start:min(start+stateBatch, len(list.ids))]
			pdus, err := req.readStateBatch(roomVersion, roomID, batch, list.oneOfEachKey, seen, seenKeys)
			if err != nil {
				if out == nil {
					req.fail(err)
					return
				}
				req.abort(err)
			}
			openList()
			for _, pdu := range pdus {
				if written > 0 {
					_ = out.WriteByte(',')
				}
				_, _ = out.Write(pdu)
				written++
			}
		}
		openList()
		_ = out.WriteByte(']')
	}
	begin()
	_ = out.WriteByte('}')
	if err := out.Flush(); err != nil {
		req.abort(err)
	}
}

// readStateBatch reads the events of ids and passes them through the filter.
func (req *request) readStateBatch(roomVersion, roomID string, ids []string, oneOfEachKey bool, seen map[string]bool, seenKeys map[[2]string]bool) ([]json.RawMessage, error) {
	events, err := req.h.store.Events(req.ctx, roomID, ids)
	if err != nil {
		return nil, err
	}
	return req.filter(roomVersion, roomID, stateEventsOnly(req, events, oneOfEachKey, seen, seenKeys))
}

// stateEventsOnly drops, with a log line, what a state answer must not
// hold: events that are not state events, an event already in the list
// (seen), and a second event for one (type, state_key) when oneOfEachKey.
func stateEventsOnly(req *request, events []*Event, oneOfEachKey bool, seen map[string]bool, seenKeys map[[2]string]bool) []*Event {
	kept := events[:0:0]
	dropped := 0
	for _, ev := range events {
		if ev == nil || ev.StateKey == nil || seen[ev.ID] {
			dropped++
			continue
		}
		if oneOfEachKey {
			key := [2]string{ev.Type, *ev.StateKey}
			if seenKeys[key] {
				dropped++
				continue
			}
			seenKeys[key] = true
		}
		seen[ev.ID] = true
		kept = append(kept, ev)
	}
	if dropped > 0 {
		req.h.cfg.Logger.LogAttrs(req.ctx, slog.LevelWarn,
			"fedhistory: the store's state holds non-state events, an event twice or one key twice; dropped them",
			slog.String("room_id", req.roomID), slog.Int("count", dropped))
	}
	return kept
}

// beginStream writes the 200's header and returns the body's buffer.
func (req *request) beginStream() *bufio.Writer {
	if req.origin == "" {
		panic("fedhistory: an endpoint answered 200 without authenticating the request")
	}
	req.status = http.StatusOK
	req.w.Header().Set("Content-Type", "application/json")
	req.w.WriteHeader(http.StatusOK)
	return bufio.NewWriterSize(req.w, 64<<10)
}

// abort ends a streamed answer that cannot be completed: the error is
// logged and the connection dropped (http.ErrAbortHandler).
func (req *request) abort(err error) {
	req.h.cfg.Logger.LogAttrs(req.ctx, slog.LevelError, "fedhistory: aborting a streamed answer",
		slog.String("endpoint", req.endpoint), slog.String("origin", req.origin),
		slog.String("room_id", req.roomID), slog.String("error", err.Error()))
	panic(http.ErrAbortHandler)
}
