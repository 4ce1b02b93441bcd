// Package fedhistory serves the Matrix federation endpoints through which
// other servers read a room's history, from a homeserver's own database:
//
//	GET  /_matrix/federation/v1/backfill/{roomId}             walk back from events
//	POST /_matrix/federation/v1/get_missing_events/{roomId}   fill a gap
//	GET  /_matrix/federation/v1/state_ids/{roomId}            the state before an event, as IDs
//	GET  /_matrix/federation/v1/state/{roomId}                … as events
//	GET  /_matrix/federation/v1/event_auth/{roomId}/{eventId} an event's auth chain
//	GET  /_matrix/federation/v1/event/{eventId}               one event
//	GET  /_matrix/federation/v1/timestamp_to_event/{roomId}   the event nearest a time
//
// # Mounting
//
// A homeserver implements EventStore (or uses package memstore or sqlstore),
// builds a Handler with New, and mounts it:
//
//	verifier, err := sign.NewVerifier(sign.VerifierConfig{ServerNames: []string{"example.org"}})
//	…
//	h, err := fedhistory.New(fedhistory.Config{ServerName: "example.org", Store: store, Authenticator: verifier})
//	…
//	mux.Handle("/_matrix/federation/v1/", h)
//
// Handler.Routes gives one http.ServeMux pattern and handler per route
// instead, and Register adds the routes to a gorilla/mux router. Every
// Config field but ServerName, Store and Authenticator has a safe, documented
// default.
//
// # The store contract
//
// EventStore is four batched methods: a room's version, events by ID, the
// current server ACL and memberships of one server's users, and the
// visibility state before and after a batch of events. Everything else is
// an optional capability, discovered by type assertion in the manner of
// io/fs: ErasureStore (erased senders are served redacted), BackfillWalker
// and MissingEventsWalker (walk in the database; WalkBackfill and
// WalkMissingEvents walk any store), StateStore (/state_ids, /state,
// /event_auth; StateIDsStore answers /state_ids' two questions at once),
// EventLookupStore (/event) and TimestampStore
// (/timestamp_to_event). Handler.Endpoints says which routes a store gets.
// Package storetest checks a store against the contract, the way
// testing/fstest.TestFS checks a file system.
//
// # The security model
//
// Every other server is untrusted. Each request passes, in order:
//
//   - authentication: the Authenticator (a *sign.Verifier checks X-Matrix
//     signatures, fetching keys only through a dialer that refuses private
//     networks), with the body bounded in size and time before it is read;
//   - load limits: a few running and a bounded queue per authenticated
//     origin, a cap on requests running at once, a deadline on each;
//   - authorisation from the room's current state: the server ACL, and a
//     joined user of the origin now (a room we do not hold, or whose state
//     we do not know, answers as a room the origin is not in);
//   - one filter for every PDU of every endpoint: what the origin may not
//     see under history visibility at that event, what a redaction applies
//     to, what an erased user sent, and anything whose state is unknown, is
//     served in the room version's redacted form (keys removed from the
//     stored bytes, never re-encoded), so the DAG stays linkable and nothing
//     leaks; rejected events are never served.
//
// Stores never invent state (see EventStore): an event after a gap has
// unknown state unless the homeserver supplies it (AddOptions.StateBefore).
// Where the spec is silent or servers disagree, the code says which rule it
// follows (the spec, an issue's decision, or Synapse).
//
// # Operating it
//
// Config.Trace receives callbacks for every request, stage, store call and
// limiter decision; packages prom and otel turn them into Prometheus
// metrics and OpenTelemetry spans. Config.Logger gets one structured line
// per failure, the same failure at most once per interval.
package fedhistory
