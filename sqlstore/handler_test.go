package sqlstore

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/redact"
	"github.com/fedhistory/fedhistory/internal/roomgen"
)

// The security issue's repros (#12) through the real handler over a
// sqlstore, as the root package's TestAppliedRedactionsAreServedRedacted and
// TestStateAfterAGapIsNeverInvented check them over memstore.

// testOriginHeader names the requesting server: these tests exercise the
// store behind the handler, not the signatures, so they trust it.
const testOriginHeader = "X-Test-Origin"

// requestingServer has a joined user in the test rooms.
const requestingServer = "hs2.example"

func newTestHandler(t *testing.T, store fedhistory.EventStore) http.Handler {
	t.Helper()
	h, err := fedhistory.New(fedhistory.Config{
		ServerName: "hs1.example",
		Store:      store,
		Authenticator: fedhistory.AuthenticatorFunc(func(r *http.Request) (string, error) {
			return r.Header.Get(testOriginHeader), nil
		}),
		Logger: slog.New(slog.DiscardHandler),
	})
	require.NoError(t, err)
	return h
}

// serve runs one request as origin and returns the status and body.
func serve(h http.Handler, method, target, origin, body string) (int, []byte) {
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	req.Header.Set(testOriginHeader, origin)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.Bytes()
}

func backfillTarget(roomID, from string, limit int) string {
	return "/_matrix/federation/v1/backfill/" + url.PathEscape(roomID) +
		"?" + url.Values{"v": {from}, "limit": {strconv.Itoa(limit)}}.Encode()
}

// pdusOf decodes the PDU array under key of a transaction-like answer.
func pdusOf(t *testing.T, body []byte, key string) []string {
	t.Helper()
	var answer map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(body, &answer), "body: %s", body)
	var raws []json.RawMessage
	require.NoError(t, json.Unmarshal(answer[key], &raws), "body: %s", body)
	var pdus []string
	for _, raw := range raws {
		pdus = append(pdus, string(raw))
	}
	return pdus
}

func TestAppliedRedactionsAreServedRedacted(t *testing.T) {
	for _, version := range []string{"3", "10", "11"} {
		b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: version, ServerName: "hs1.example", Seed: 35})
		require.NoError(t, err)
		require.NoError(t, b.StandardSetup())
		alice := b.Creator()
		mustEvent := func(ev roomgen.Event, err error) roomgen.Event { t.Helper(); require.NoError(t, err); return ev }
		mustEvent(b.Join("@bob:" + requestingServer))
		secret := mustEvent(b.Message(alice, "my password is hunter2"))
		redaction := mustEvent(b.Redact(alice, secret.ID))
		m1 := mustEvent(b.Message(alice, "m1"))
		want, err := redact.Event(version, secret.JSON)
		require.NoError(t, err)

		t.Run("room version "+version, func(t *testing.T) {
			forEachDialect(t, func(t *testing.T, s *Store) {
				for _, ev := range b.Events() {
					_, err := s.Add(context.Background(), version, ev.JSON, fedhistory.AddOptions{Rejected: ev.Rejected, Outlier: ev.Outlier})
					require.NoError(t, err)
				}
				h := newTestHandler(t, s)
				status, body := serve(h, http.MethodGet, backfillTarget(b.RoomID(), m1.ID, 5), requestingServer, "")
				require.Equal(t, http.StatusOK, status, "body: %s", body)
				answers := map[string][]byte{"backfill": body}
				status, body = serve(h, http.MethodPost,
					"/_matrix/federation/v1/get_missing_events/"+url.PathEscape(b.RoomID()), requestingServer,
					`{"earliest_events":[],"latest_events":["`+m1.ID+`"],"limit":5}`)
				require.Equal(t, http.StatusOK, status, "body: %s", body)
				answers["get_missing_events"] = body
				for endpoint, body := range answers {
					require.NotContains(t, string(body), "hunter2", endpoint)
					key := map[string]string{"backfill": "pdus", "get_missing_events": "events"}[endpoint]
					pdus := pdusOf(t, body, key)
					require.Contains(t, pdus, string(want), "%s serves the secret in its redacted form", endpoint)
					require.Contains(t, pdus, string(redaction.JSON), "%s still serves the redaction itself", endpoint)
				}
			})
		})
	}
}

