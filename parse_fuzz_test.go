package fedhistory

import (
	"bytes"
	"context"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/dag"
	"github.com/fedhistory/fedhistory/internal/matrixerr"
)

// The parsers of the two endpoints are fuzzed here directly, below routing
// and authentication, so that every input reaches them (FuzzHandler in
// fuzz_test.go covers the whole handler). Both targets also fuzz the
// configured caps: a homeserver may set any of them, and parsing must stay
// within whatever it set.

// parserConfig returns a Config with the given caps and every other field at
// its default. A cap of zero or less selects the default, as in Config.
func parserConfig(t testing.TB, maxSeeds, maxLimit, maxMissing, maxIDs int, maxBody int64) Config {
	t.Helper()
	cfg, err := Config{
		ServerName:          "hs1.example",
		Store:               unusedStore{},
		Authenticator:       unusedAuthenticator,
		MaxBackfillSeeds:    maxSeeds,
		MaxBackfillLimit:    maxLimit,
		MaxMissingEvents:    maxMissing,
		MaxMissingEventIDs:  maxIDs,
		MaxRequestBodyBytes: maxBody,
	}.withDefaults()
	require.NoError(t, err)
	return cfg
}

// unusedStore and unusedAuthenticator satisfy Config; the parsers never
// touch either, and a call would fail the target.
type unusedStore struct{ EventStore }

var unusedAuthenticator = AuthenticatorFunc(func(*http.Request) (string, error) {
	panic("the parsers must not authenticate")
})

// FuzzBackfillQuery feeds raw query strings to the backfill parser. Whatever
// the query: no panic, and either a spec-form error (M_MISSING_PARAM or
// M_INVALID_PARAM with a message) or 1…MaxBackfillSeeds distinct, non-empty
// seeds and a limit of 1…MaxBackfillLimit that is exactly the query's
// "limit", lowered to the cap.
func FuzzBackfillQuery(f *testing.F) {
	f.Add("v=%24a&limit=5", 0, 0)
	f.Add("v=$a&v=$b&limit=100", 0, 0)
	f.Add("v=$a,$b,,$a&limit=+007", 1, 3)
	f.Add("v=$a&limit=99999999999999999999999999", 0, 0)
	f.Add("v=$a&limit=-1", 0, 0)
	f.Add("v=$a&limit=0x10", 0, 0)
	f.Add("v=&v=,&limit=1", 0, 0)
	f.Add("limit=1", 0, 0)
	f.Add("v=$a", 0, 0)
	f.Add("v=$a&limit=&limit=3", 0, 0)
	f.Add("v=%zz&limit=1;v=$b", 0, 0)
	f.Add("v=$a&limit=92233720368547758070", 0, 1<<62)
	f.Fuzz(func(t *testing.T, rawQuery string, maxSeeds, maxLimit int) {
		cfg := parserConfig(t, maxSeeds, maxLimit, 0, 0, 0)
		h := &Handler{cfg: cfg}
		r := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/backfill/!r:x", RawQuery: rawQuery}}

		seeds, limit, perr := h.parseBackfillQuery(r)
		query := r.URL.Query()
		if perr != nil {
			require.Contains(t, []string{matrixerr.MissingParam, matrixerr.InvalidParam}, perr.errcode)
			require.NotEmpty(t, perr.message)
			requireSpecFormError(t, perr, http.StatusBadRequest)
			return
		}

		require.NotEmpty(t, seeds)
		require.LessOrEqual(t, len(seeds), cfg.MaxBackfillSeeds)
		seen := map[string]bool{}
		for _, id := range seeds {
			require.NotEmpty(t, id)
			require.NotContains(t, id, ",", "comma-joined values are split")
			require.False(t, seen[id], "seed %q twice", id)
			seen[id] = true
		}
		require.GreaterOrEqual(t, limit, 1)
		require.LessOrEqual(t, limit, cfg.MaxBackfillLimit)
		want, ok := referenceLimit(query.Get("limit"), cfg.MaxBackfillLimit)
		require.True(t, ok, "limit %q accepted", query.Get("limit"))
		require.Equal(t, want, limit)
	})
}

// referenceLimit is the "limit" rule spelled out with arbitrary precision:
// an optional "+" and decimal digits making a positive number, lowered to
// max. (The parser's own rule avoids big numbers; this one is obviously
// right.)
func referenceLimit(s string, max int) (int, bool) {
	s = strings.TrimPrefix(s, "+")
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, ok := new(big.Int).SetString(s, 10)
	if !ok || n.Sign() <= 0 {
		return 0, false
	}
	if n.Cmp(big.NewInt(int64(max))) > 0 {
		return max, true
	}
	return int(n.Int64()), true
}

