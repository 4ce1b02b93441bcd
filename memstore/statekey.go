package memstore

import (
	"strings"

	"github.com/fedhistory/fedhistory/internal/stateres"
	"github.com/matrix-org/gomatrixserverlib/spec"
)

// stateKey is the (type, state_key) pair that addresses one entry of a room's
// state. It is state resolution's key, so that resolved states need no
// translation, and its order (stateres.StateKey.Compare) is the state maps'.
//
// That order sorts membership keys by the server part of the user ID first,
// so that the memberships of one server's users, which is what every
// visibility and authorisation decision asks for, are one contiguous range of
// the state map.
type stateKey = stateres.StateKey

// firstMemberOf is the smallest membership key of server: the empty localpart
// sorts before every other localpart of that server.
func firstMemberOf(server string) stateKey {
	return stateKey{Type: spec.MRoomMember, StateKey: ":" + server}
}

// isMemberOf reports whether key is the membership key of a user of server.
// The server part of a user ID is everything after its first colon, port
// included, because that is how the spec compares a user's server with a
// request's origin.
func isMemberOf(key stateKey, server string) bool {
	if key.Type != spec.MRoomMember {
		return false
	}
	_, s, found := strings.Cut(key.StateKey, ":")
	return found && s == server
}
