// Package sign authenticates Matrix federation requests by their X-Matrix
// signatures (spec: server-server API, "Request Authentication"), and signs
// and publishes keys for outgoing ones.
//
// # Receiving: Verifier
//
// A Verifier checks incoming requests. Build one with the names your server
// answers to, and hand it to the fedhistory handler as its Authenticator:
//
//	verifier, err := sign.NewVerifier(sign.VerifierConfig{ServerNames: []string{"example.org"}})
//	…
//	h, err := fedhistory.New(fedhistory.Config{ServerName: "example.org", Store: store, Authenticator: verifier})
//
// Verifier.Authenticate(r) returns the origin server name of a request
// whose signature is valid, and an error wrapping one of the Err* values
// otherwise. It checks the Authorization headers before reading a byte of
// the body, reads the body (which the caller must bound, as the handler
// does; see Authenticate) and puts it back on r, then finds the origin's
// key and verifies. Called elsewhere than in the handler, map its errors as
// the handler does: ErrTooManyPendingKeyFetches to 429 M_LIMIT_EXCEEDED,
// ErrNotJSON, ErrBadJSON and ErrBodyRead to 400 (413 when the error wraps
// an *http.MaxBytesError), the rest to 401 M_UNAUTHORIZED.
//
// The origin's key is pinned (VerifierConfig.StaticKeys), cached, or
// fetched: from the origin's own /_matrix/key/v2/server, found by the
// spec's server-name resolution (.well-known, SRV records, port 8448), and
// then from VerifierConfig.Notaries. Every request on the internet can name
// any origin, so fetching is fenced in:
//
//   - every connection it makes, to any resolved or redirected address, is
//     checked when dialled against VerifierConfig.DenyNetworks (by default
//     loopback, private and other internal ranges);
//   - answers are bounded in size and every fetch in time
//     (KeyFetchTimeout);
//   - fetched keys are cached until their validity ends (at most 7 days),
//     and a fetch's failure is remembered for FailureCacheTTL, so forged
//     key IDs cannot make us fetch at will, and a failed fetch never
//     discards keys we hold;
//   - requests waiting for a fetch are bounded per claimed origin
//     (MaxPendingPerOrigin) and in all (MaxPendingKeyFetches); requests
//     whose key is pinned or cached never wait.
//
// VerifierConfig.Logger (default slog.Default()) gets a line per failed
// fetch; VerifierConfig.Trace gets callbacks for metrics.
//
// # Sending: SigningKey
//
// GenerateKey makes a signing key, WriteKeyFile and ReadKeyFile keep it in
// Synapse's key file format, SigningKey.SignRequest signs an outgoing
// request, and KeyDocumentHandler serves the key document
// (/_matrix/key/v2/server) other servers verify your requests with.
// ParseAuthorization and XMatrix read and write the header itself.
package sign
