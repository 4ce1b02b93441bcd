package fedhistory_test

import (
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"

	"github.com/gorilla/mux"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/roomgen"
	"github.com/fedhistory/fedhistory/memstore"
	"github.com/fedhistory/fedhistory/sign"
)

// Serve a room's history to another server: a store, an X-Matrix verifier,
// and the handler, mounted under /_matrix/federation/v1/.
func Example() {
	// A room of 20 events created on hs1.example, which a user of
	// hs2.example has joined. A homeserver passes its own EventStore here.
	room, err := roomgen.Generate(roomgen.Options{Events: 20, ServerName: "hs1.example", OtherServers: []string{"hs2.example"}})
	if err != nil {
		log.Fatal(err)
	}
	store := memstore.New()
	for _, ev := range room.Events {
		if _, err := store.Add(room.Version, ev.JSON, fedhistory.AddOptions{}); err != nil {
			log.Fatal(err)
		}
	}

	// hs2.example's signing key. In production the verifier fetches it from
	// hs2.example's key server; here it is pinned.
	hs2Key, err := sign.GenerateKey(nil)
	if err != nil {
		log.Fatal(err)
	}
	verifier, err := sign.NewVerifier(sign.VerifierConfig{
		ServerNames: []string{"hs1.example"},
		StaticKeys:  map[string]map[string]ed25519.PublicKey{"hs2.example": {hs2Key.ID: hs2Key.Public()}},
	})
	if err != nil {
		log.Fatal(err)
	}

	handler, err := fedhistory.New(fedhistory.Config{
		ServerName:    "hs1.example",
		Store:         store,
		Authenticator: verifier,
	})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/_matrix/federation/v1/", handler)

	// hs2.example asks for the 5 newest events.
	newest := room.Events[len(room.Events)-1].ID
	req := httptest.NewRequest(http.MethodGet, "/_matrix/federation/v1/backfill/"+url.PathEscape(room.ID)+
		"?v="+url.QueryEscape(newest)+"&limit=5", nil)
	if err := hs2Key.SignRequest(req, "hs2.example", "hs1.example"); err != nil {
		log.Fatal(err)
	}
	rec := httptest.NewRecorder()
	mux.ServeHTTP(rec, req)

	var txn struct {
		Origin string            `json:"origin"`
		PDUs   []json.RawMessage `json:"pdus"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &txn); err != nil {
		log.Fatal(err)
	}
	fmt.Println(rec.Code, txn.Origin, len(txn.PDUs), "events")
	// Output: 200 hs1.example 5 events
}

// A homeserver that already routes with gorilla/mux adds the endpoints to
// its router in one line.
func ExampleRegister() {
	router := mux.NewRouter().UseEncodedPath()
	store := memstore.New() // your EventStore
	verifier, err := sign.NewVerifier(sign.VerifierConfig{ServerNames: []string{"example.org"}})
	if err != nil {
		log.Fatal(err)
	}
	_, err = fedhistory.Register(router, fedhistory.Config{
		ServerName:    "example.org",
		Store:         store,
		Authenticator: verifier,
	})
	fmt.Println(err)
	// Output: <nil>
}
