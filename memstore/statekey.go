package memstore

import (
	"cmp"
	"strings"
)

const typeMember = "m.room.member"

// stateKey is the (type, state_key) pair that addresses one entry of a room's
// state.
//
// Membership keys sort by the server part of the user ID first, so that the
// memberships of one server's users, which is what every visibility and
// authorisation decision asks for, are one contiguous range of the state map.
type stateKey struct {
	eventType string
	stateKey  string
}

// splitUserID splits a user ID at its first ':' into the localpart (with
// sigil) and the server name. The server name is everything after that colon,
// port included, because that is how the spec compares a user's server with
// a request's origin. A state key without a colon has no server part.
func splitUserID(userID string) (local, server string, hasServer bool) {
	return strings.Cut(userID, ":")
}

func (k stateKey) compare(other stateKey) int {
	if c := strings.Compare(k.eventType, other.eventType); c != 0 {
		return c
	}
	if k.eventType != typeMember {
		return strings.Compare(k.stateKey, other.stateKey)
	}
	kLocal, kServer, kHasServer := splitUserID(k.stateKey)
	oLocal, oServer, oHasServer := splitUserID(other.stateKey)
	return cmp.Or(
		// Malformed keys without a server sort first, out of every server's range.
		compareBool(kHasServer, oHasServer),
		strings.Compare(kServer, oServer),
		strings.Compare(kLocal, oLocal),
	)
}

func compareBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	default:
		return -1
	}
}

// firstMemberOf is the smallest membership key of server: the empty localpart
// sorts before every other localpart of that server.
func firstMemberOf(server string) stateKey {
	return stateKey{eventType: typeMember, stateKey: ":" + server}
}

// isMemberOf reports whether k is the membership key of a user of server.
func (k stateKey) isMemberOf(server string) bool {
	if k.eventType != typeMember {
		return false
	}
	_, s, found := strings.Cut(k.stateKey, ":")
	return found && s == server
}
