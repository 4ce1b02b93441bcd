package fedhistory

// Event types and history_visibility values the filter needs.
const (
	eventTypeCreate            = "m.room.create"
	eventTypeMember            = "m.room.member"
	eventTypeHistoryVisibility = "m.room.history_visibility"
	eventTypeRedaction         = "m.room.redaction"

	historyVisibilityInvited = "invited"
	historyVisibilityJoined  = "joined"
)

// serverMaySeeEvent applies the history visibility rules of the
// client-server spec ("Room History Visibility", server behaviour) to a
// whole server: the server may see an event when any one of its users may.
// The state judged is the state at the event, which is the state before it
// (vis.Before); two kinds of state event are also judged on the state after
// them (vis.After), as the spec asks:
//
//   - the room's m.room.history_visibility event (state_key ""), visible if
//     the visibility before or after it allows;
//   - the m.room.member event of one of the server's users, visible if the
//     membership before or after it allows, so a server always sees its
//     users' joins, and the leaves that end a joined period. The state
//     after a membership event differs from the state before only in that
//     user's membership, so judging the whole After state is the spec's
//     "that user's membership after it".
func serverMaySeeEvent(ev *Event, vis EventVisibility, server string) bool {
	if historyVisibleToServer(vis.Before, server) {
		return true
	}
	if ev.StateKey == nil {
		return false
	}
	roomHistoryVisibility := ev.Type == eventTypeHistoryVisibility && *ev.StateKey == ""
	ownMembership := ev.Type == eventTypeMember && isUserOfServer(*ev.StateKey, server)
	if roomHistoryVisibility || ownMembership {
		return historyVisibleToServer(vis.After, server)
	}
	return false
}

// historyVisibleToServer reports whether, with the room in state, an event
// may be shown to server:
//
//   - world_readable: to anybody;
//   - shared, and any value the spec does not define, or none at all (the
//     spec's default): yes. The spec allows a shared event to a user who
//     "joined the room at any point after the event was sent"; filterEvents
//     only runs once authorizeRoom has found a user of server joined now,
//     and that user was either joined at the event (which allows in any
//     case) or joined after it. Synapse's filter for servers decides the
//     same way;
//   - invited: if a user of server was joined or invited;
//   - joined: if a user of server was joined.
//
// Memberships of users of other servers never count, even if the store
// returns some.
func historyVisibleToServer(state VisibilityState, server string) bool {
	switch state.HistoryVisibility {
	case historyVisibilityInvited:
		for userID, membership := range state.Memberships {
			if (membership == "join" || membership == "invite") && isUserOfServer(userID, server) {
				return true
			}
		}
		return false
	case historyVisibilityJoined:
		return serverHasJoinedUser(state.Memberships, server)
	default: // world_readable, shared, unset or unknown
		return true
	}
}
