package fedhistory

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// ErrForbidden is wrapped by every error that means "the requesting server
// may not read this room's history". The handler answers it with 403
// M_FORBIDDEN; forbiddenReason gives the message for the client.
var ErrForbidden = errors.New("fedhistory: forbidden")

// Client-facing reasons of the forbidden errors. "Not in the room" is also
// the answer for a room this server does not hold, so that a probe cannot
// tell the two apart.
const (
	reasonBannedByACL = "server is banned by the room's server ACL"
	reasonNotInRoom   = "server is not in the room"
)

// forbiddenError is an ErrForbidden with a reason that may be shown to the
// requesting server.
type forbiddenError struct {
	reason string
}

func (e *forbiddenError) Error() string { return ErrForbidden.Error() + ": " + e.reason }

func (e *forbiddenError) Unwrap() error { return ErrForbidden }

// forbiddenReason returns the client-facing reason of an error wrapping
// ErrForbidden ("server is not in the room", say), or "forbidden" for an
// ErrForbidden that carries none.
func forbiddenReason(err error) string {
	var forbidden *forbiddenError
	if errors.As(err, &forbidden) {
		return forbidden.reason
	}
	return "forbidden"
}

// authorizeRoom decides whether origin, an authenticated server name, may
// read roomID's history at all, from the room's current state:
//
//   - some user of origin must be joined to the room now (a server that
//     has left, or was only ever invited, gets nothing);
//   - the room's server ACL must admit origin (ServerACLAllows).
//
// Both failures return an error wrapping ErrForbidden. A room the store
// does not hold gives the very same error as a room origin is not in, so the
// endpoints are no oracle for which rooms exist here. Any other store error
// is returned wrapped, and is not ErrForbidden.
//
// The ACL is checked first, as the authorisation issue orders it (and as
// Synapse does, before any other work). Its denial names the ACL only to a
// server that is in the room: a server outside it always hears "not in the
// room", because "banned by the ACL" would tell it that the room exists.
// Either failure alone denies; the wording never changes the outcome.
func authorizeRoom(ctx context.Context, store EventStore, roomID, origin string) error {
	state, err := store.CurrentState(ctx, roomID, origin)
	if errors.Is(err, ErrRoomNotFound) || errors.Is(err, ErrStateUnknown) {
		// A room whose current state is unknown is never authorised from an
		// invented one: it answers as a room the origin is not in.
		return &forbiddenError{reason: reasonNotInRoom}
	}
	if err != nil {
		return fmt.Errorf("fedhistory: reading the current state of %s: %w", roomID, err)
	}
	if state == nil {
		// A store bug; knowing nothing about the room, deny.
		return &forbiddenError{reason: reasonNotInRoom}
	}
	aclAllows := ServerACLAllows(state.ServerACL, origin)
	inRoom := serverHasJoinedUser(state.Memberships, origin)
	switch {
	case !aclAllows && inRoom:
		return &forbiddenError{reason: reasonBannedByACL}
	case !aclAllows, !inRoom:
		return &forbiddenError{reason: reasonNotInRoom}
	}
	return nil
}

// authorise applies the room-level rules (authorizeRoom) for the request's
// origin and returns the room's version, which the filter's redaction
// algorithm needs.
func (req *request) authorise(roomID string) (roomVersion string, err error) {
	end := req.stage("authorise")
	defer func() { end(err) }()
	if err := authorizeRoom(req.ctx, req.h.store, roomID, req.origin); err != nil {
		return "", err
	}
	return req.h.store.RoomVersion(req.ctx, roomID)
}

// serverHasJoinedUser reports whether some user of server has membership
// "join" in memberships. The store is asked only for server's users, but
// each user ID is checked again so that a store returning too much cannot
// let another server's members vouch for server.
func serverHasJoinedUser(memberships map[string]string, server string) bool {
	for userID, membership := range memberships {
		if membership == "join" && isUserOfServer(userID, server) {
			return true
		}
	}
	return false
}

// isUserOfServer reports whether userID ("@localpart:server") belongs to
// server. The server part is everything after the first ':' (a localpart
// cannot contain one; a server name can, before its port) and must equal
// server exactly: server names are case-sensitive and the port is part of
// the name, so "@a:example.org" is not a user of "example.org:8448".
func isUserOfServer(userID, server string) bool {
	if !strings.HasPrefix(userID, "@") {
		return false
	}
	_, userServer, found := strings.Cut(userID, ":")
	return found && userServer == server
}