// FuzzMissingEventsBody feeds raw bodies to the get_missing_events parser:
// the body cap, parseMissingEventsBody, and the handler's limit and list
// caps. Whatever the body: no panic, and either a spec-form error (413
// M_TOO_LARGE exactly when the body is over the cap, M_NOT_JSON, M_BAD_JSON,
// or M_INVALID_PARAM for a list over its cap) or a request that was a JSON
// object, with a limit no larger than MaxMissingEvents (the handler answers
// a limit below 1 with no events) and lists within MaxMissingEventIDs.
func FuzzMissingEventsBody(f *testing.F) {
	f.Add([]byte(`{"earliest_events":["$a"],"latest_events":["$b"],"limit":10,"min_depth":0}`), 0, 0, int64(0))
	f.Add([]byte(`{}`), 0, 0, int64(0))
	f.Add([]byte(`{"earliest_events":null,"latest_events":["$b"]}`), 0, 0, int64(0))
	f.Add([]byte(`{"limit":-9223372036854775808}`), 0, 0, int64(0))
	f.Add([]byte(`{"limit":1e300}`), 0, 0, int64(0))
	f.Add([]byte(`{"limit":"5"}`), 0, 0, int64(0))
	f.Add([]byte(`{"latest_events":["$a","$b","$c"]}`), 0, 2, int64(0))
	f.Add([]byte(`{"latest_events":[1]}`), 0, 0, int64(0))
	f.Add([]byte(`[]`), 0, 0, int64(0))
	f.Add([]byte(`"x"`), 0, 0, int64(0))
	f.Add([]byte(`{"a":1} {"b":2}`), 0, 0, int64(0))
	f.Add([]byte("\xff"), 0, 0, int64(0))
	f.Add([]byte(`{"latest_events":["$aaaaaaaaaaaaaaaaaaaa"]}`), 0, 0, int64(10))
	f.Fuzz(func(t *testing.T, body []byte, maxMissing, maxIDs int, maxBody int64) {
		cfg := parserConfig(t, 0, 0, maxMissing, maxIDs, maxBody)
		h := &Handler{cfg: cfg}
		r := httptest.NewRequestWithContext(context.Background(), http.MethodPost, "/get_missing_events/!r:x", bytes.NewReader(body))
		w := httptest.NewRecorder()
		// Authentication bounds the body before the parser reads it.
		r.Body = http.MaxBytesReader(w, r.Body, cfg.MaxRequestBodyBytes)

		req, perr := h.parseMissingEvents(r)
		tooLarge := int64(len(body)) > cfg.MaxRequestBodyBytes
		if perr != nil {
			require.NotEmpty(t, perr.message)
			require.Equal(t, tooLarge, perr.errcode == matrixerr.TooLarge, "errcode %s for %d bytes", perr.errcode, len(body))
			switch perr.errcode {
			case matrixerr.TooLarge:
				requireSpecFormError(t, perr, http.StatusRequestEntityTooLarge)
			case matrixerr.NotJSON:
				require.False(t, json.Valid(body), "valid JSON refused as not JSON")
				requireSpecFormError(t, perr, http.StatusBadRequest)
			case matrixerr.BadJSON, matrixerr.InvalidParam:
				require.True(t, json.Valid(body))
				requireSpecFormError(t, perr, http.StatusBadRequest)
			default:
				t.Fatalf("unexpected errcode %s", perr.errcode)
			}
			return
		}

		require.False(t, tooLarge)
		var object map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(body, &object), "accepted a body that is not a JSON object")
		require.LessOrEqual(t, req.limit, cfg.MaxMissingEvents)
		require.LessOrEqual(t, len(req.earliest), cfg.MaxMissingEventIDs)
		require.LessOrEqual(t, len(req.latest), cfg.MaxMissingEventIDs)
		if _, present := object["limit"]; !present {
			require.Equal(t, min(DefaultMissingEventsLimit, cfg.MaxMissingEvents), req.limit)
		}
	})
}

// requireSpecFormError checks the answer a parse error is written as.
func requireSpecFormError(t *testing.T, perr *paramError, status int) {
	t.Helper()
	w := httptest.NewRecorder()
	(&request{w: w}).writeParamError(perr)
	require.Equal(t, status, w.Code)
	require.Equal(t, "application/json", w.Header().Get("Content-Type"))
	var body struct {
		ErrCode string `json:"errcode"`
		Error   string `json:"error"`
	}
	require.NoError(t, json.Unmarshal(w.Body.Bytes(), &body))
	require.Equal(t, perr.errcode, body.ErrCode)
	require.Equal(t, perr.message, body.Error)
}

