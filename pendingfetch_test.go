package fedhistory_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/sign"
)

// TestTooManyPendingKeyFetchesIs429: a verifier that turns a request away
// because too many wait for key fetches is answered 429 M_LIMIT_EXCEEDED,
// which a peer retries, not 401.
func TestTooManyPendingKeyFetchesIs429(t *testing.T) {
	room := newTestRoom(t, "10", 43)
	room.messages(t, "m", 2)
	refuse := fedhistory.AuthenticatorFunc(func(*http.Request) (string, error) {
		return "", fmt.Errorf("verifying: %w", sign.ErrTooManyPendingKeyFetches)
	})
	h := newHandler(t, load(t, room), func(cfg *fedhistory.Config) { cfg.Authenticator = refuse })
	resp := do(t, h, http.MethodGet, backfillURL(room.id, "3", room.ev(t, "m2")), memberServer, "")
	require.Equal(t, http.StatusTooManyRequests, resp.status, "body: %s", resp.body)
	require.NotEmpty(t, resp.header.Get("Retry-After"))
	var body struct {
		ErrCode      string `json:"errcode"`
		RetryAfterMS int64  `json:"retry_after_ms"`
	}
	require.NoError(t, json.Unmarshal(resp.body, &body))
	require.Equal(t, "M_LIMIT_EXCEEDED", body.ErrCode)
	require.Positive(t, body.RetryAfterMS)
}
