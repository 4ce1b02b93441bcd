// Package sign authenticates Matrix federation requests with X-Matrix
// signatures (spec: server-server API, "Request Authentication") and signs
// outgoing ones.
//
// On the receiving side, a Verifier's Authenticate checks a request's
// X-Matrix Authorization headers, reads and checks its body (the caller
// bounds it), looks up the origin's signing key (pinned, cached, or fetched
// from the origin's /_matrix/key/v2/server or a notary) and returns the
// origin's server name when the signature is valid. It is the
// fedhistory.Authenticator.
//
// On the sending side, SigningKey.SignRequest signs a request and
// KeyDocumentHandler publishes the keys peers need to check it. Keys are
// stored in Synapse's signing key file format (ReadKeyFile, WriteKeyFile).
package sign