// FuzzStateQuery feeds raw query strings to the /state and /state_ids
// parser: either M_MISSING_PARAM (no event_id, or an empty one) or
// M_INVALID_PARAM, or exactly the first event_id value, an event ID.
func FuzzStateQuery(f *testing.F) {
	f.Add("event_id=%24abc", "%21r%3Ax")
	f.Add("event_id=", "!r:x")
	f.Add("", "!r:x")
	f.Add("event_id=$a&event_id=$b", "!r:x")
	f.Add("event_id=notanid", "%zz")
	f.Add("event_id=$"+strings.Repeat("a", 300), "!r:x")
	f.Fuzz(func(t *testing.T, rawQuery, rawRoom string) {
		r := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/state_ids/x", RawQuery: rawQuery}}
		roomID, eventID, perr := parseStateRequest(r, []string{rawRoom})
		values := r.URL.Query()["event_id"]
		if perr != nil {
			requireSpecFormError(t, perr, http.StatusBadRequest)
			if len(values) == 0 || values[0] == "" {
				require.Equal(t, matrixerr.MissingParam, perr.errcode, "a missing event_id is reported before anything else")
			} else {
				require.Equal(t, matrixerr.InvalidParam, perr.errcode)
			}
			return
		}
		require.Equal(t, values[0], eventID)
		require.True(t, strings.HasPrefix(eventID, "$"))
		require.LessOrEqual(t, len(eventID), 255)
		require.True(t, strings.HasPrefix(roomID, "!"))
	})
}

// FuzzTimestampQuery feeds raw query strings to the /timestamp_to_event
// parser and checks its answer against the rule spelled out with arbitrary
// precision: ts decimal digits only, at most canonical JSON's largest
// integer; dir "f" or "b"; a missing one M_MISSING_PARAM, a bad one
// M_INVALID_PARAM.
func FuzzTimestampQuery(f *testing.F) {
	f.Add("ts=1700000000000&dir=b")
	f.Add("ts=0&dir=f")
	f.Add("ts=-1&dir=f")
	f.Add("ts=+5&dir=f")
	f.Add("ts=9007199254740992&dir=b")
	f.Add("ts=1&dir=x")
	f.Add("dir=b")
	f.Add("ts=1")
	f.Add("ts=&dir=")
	f.Fuzz(func(t *testing.T, rawQuery string) {
		r := &http.Request{Method: http.MethodGet, URL: &url.URL{Path: "/timestamp_to_event/x", RawQuery: rawQuery}}
		ts, dir, perr := parseTimestampQuery(r)
		query := r.URL.Query()
		if len(query["ts"]) == 0 || len(query["dir"]) == 0 {
			require.NotNil(t, perr)
			require.Equal(t, matrixerr.MissingParam, perr.errcode)
			return
		}
		rawTS, rawDir := query["ts"][0], query["dir"][0]
		n, ok := new(big.Int).SetString(rawTS, 10)
		validTS := ok && onlyDigits(rawTS) && n.Cmp(big.NewInt(dag.MaxCanonicalInt)) <= 0
		validDir := rawDir == "f" || rawDir == "b"
		if !validTS || !validDir {
			require.NotNil(t, perr, "ts %q dir %q accepted", rawTS, rawDir)
			require.Equal(t, matrixerr.InvalidParam, perr.errcode)
			requireSpecFormError(t, perr, http.StatusBadRequest)
			return
		}
		require.Nil(t, perr)
		require.Equal(t, n.Int64(), ts)
		require.Equal(t, Direction(rawDir[0]), dir)
	})
}

// FuzzRoute feeds raw escaped paths to the router: it never panics, and a
// path it routes is Prefix (optional), the route's name and exactly its
// parameters, none empty and none holding a raw "/", with an optional
// trailing slash.
func FuzzRoute(f *testing.F) {
	f.Add("/_matrix/federation/v1/backfill/%21r%3Ax")
	f.Add("/_matrix/federation/v1/event_auth/!r:x/$e/")
	f.Add("/backfill/!r:x")
	f.Add("/_matrix/federation/v1/backfill//")
	f.Add("/_matrix/federation/v1/../backfill/x")
	f.Add("/_matrix/federation/v1backfill/x")
	f.Add("")
	h, err := New(parserConfig(f, 0, 0, 0, 0, 0))
	require.NoError(f, err)
	for _, name := range []string{"state_ids", "state", "event_auth", "event", "timestamp_to_event"} {
		params := []string{"roomId"}
		switch name {
		case "event_auth":
			params = []string{"roomId", "eventId"}
		case "event":
			params = []string{"eventId"}
		}
		h.routes[name] = &route{name: name, method: http.MethodGet, params: params}
	}
	f.Fuzz(func(t *testing.T, path string) {
		rt, params := h.route(path)
		if rt == nil {
			return
		}
		require.Len(t, params, len(rt.params))
		for _, p := range params {
			require.NotEmpty(t, p)
			require.NotContains(t, p, "/")
		}
		rebuilt := "/" + rt.name + "/" + strings.Join(params, "/")
		stripped := strings.TrimPrefix(path, Prefix)
		require.Contains(t, []string{rebuilt, rebuilt + "/"}, stripped)
	})
}
