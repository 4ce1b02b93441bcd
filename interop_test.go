package fedhistory_test

import (
	"context"
	"crypto/ed25519"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/fclient"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/sign"
)

// roomKeyRing verifies event signatures with the keys roomgen signed with.
type roomKeyRing struct {
	keyID string
	keys  map[string]ed25519.PublicKey
}

func (k roomKeyRing) VerifyJSONs(_ context.Context, requests []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	results := make([]gomatrixserverlib.VerifyJSONResult, len(requests))
	for i, r := range requests {
		key, ok := k.keys[string(r.ServerName)]
		if !ok {
			results[i].Error = gomatrixserverlib.VerifyJSON(string(r.ServerName), "ed25519:unknown", nil, r.Message)
			continue
		}
		results[i].Error = gomatrixserverlib.VerifyJSON(string(r.ServerName), gomatrixserverlib.KeyID(k.keyID), key, r.Message)
	}
	return results, nil
}

// loopback sends a client's matrix:// requests to srv.
type loopback struct{ base *url.URL }

func (l loopback) RoundTrip(r *http.Request) (*http.Response, error) {
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host = l.base.Scheme, l.base.Host
	return http.DefaultTransport.RoundTrip(out)
}

// TestGomatrixserverlibClientReadsOurAnswers asks every endpoint it has a
// call for (all but /timestamp_to_event) through
// gomatrixserverlib's federation client, as Dendrite would, and checks the
// answers as Dendrite does: /state through CheckStateResponse, which
// rejects a whole response holding a non-state event or a key twice and
// drops events whose signatures fail or whose auth events are missing. The
// topic hs2 may not see is served redacted, and still verifies.
func TestGomatrixserverlibClientReadsOurAnswers(t *testing.T) {
	room := stateRoom(t, "10")
	store := load(t, room)
	key, err := sign.GenerateKey(nil)
	require.NoError(t, err)
	verifier, err := sign.NewVerifier(sign.VerifierConfig{
		ServerNames: []string{ourServer}, DisableKeyFetching: true,
		StaticKeys: map[string]map[string]ed25519.PublicKey{memberServer: {key.ID: key.Public()}},
	})
	require.NoError(t, err)
	h, err := fedhistory.New(fedhistory.Config{ServerName: ourServer, Store: store, Authenticator: verifier})
	require.NoError(t, err)
	srv := httptest.NewServer(h)
	defer srv.Close()
	base, err := url.Parse(srv.URL)
	require.NoError(t, err)
	client := fclient.NewFederationClient([]*fclient.SigningIdentity{{
		ServerName: memberServer, KeyID: gomatrixserverlib.KeyID(key.ID), PrivateKey: key.Private,
	}}, fclient.WithTransport(loopback{base}))
	ctx := t.Context()
	version := gomatrixserverlib.RoomVersion(room.version)
	m1 := room.ev(t, "m1")

	ids, err := client.LookupStateIDs(ctx, memberServer, ourServer, room.id, m1)
	require.NoError(t, err)
	wantState := referenceState(t, room, "m1")
	require.ElementsMatch(t, wantState, ids.StateEventIDs)
	require.ElementsMatch(t, referenceAuthChain(t, room, wantState), ids.AuthEventIDs)

	state, err := client.LookupState(ctx, memberServer, ourServer, room.id, m1, version)
	require.NoError(t, err)
	built := room.b.Room()
	keyRing := roomKeyRing{keyID: built.KeyID, keys: built.ServerKeys}
	userIDForSender := func(_ spec.RoomID, senderID spec.SenderID) (*spec.UserID, error) {
		return spec.NewUserID(string(senderID), true)
	}
	// It returns the auth events first.
	authEvents, stateEvents, err := gomatrixserverlib.CheckStateResponse(ctx, &state, version, keyRing, nil, userIDForSender)
	require.NoError(t, err)
	var checked []string
	for _, ev := range stateEvents {
		checked = append(checked, ev.EventID())
	}
	require.ElementsMatch(t, wantState, checked, "every state event passes the checks, the redacted topic included")
	require.NotEmpty(t, authEvents)

	authChain, err := client.GetEventAuth(ctx, memberServer, ourServer, version, room.id, m1)
	require.NoError(t, err)
	var chainIDs []string
	for _, ev := range authChain.AuthEvents.UntrustedEvents(version) {
		chainIDs = append(chainIDs, ev.EventID())
	}
	slices.Sort(chainIDs)
	require.Equal(t, referenceAuthChain(t, room, []string{m1}), chainIDs)

	txn, err := client.GetEvent(ctx, memberServer, ourServer, m1)
	require.NoError(t, err)
	require.Len(t, txn.PDUs, 1)
	require.Equal(t, spec.ServerName(ourServer), txn.Origin)

	backfilled, err := client.Backfill(ctx, memberServer, ourServer, room.id, 3, []string{m1})
	require.NoError(t, err)
	require.Len(t, backfilled.PDUs, 3)

	// get_missing_events from m1 with nothing known: m1's ancestors, which
	// a backfill from m1 serves too, never m1 itself.
	missing, err := client.LookupMissingEvents(ctx, memberServer, ourServer, room.id,
		fclient.MissingEvents{Limit: 2, LatestEvents: []string{m1}, EarliestEvents: []string{}}, version)
	require.NoError(t, err)
	ancestors, err := client.Backfill(ctx, memberServer, ourServer, room.id, 100, []string{m1})
	require.NoError(t, err)
	var ancestorIDs, missingIDs []string
	for _, raw := range ancestors.PDUs {
		ev, err := gomatrixserverlib.MustGetRoomVersion(version).NewEventFromUntrustedJSON(raw)
		require.NoError(t, err)
		ancestorIDs = append(ancestorIDs, ev.EventID())
	}
	for _, ev := range missing.Events.UntrustedEvents(version) {
		missingIDs = append(missingIDs, ev.EventID())
	}
	require.Len(t, missingIDs, 2, "every event parses under the room version")
	require.NotContains(t, missingIDs, m1)
	require.Subset(t, ancestorIDs, missingIDs)
}
