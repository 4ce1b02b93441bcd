package sign

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"
	"github.com/stretchr/testify/require"
)

func TestGenerateKey(t *testing.T) {
	a, err := GenerateKey(nil)
	require.NoError(t, err)
	b, err := GenerateKey(nil)
	require.NoError(t, err)
	require.Regexp(t, regexp.MustCompile(`^ed25519:a_[A-Za-z0-9]{4}$`), a.ID)
	require.Len(t, a.Private, ed25519.PrivateKeySize)
	require.NotEqual(t, a.Private, b.Private)

	// Deterministic given the randomness source.
	seed := bytes.Repeat([]byte{7}, 64)
	c, err := GenerateKey(bytes.NewReader(seed))
	require.NoError(t, err)
	d, err := GenerateKey(bytes.NewReader(seed))
	require.NoError(t, err)
	require.Equal(t, c, d)

	_, err = GenerateKey(bytes.NewReader(nil))
	require.Error(t, err)
}

func TestKeyFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	k := newKey(t)
	path := filepath.Join(dir, "signing.key")
	require.NoError(t, WriteKeyFile(path, k))

	info, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	read, err := ReadKeyFile(path)
	require.NoError(t, err)
	require.Equal(t, k, read)

	require.ErrorIs(t, WriteKeyFile(path, k), os.ErrExist, "an existing key is never overwritten")
}

func TestParseKeys(t *testing.T) {
	// Seed of all zero bytes, unpadded and padded base64.
	const zeroSeed = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
	keys, err := ParseKeys(strings.NewReader("# comment\n\ned25519 a_one " + zeroSeed + "\ned25519 old_2 " + zeroSeed + "=\n"))
	require.NoError(t, err)
	require.Len(t, keys, 2)
	require.Equal(t, "ed25519:a_one", keys[0].ID)
	require.Equal(t, "ed25519:old_2", keys[1].ID)
	require.Equal(t, ed25519.NewKeyFromSeed(make([]byte, 32)), keys[0].Private)

	for _, bad := range []struct{ text, message string }{
		{"ed25519 a_one", "got 2 fields"},
		{"curve25519 a_one " + zeroSeed, "unsupported key algorithm"},
		{"ed25519 a-one " + zeroSeed, "key version"},
		{"ed25519 a_one !!!", "key seed"},
		{"ed25519 a_one AAAA", "key seed is 3 bytes"},
	} {
		_, err := ParseKeys(strings.NewReader(bad.text))
		require.ErrorContains(t, err, bad.message, bad.text)
	}

	_, err = ReadKeyFile(filepath.Join(t.TempDir(), "missing"))
	require.ErrorIs(t, err, os.ErrNotExist)
	empty := filepath.Join(t.TempDir(), "empty")
	require.NoError(t, os.WriteFile(empty, []byte("# nothing\n"), 0o600))
	_, err = ReadKeyFile(empty)
	require.ErrorContains(t, err, "holds no key")
}

// keyJSONVerifier lets gomatrixserverlib check signatures against one known
// key, the way a server that already has our key would.
type keyJSONVerifier struct {
	server string
	keyID  string
	key    ed25519.PublicKey
}

func (v keyJSONVerifier) VerifyJSONs(_ context.Context, requests []gomatrixserverlib.VerifyJSONRequest) ([]gomatrixserverlib.VerifyJSONResult, error) {
	results := make([]gomatrixserverlib.VerifyJSONResult, len(requests))
	for i, r := range requests {
		results[i].Error = gomatrixserverlib.VerifyJSON(v.server, gomatrixserverlib.KeyID(v.keyID), v.key, r.Message)
	}
	return results, nil
}

