// Package sign authenticates Matrix federation requests with X-Matrix
// signatures (spec: server-server API, "Request Authentication") and signs
// outgoing ones.
//
// On the receiving side, a Verifier's Wrap is middleware: it reads and
// checks the body, parses every X-Matrix Authorization header, looks up the
// origin's signing key (pinned, cached, or fetched from the origin's
// /_matrix/key/v2/server or a notary with gomatrixserverlib's fetchers) and
// lets the request through only with a valid signature, the origin then
// available from OriginFromContext. Every failure is answered with a Matrix
// error and the wrapped handler never runs.
//
// On the sending side, SigningKey.SignRequest signs a request and
// KeyDocumentHandler publishes the keys peers need to check it. Keys are
// stored in Synapse's signing key file format (ReadKeyFile, WriteKeyFile).
package sign
