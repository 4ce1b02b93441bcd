package sqlstore

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/memstore"
)

// handlerOver is newTestHandler with a fixed clock, so that two handlers'
// answers (whose transactions carry the time) can be compared byte for byte.
func handlerOver(t *testing.T, store fedhistory.EventStore) *fedhistory.Handler {
	t.Helper()
	h, err := fedhistory.New(fedhistory.Config{
		ServerName: "hs1.example",
		Store:      store,
		Authenticator: fedhistory.AuthenticatorFunc(func(r *http.Request) (string, error) {
			if origin := r.Header.Get(testOriginHeader); origin != "" {
				return origin, nil
			}
			return "", errors.New("no test origin")
		}),
		Logger: slog.New(slog.DiscardHandler),
		Now:    func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) },
	})
	require.NoError(t, err)
	return h
}

// answer is a handler's status and body, the body's unordered lists (the
// contract lets a store return state and auth chains in any order) sorted.
func answer(t *testing.T, h http.Handler, target, origin string) string {
	t.Helper()
	code, body := serve(h, http.MethodGet, target, origin, "")
	var fields map[string]json.RawMessage
	if json.Unmarshal(body, &fields) == nil {
		for _, key := range []string{"pdu_ids", "auth_chain_ids", "pdus", "auth_chain"} {
			var list []json.RawMessage
			if raw, ok := fields[key]; ok && json.Unmarshal(raw, &list) == nil {
				slices.SortFunc(list, func(a, b json.RawMessage) int { return bytes.Compare(a, b) })
				sorted, err := json.Marshal(list)
				require.NoError(t, err)
				fields[key] = sorted
			}
		}
		normalised, err := json.Marshal(fields)
		require.NoError(t, err)
		body = normalised
	}
	return fmt.Sprintf("%d %s", code, body)
}

// TestHandlerSameAsMemstore serves the state, event and timestamp endpoints
// from sqlstore and from memstore, the reference, holding the same rooms,
// and requires the same answers: /state_ids, /state and /event_auth at
// every event, /event for every event, and /timestamp_to_event around
// every event's time, both ways.
func TestHandlerSameAsMemstore(t *testing.T) {
	// The generated rooms of every room version family: forks that need
	// state resolution, rejected events, history visibility changes, a
	// server ACL. (The scenario rooms end with an unknown current state,
	// where every request is refused alike.)
	rooms := testRooms(t)
	forEachDialect(t, func(t *testing.T, s *Store) {
		mem := memstore.New()
		for _, room := range rooms {
			addRoom(t, s, mem, room, nil)
		}
		for _, store := range []fedhistory.EventStore{s, mem} {
			require.Implements(t, (*fedhistory.StateStore)(nil), store)
			require.Implements(t, (*fedhistory.EventLookupStore)(nil), store)
			require.Implements(t, (*fedhistory.TimestampStore)(nil), store)
		}
		sqlHandler, memHandler := handlerOver(t, s), handlerOver(t, mem)
		for name, room := range rooms {
			t.Run(name, func(t *testing.T) {
				roomPath := url.PathEscape(room.ID)
				var targets []string
				for _, ev := range room.Events {
					eventPath := url.PathEscape(ev.ID)
					targets = append(targets,
						fedhistory.Prefix+"/state_ids/"+roomPath+"?event_id="+url.QueryEscape(ev.ID),
						fedhistory.Prefix+"/state/"+roomPath+"?event_id="+url.QueryEscape(ev.ID),
						fedhistory.Prefix+"/event_auth/"+roomPath+"/"+eventPath,
						fedhistory.Prefix+"/event/"+eventPath)
					var fields struct {
						OriginServerTS int64 `json:"origin_server_ts"`
					}
					require.NoError(t, json.Unmarshal(ev.JSON, &fields))
					// Both ways at the event's time, and from either side of
					// it towards it.
					ts := fields.OriginServerTS
					for _, q := range []string{fmt.Sprintf("ts=%d&dir=b", ts), fmt.Sprintf("ts=%d&dir=f", ts),
						fmt.Sprintf("ts=%d&dir=b", ts+1), fmt.Sprintf("ts=%d&dir=f", ts-1)} {
						targets = append(targets, fedhistory.Prefix+"/timestamp_to_event/"+roomPath+"?"+q)
					}
				}
				served := 0
				for _, target := range targets {
					want := answer(t, memHandler, target, requestingServer)
					require.Equal(t, want, answer(t, sqlHandler, target, requestingServer), "GET %s", target)
					if want[:3] == "200" {
						served++
					}
				}
				// Most requests are served: the comparison is of answers,
				// not only of refusals.
				require.Greater(t, served, len(targets)/2)
			})
		}
	})
}
