package redact_test

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/redact"
)

// What a receiver does with a redacted copy (server-server API, "Validating
// hashes and signatures on received events"): redact what it was given, and
// check the sender's signature over the canonical JSON of that. The sender
// signed the canonical JSON of its own redacted copy ("Adding hashes and
// signatures to outgoing events"). Here the sender's redacted copy is the
// hand-written expectation, so the signature is made independently of the
// code under test.

const (
	signingName = "example.org"
	keyID       = "ed25519:1"
	// placeholders in the inputs, replaced by the real hash and signature
	hashesPlaceholder     = `"hashes":{"sha256":"aGFzaA"}`
	signaturesPlaceholder = `"signatures":{}`
)

var signingKey = ed25519.NewKeyFromSeed([]byte("fedhistory internal/redact tests"))

// canonical is the canonical JSON of the object raw less the given keys.
func canonical(t testing.TB, raw []byte, without ...string) []byte {
	t.Helper()
	var obj map[string]json.RawMessage
	require.NoError(t, json.Unmarshal(raw, &obj))
	for _, k := range without {
		delete(obj, k)
	}
	b, err := json.Marshal(obj)
	require.NoError(t, err)
	c, err := gomatrixserverlib.CanonicalJSON(b)
	require.NoError(t, err)
	return c
}

// signedEvent hashes and signs in (an event) the way its sender would, with
// want as the sender's redacted copy of it. It returns both with the
// placeholders replaced by the content hash and the signature.
func signedEvent(t testing.TB, in, want string) (signedIn, signedWant string) {
	t.Helper()
	require.Equal(t, 1, strings.Count(in, hashesPlaceholder), "input needs one hashes placeholder")
	require.Equal(t, 1, strings.Count(want, hashesPlaceholder), "want needs one hashes placeholder")
	require.Equal(t, 1, strings.Count(in, signaturesPlaceholder), "input needs one signatures placeholder")
	require.Equal(t, 1, strings.Count(want, signaturesPlaceholder), "want needs one signatures placeholder")

	// "Calculating the content hash for an event": the whole event less
	// unsigned, signatures and hashes.
	sum := sha256.Sum256(canonical(t, []byte(in), "unsigned", "signatures", "hashes"))
	hashes := `"hashes":{"sha256":"` + base64.RawStdEncoding.EncodeToString(sum[:]) + `"}`
	in = strings.Replace(in, hashesPlaceholder, hashes, 1)
	want = strings.Replace(want, hashesPlaceholder, hashes, 1)

	// "Signing JSON": the canonical JSON of the redacted copy less
	// signatures and unsigned.
	sig := ed25519.Sign(signingKey, canonical(t, []byte(want), "signatures", "unsigned"))
	signatures := `"signatures":{"` + signingName + `":{"` + keyID + `":"` + base64.RawStdEncoding.EncodeToString(sig) + `"}}`
	in = strings.Replace(in, signaturesPlaceholder, signatures, 1)
	want = strings.Replace(want, signaturesPlaceholder, signatures, 1)
	return in, want
}

