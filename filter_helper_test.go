package fedhistory

import (
	"context"
	"encoding/json"
	"log/slog"
)

// filterEvents runs the handler's filter for origin, outside a request.
func filterEvents(ctx context.Context, store EventStore, roomVersion, roomID, origin string, events []*Event, logger *slog.Logger) ([]json.RawMessage, error) {
	cfg, err := Config{ServerName: "hs1.example", Store: store, Authenticator: AuthenticatorFunc(nil), Logger: logger}.withDefaults()
	if err != nil {
		return nil, err
	}
	req := &request{h: &Handler{cfg: cfg, store: store}, ctx: ctx, origin: origin}
	return req.filter(roomVersion, roomID, events)
}
