package fedhistory_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/memstore"
)

// fuzzFixture is one room shared by all fuzz iterations (building it per
// iteration would drown the fuzzer in signing work).
var fuzzFixture = sync.OnceValues(func() (*testRoom, *memstore.Store) {
	t := &testing.T{}
	room := linearAndForkedRoom(t, "10")
	return room, load(t, room)
})

// FuzzHandler sends arbitrary requests from a member server through the
// whole handler against a fixed room. Whatever the input: no panic, a JSON
// answer, a spec-form error for every non-200, and on 200 only events of the
// requested room.
func FuzzHandler(f *testing.F) {
	room, store := fuzzFixture()
	m7, m2 := room.ids["m7"], room.ids["m2"]
	f.Add("GET", "/_matrix/federation/v1/backfill/"+room.id+"?v="+m7+"&limit=5", "")
	f.Add("GET", "/_matrix/federation/v1/backfill/"+room.id+"/?v="+m7+","+m2+"&limit=99999999999", "")
	f.Add("GET", "/_matrix/federation/v1/backfill/"+room.id+"?v=&limit=-1", "")
	f.Add("POST", "/_matrix/federation/v1/get_missing_events/"+room.id, `{"latest_events":["`+m7+`"],"earliest_events":null,"limit":3}`)
	f.Add("POST", "/_matrix/federation/v1/get_missing_events/"+room.id, `{"latest_events":"x","min_depth":-1e300}`)
	f.Add("POST", "/_matrix/federation/v1/get_missing_events/%21x%3Ay", `[`)
	f.Add("DELETE", "/_matrix/federation/v1/backfill/", "")
	h := newHandler(f, store)

	f.Fuzz(func(t *testing.T, method, target, body string) {
		if !strings.HasPrefix(target, "/") || strings.ContainsAny(target, " \r\n\t") || !validMethod(method) {
			return // not an HTTP request line httptest could build
		}
		if _, err := url.ParseRequestURI(target); err != nil {
			return // net/http answers 400 itself before any handler runs
		}
		req := httptest.NewRequest(method, "http://hs1.example"+target, strings.NewReader(body))
		req.Header.Set(originHeader, memberServer)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)

		require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
		var out map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &out), "body: %s", rec.Body.Bytes())
		if rec.Code != http.StatusOK {
			require.Contains(t, out, "errcode")
			require.Contains(t, out, "error")
			return
		}
		list := out["pdus"]
		if list == nil {
			list = out["events"]
		}
		var pdus []struct {
			RoomID string `json:"room_id"`
		}
		require.NoError(t, json.Unmarshal(list, &pdus))
		for _, pdu := range pdus {
			require.Equal(t, room.id, pdu.RoomID)
		}
	})
}

func validMethod(m string) bool {
	if m == "" || len(m) > 10 {
		return false
	}
	for _, c := range m {
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return true
}