// TestStateAfterAGapIsNeverInvented: hs1 joins a room over federation. It
// holds the room's state as outliers, then dave's join, whose prev_events it
// does not hold, and a message after it. Without the state it learnt
// (StateBefore) the state at and after the join is unknown, and the room
// answers every origin as one it is not in; with it, the ACL (denying
// hs3.example) and the history visibility hold.
func TestStateAfterAGapIsNeverInvented(t *testing.T) {
	b, err := roomgen.NewBuilder(roomgen.BuilderOptions{Version: "10", ServerName: "hs1.example", Seed: 36})
	require.NoError(t, err)
	require.NoError(t, b.StandardSetup())
	alice := b.Creator()
	mustEvent := func(ev roomgen.Event, err error) roomgen.Event { t.Helper(); require.NoError(t, err); return ev }
	mustEvent(b.HistoryVisibility(alice, "joined"))
	mustEvent(b.State(alice, "m.room.server_acl", "", map[string]any{"allow": []string{"*"}, "deny": []string{"hs3.example"}}))
	mustEvent(b.Join("@carol:hs3.example"))
	mustEvent(b.Join("@bob:" + requestingServer))
	mustEvent(b.Message(alice, "joined-only secret"))
	// The room's state before dave's join, as send_join would return it.
	var stateIDs []string
	for _, key := range [][2]string{
		{"m.room.create", ""}, {"m.room.member", alice}, {"m.room.power_levels", ""}, {"m.room.join_rules", ""},
		{"m.room.history_visibility", ""}, {"m.room.server_acl", ""},
		{"m.room.member", "@carol:hs3.example"}, {"m.room.member", "@bob:" + requestingServer},
	} {
		id, ok := b.StateEvent(key[0], key[1])
		require.True(t, ok, "%v", key)
		stateIDs = append(stateIDs, id)
	}
	var stateEvents []roomgen.Event
	for _, ev := range b.Events() {
		if slices.Contains(stateIDs, ev.ID) {
			stateEvents = append(stateEvents, ev)
		}
	}
	daveJoin := mustEvent(b.Join("@dave:hs5.example"))
	after := mustEvent(b.Message(alice, "after dave joined"))

	build := func(t *testing.T, s *Store, withState bool) {
		ctx := context.Background()
		for _, ev := range stateEvents {
			_, err := s.Add(ctx, "10", ev.JSON, fedhistory.AddOptions{Outlier: true})
			require.NoError(t, err)
		}
		opts := fedhistory.AddOptions{}
		if withState {
			opts.StateBefore = stateIDs
		}
		_, err := s.Add(ctx, "10", daveJoin.JSON, opts)
		require.NoError(t, err)
		_, err = s.Add(ctx, "10", after.JSON, fedhistory.AddOptions{})
		require.NoError(t, err)
	}
	target := backfillTarget(b.RoomID(), after.ID, 5)

	t.Run("without the state: nothing is authorised from an invented one", func(t *testing.T) {
		forEachDialect(t, func(t *testing.T, s *Store) {
			build(t, s, false)
			vis, err := s.Visibility(context.Background(), b.RoomID(), requestingServer, []string{daveJoin.ID, after.ID})
			require.NoError(t, err)
			require.Equal(t, []fedhistory.EventVisibility{{}, {}}, vis, "the events after the gap have no known state")
			_, err = s.CurrentState(context.Background(), b.RoomID(), requestingServer)
			require.ErrorIs(t, err, fedhistory.ErrStateUnknown)
			h := newTestHandler(t, s)
			for _, origin := range []string{requestingServer, "hs3.example", "hs5.example"} {
				status, body := serve(h, http.MethodGet, target, origin, "")
				require.Equal(t, http.StatusForbidden, status, "%s: body %s", origin, body)
			}
		})
	})
	t.Run("with the state: the ACL and the visibility hold", func(t *testing.T) {
		forEachDialect(t, func(t *testing.T, s *Store) {
			build(t, s, true)
			h := newTestHandler(t, s)
			status, body := serve(h, http.MethodGet, target, "hs3.example", "")
			require.Equal(t, http.StatusForbidden, status, "the ACL denies hs3: body %s", body)
			status, body = serve(h, http.MethodGet, target, requestingServer, "")
			require.Equal(t, http.StatusOK, status, "body: %s", body)
			require.ElementsMatch(t, []string{string(daveJoin.JSON), string(after.JSON)}, pdusOf(t, body, "pdus"))
		})
	})
}