// referenceHash is the reference hash of a redacted event ("Calculating the
// reference hash for an event", steps 2-4), encoded as the event ID of room
// version v (fragments/v4-event-ids.md: URL-safe from v4; v3: standard).
func referenceHash(t testing.TB, v int, redacted []byte) string {
	t.Helper()
	sum := sha256.Sum256(canonical(t, redacted, "signatures", "unsigned"))
	if v == 3 {
		return "$" + base64.RawStdEncoding.EncodeToString(sum[:])
	}
	return "$" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// signCase is an event to sign, its redaction by hand, and whether
// gomatrixserverlib's RedactEventJSON gets it right.
type signCase struct {
	name     string
	version  string
	in, want string
	gmslOK   bool
}

func signCases(t testing.TB) []signCase {
	var cases []signCase
	for _, c := range tableCases(t) {
		n, _ := strconv.Atoi(c.version)
		cases = append(cases, signCase{
			name:    c.name,
			version: c.version,
			in:      c.in,
			want:    c.want,
			// RedactEventJSON drops third_party_invite from v11.
			gmslOK: !(n >= 11 && strings.Contains(c.in, `"third_party_invite"`)),
		})
	}
	for _, v := range versionsIn(t, "1-5") {
		// Numbers outside canonical JSON, as rooms v1-v5 allow;
		// RedactEventJSON decodes them into float64 and respells them.
		cases = append(cases, signCase{
			name:    "numbers outside canonical JSON",
			version: v,
			in: `{"content":{"ban":50,"events":{"m.room.name":1.50},"notifications":{"room":7},` +
				`"users":{"@alice:example.org":123456789012345678901}},` + hashesPlaceholder +
				`,"origin_server_ts":1700000000000,"room_id":"!r:example.org","sender":"@alice:example.org",` +
				signaturesPlaceholder + `,"state_key":"","type":"m.room.power_levels","unsigned":{"age":1}}`,
			want: `{"content":{"ban":50,"events":{"m.room.name":1.50},` +
				`"users":{"@alice:example.org":123456789012345678901}},` + hashesPlaceholder +
				`,"origin_server_ts":1700000000000,"room_id":"!r:example.org","sender":"@alice:example.org",` +
				signaturesPlaceholder + `,"state_key":"","type":"m.room.power_levels"}`,
		})
	}
	for _, v := range versionsIn(t, "11-12") {
		// Non-canonical input with escapes around third_party_invite.signed.
		cases = append(cases, signCase{
			name:    "third_party_invite, not canonical",
			version: v,
			in: `{ "type": "m.room.member", "state_key": "@alice:example.org", "sender": "@alice:example.org",
  "content": { "membership": "join", "displayname": "Al\u0069ce",
    "third_party_invite": { "display_name": "alice@example.com",
      "signed": { "mxid": "@alice:example.org", "token": "t\u00f6k", "signatures": { "id.example.org": { "ed25519:0": "c2ln" } } } } },
  "room_id": "!r:example.org", "origin_server_ts": 1700000000000, ` + hashesPlaceholder + `, ` + signaturesPlaceholder + `,
  "unsigned": { "age": 1 } }`,
			want: `{"content":{"membership":"join","third_party_invite":{"signed":{"mxid":"@alice:example.org",` +
				`"signatures":{"id.example.org":{"ed25519:0":"c2ln"}},"token":"t\u00f6k"}}},` + hashesPlaceholder +
				`,"origin_server_ts":1700000000000,"room_id":"!r:example.org","sender":"@alice:example.org",` +
				signaturesPlaceholder + `,"state_key":"@alice:example.org","type":"m.room.member"}`,
		})
	}
	return cases
}

func TestSignatureVerifiesOverRedactedCopy(t *testing.T) {
	pub := signingKey.Public().(ed25519.PublicKey)
	for _, c := range signCases(t) {
		t.Run("v"+c.version+"/"+c.name, func(t *testing.T) {
			in, want := signedEvent(t, c.in, c.want)

			// The full event verifies: the receiver redacts it first.
			got, err := redact.Event(c.version, []byte(in))
			require.NoError(t, err)
			require.NoError(t, gomatrixserverlib.VerifyJSON(signingName, keyID, pub, got))
			require.Equal(t, string(canonical(t, []byte(want))), string(canonical(t, got)))

			// So does the redacted copy we serve, as the receiver redacts
			// it again.
			again, err := redact.Event(c.version, got)
			require.NoError(t, err)
			require.Equal(t, got, again)
			require.NoError(t, gomatrixserverlib.VerifyJSON(signingName, keyID, pub, again))

			// RedactEventJSON, for comparison: the cases it gets wrong do
			// not verify. This is what this package fixes.
			ver, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(c.version))
			require.NoError(t, err)
			theirs, err := ver.RedactEventJSON([]byte(in))
			require.NoError(t, err)
			if c.gmslOK {
				require.NoError(t, gomatrixserverlib.VerifyJSON(signingName, keyID, pub, theirs))
			} else {
				require.Error(t, gomatrixserverlib.VerifyJSON(signingName, keyID, pub, theirs))
			}

			// From room version 3 the event ID is the reference hash, over
			// the redacted event: ours must give the ID the sender
			// computed over its redacted copy.
			n, _ := strconv.Atoi(c.version)
			if n < 3 {
				return
			}
			id := referenceHash(t, n, []byte(want))
			require.Equal(t, id, referenceHash(t, n, got))
			if c.gmslOK {
				require.Equal(t, id, referenceHash(t, n, theirs))
			} else {
				require.NotEqual(t, id, referenceHash(t, n, theirs))
			}
		})
	}
}