func TestSignRequestVerifiesUnderGomatrixserverlib(t *testing.T) {
	k := newKey(t)
	keys := keyJSONVerifier{server: remoteName, keyID: k.ID, key: k.Public()}
	for _, tt := range []struct {
		method, target string
		body           []byte
	}{
		{http.MethodGet, "http://us.example.org" + backfillURI, nil},
		{http.MethodPost, "http://us.example.org" + missingURI, []byte(missingBody)},
		{http.MethodPut, "http://us.example.org/_matrix/federation/v1/send/txn%2F1", []byte(`{"pdus":[],"edus":[{"x":"<&>"}]}`)},
	} {
		t.Run(tt.method, func(t *testing.T) {
			var body io.Reader
			if tt.body != nil {
				body = bytes.NewReader(tt.body)
			}
			r, err := http.NewRequest(tt.method, tt.target, body)
			require.NoError(t, err)
			require.NoError(t, k.SignRequest(r, remoteName, ourName))

			// The body is still there to send, and can be re-read.
			var sent []byte
			if r.Body != nil {
				sent, err = io.ReadAll(r.Body)
				require.NoError(t, err)
			}
			require.Equal(t, string(tt.body), string(sent))
			if tt.body != nil {
				require.Equal(t, "application/json", r.Header.Get("Content-Type"))
				again, err := r.GetBody()
				require.NoError(t, err)
				resent, _ := io.ReadAll(again)
				require.Equal(t, string(tt.body), string(resent))
			}

			// Receive it the way a Dendrite server would.
			incoming := httptest.NewRequest(tt.method, r.URL.RequestURI(), bytes.NewReader(sent))
			incoming.Header = r.Header.Clone()
			fedReq, resp := fclientVerify(incoming, keys)
			require.Equal(t, http.StatusOK, resp, "gomatrixserverlib rejected our signature")
			require.Equal(t, spec.ServerName(remoteName), fedReq.Origin())
		})
	}
}

func TestSignRequestRefusesBadInput(t *testing.T) {
	k := newKey(t)
	r, err := http.NewRequest(http.MethodPost, "http://x"+missingURI, strings.NewReader("not json"))
	require.NoError(t, err)
	require.ErrorIs(t, k.SignRequest(r, remoteName, ourName), ErrNotJSON)

	r, err = http.NewRequest(http.MethodGet, "http://x"+backfillURI, nil)
	require.NoError(t, err)
	require.ErrorContains(t, k.SignRequest(r, `bad"origin`, ourName), "cannot be sent in an X-Matrix header")
	require.ErrorContains(t, k.SignRequest(r, remoteName, ""), "cannot be sent")
	require.Empty(t, r.Header.Get("Authorization"))
}

func TestKeyDocumentHandler(t *testing.T) {
	clock := newFakeClock()
	a, b := newKey(t), newKey(t)
	handler := KeyDocumentHandler(remoteName, []*SigningKey{a, b}, 2*time.Hour, clock.Now)

	w := httptest.NewRecorder()
	handler.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/_matrix/key/v2/server", nil))
	require.Equal(t, http.StatusOK, w.Code)
	require.Equal(t, "application/json", w.Header().Get("Content-Type"))

	var keys gomatrixserverlib.ServerKeys
	require.NoError(t, keys.UnmarshalJSON(w.Body.Bytes()))
	checks, verified := gomatrixserverlib.CheckKeys(remoteName, clock.Now(), keys)
	require.True(t, checks.AllChecksOK, "%+v", checks)
	require.Len(t, verified, 2, "both keys published and both self-signatures valid")
	require.Equal(t, clock.Now().Add(2*time.Hour).UnixMilli(), int64(keys.ValidUntilTS))
	require.Equal(t, []byte(a.Public()), []byte(verified[gomatrixserverlib.KeyID(a.ID)]))

	w = httptest.NewRecorder()
	handler.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/_matrix/key/v2/server", nil))
	require.Equal(t, http.StatusMethodNotAllowed, w.Code)
	require.Contains(t, w.Body.String(), "M_UNRECOGNIZED")

	require.Panics(t, func() { KeyDocumentHandler("", []*SigningKey{a}, 0, nil) })
	require.Panics(t, func() { KeyDocumentHandler(remoteName, nil, 0, nil) })
}
