package mautrix_test

import (
	"context"
	"crypto/ed25519"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.mau.fi/util/exhttp"
	"maunium.net/go/mautrix"
	"maunium.net/go/mautrix/federation"
	"maunium.net/go/mautrix/id"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/fedhistory/fedhistory/sign"
)

// TestMautrixReadsOurAnswers asks every endpoint mautrix-go's federation
// client has a call for — all seven — of the real handler, as a server of
// the room, and checks that the client parses each answer into what the
// store holds.
func TestMautrixReadsOurAnswers(t *testing.T) {
	ctx := context.Background()
	room, err := roomgen.Generate(roomgen.Options{Events: 30, ServerName: ourName, OtherServers: []string{remoteName}})
	require.NoError(t, err)
	store := memstore.New()
	for _, ev := range room.Events {
		_, err := store.Add(room.Version, ev.JSON, fedhistory.AddOptions{})
		require.NoError(t, err)
	}
	newest := room.Events[len(room.Events)-1].ID

	theirKey := federation.GenerateSigningKey()
	asOurs := &sign.SigningKey{ID: string(theirKey.ID), Private: theirKey.Priv}
	verifier, err := sign.NewVerifier(sign.VerifierConfig{
		ServerNames:        []string{ourName},
		StaticKeys:         map[string]map[string]ed25519.PublicKey{remoteName: {asOurs.ID: asOurs.Public()}},
		DisableKeyFetching: true,
	})
	require.NoError(t, err)
	handler, err := fedhistory.New(fedhistory.Config{ServerName: ourName, Store: store, Authenticator: verifier})
	require.NoError(t, err)
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	base, err := url.Parse(srv.URL)
	require.NoError(t, err)
	client := federation.NewClient(remoteName, theirKey, nil, exhttp.ClientSettings{})
	client.HTTP.Transport = loopbackTransport{base: base}
	roomID, eventID := id.RoomID(room.ID), id.EventID(newest)

	backfill, err := client.Backfill(ctx, &federation.ReqBackfill{ServerName: ourName, RoomID: roomID, Limit: 5, BackfillFrom: []id.EventID{eventID}})
	require.NoError(t, err)
	require.Len(t, backfill.PDUs, 5)
	require.Equal(t, ourName, backfill.Origin)

	missing, err := client.GetMissingEvents(ctx, &federation.ReqGetMissingEvents{
		ServerName: ourName, RoomID: roomID, EarliestEvents: []id.EventID{}, LatestEvents: []id.EventID{eventID}, Limit: 3,
	})
	require.NoError(t, err)
	require.Len(t, missing.Events, 3)

	wantState, err := store.StateBefore(ctx, room.ID, newest)
	require.NoError(t, err)
	wantChain, err := store.AuthChain(ctx, room.ID, wantState)
	require.NoError(t, err)
	stateIDs, err := client.GetStateIDs(ctx, ourName, roomID, eventID)
	require.NoError(t, err)
	require.ElementsMatch(t, wantState, idStrings(stateIDs.PDUs))
	require.ElementsMatch(t, wantChain, idStrings(stateIDs.AuthChain))

	state, err := client.GetState(ctx, ourName, roomID, eventID)
	require.NoError(t, err)
	require.Len(t, state.PDUs, len(wantState))
	require.Len(t, state.AuthChain, len(wantChain))

	wantAuth, err := store.AuthChain(ctx, room.ID, []string{newest})
	require.NoError(t, err)
	auth, err := client.GetEventAuthChain(ctx, ourName, roomID, eventID)
	require.NoError(t, err)
	require.Len(t, auth.AuthChain, len(wantAuth))

	event, err := client.GetEvent(ctx, ourName, eventID)
	require.NoError(t, err)
	require.Len(t, event.PDUs, 1)

	events, err := store.Events(ctx, room.ID, []string{newest})
	require.NoError(t, err)
	at := time.UnixMilli(events[0].OriginServerTS)
	want, err := store.EventAtTimestamp(ctx, room.ID, events[0].OriginServerTS, fedhistory.Backward)
	require.NoError(t, err)
	jump, err := client.TimestampToEvent(ctx, ourName, roomID, at, mautrix.DirectionBackward)
	require.NoError(t, err)
	require.Equal(t, id.EventID(want.ID), jump.EventID)
	require.Equal(t, want.OriginServerTS, jump.Timestamp.UnixMilli())
}

func idStrings(ids []id.EventID) []string {
	out := make([]string, len(ids))
	for i, e := range ids {
		out[i] = string(e)
	}
	return out
}
