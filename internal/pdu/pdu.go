// Package pdu parses a PDU for storage and holds the rules both stores
// (memstore, sqlstore) apply to what they store: which room versions they
// take, the metadata fedhistory.Event carries, and when a redaction applies.
// One definition of each, so the two stores cannot drift apart.
package pdu

import (
	"fmt"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/matrix-org/gomatrixserverlib/spec"

	"github.com/fedhistory/fedhistory"
	"github.com/fedhistory/fedhistory/internal/eventcontent"
)

// Event types the stores treat specially.
const (
	TypeCreate            = spec.MRoomCreate
	TypeMember            = spec.MRoomMember
	TypePowerLevels       = spec.MRoomPowerLevels
	TypeHistoryVisibility = spec.MRoomHistoryVisibility
	TypeServerACL         = "m.room.server_acl"
	TypeRedaction         = spec.MRoomRedaction
)

// supported are the stable room versions of the spec. Versions built on
// pseudonymous sender IDs are refused: the stores map senders to servers by
// their user IDs.
var supported = map[string]bool{
	"1": true, "2": true, "3": true, "4": true, "5": true, "6": true,
	"7": true, "8": true, "9": true, "10": true, "11": true, "12": true,
}

// Supported reports whether the stores take rooms of version.
func Supported(version string) bool { return supported[version] }

// Parsed is one PDU parsed for storage.
type Parsed struct {
	// Event holds the metadata of fedhistory.Event (Redacted, Rejected and
	// Outlier are the store's to set) and JSON, the bytes parsed.
	Event fedhistory.Event
	// PDU is gomatrixserverlib's parse of JSON, which it refers to.
	PDU gomatrixserverlib.PDU
	// AuthEvents are the event's auth_events; in room version 12 the room's
	// create event comes first, as an implicit auth event of every other
	// event (gomatrixserverlib's and Synapse's reading of the spec).
	AuthEvents []string
	// Membership is content.membership of an m.room.member event.
	Membership string
	// HistoryVisibility is content.history_visibility of the room's
	// m.room.history_visibility event (state_key "").
	HistoryVisibility string
}

// IsState reports whether the event is a state event.
func (p *Parsed) IsState() bool { return p.Event.StateKey != nil }

// IsCreate reports whether ev is a room's m.room.create event.
func IsCreate(ev *fedhistory.Event) bool {
	return ev.Type == TypeCreate && ev.StateKey != nil && *ev.StateKey == ""
}

// Parse parses data, a PDU in the federation format of roomVersion, for
// storage. It keeps data (the result refers to it): callers that reuse
// their buffer must pass a copy. It checks the event's structure, not its
// hashes, signatures or authorisation: the stores trust their input.
// Errors wrap fedhistory.ErrUnsupportedRoomVersion or
// fedhistory.ErrInvalidEvent.
func Parse(roomVersion string, data []byte) (parsed *Parsed, err error) {
	return ParseWithID(roomVersion, data, "")
}

// ParseWithID is Parse of an event whose ID the caller already knows (a
// room dump's reader computed it): in room versions 3 and later, where the
// ID is the hash of the event, it is taken as given rather than computed
// again, which is most of the cost of a parse. In versions 1 and 2, where
// the event carries its ID, eventID must be that ID. An empty eventID is
// Parse.
func ParseWithID(roomVersion string, data []byte, eventID string) (parsed *Parsed, err error) {
	if !Supported(roomVersion) {
		return nil, fmt.Errorf("%w: %q", fedhistory.ErrUnsupportedRoomVersion, roomVersion)
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(roomVersion))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", fedhistory.ErrUnsupportedRoomVersion, err)
	}
	// gomatrixserverlib panics on some malformed input (an unparsable room
	// ID, an event it cannot hash); a store must answer with an error.
	defer func() {
		if r := recover(); r != nil {
			parsed, err = nil, fmt.Errorf("%w: %v", fedhistory.ErrInvalidEvent, r)
		}
	}()
	var event gomatrixserverlib.PDU
	if eventID != "" && verImpl.EventIDFormat() != gomatrixserverlib.EventIDFormatV1 {
		event, err = verImpl.NewEventFromTrustedJSONWithEventID(eventID, data, false)
	} else {
		event, err = verImpl.NewEventFromTrustedJSON(data, false)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", fedhistory.ErrInvalidEvent, err)
	}
	if eventID != "" && event.EventID() != eventID {
		return nil, fmt.Errorf("%w: event_id %q, not %q", fedhistory.ErrInvalidEvent, event.EventID(), eventID)
	}
	p := &Parsed{
		PDU: event,
		Event: fedhistory.Event{
			ID: event.EventID(),
			// For room version 12, gomatrixserverlib derives the create
			// event's room ID from its event ID; the event has no room_id.
			RoomID:         event.RoomID().String(),
			Depth:          event.Depth(),
			OriginServerTS: int64(event.OriginServerTS()),
			PrevEvents:     slices.Clone(event.PrevEventIDs()),
			Type:           event.Type(),
			StateKey:       event.StateKey(),
			Sender:         string(event.SenderID()),
			JSON:           data,
		},
		AuthEvents: slices.Clone(event.AuthEventIDs()),
	}
	if p.Event.ID == "" {
		return nil, fmt.Errorf("%w: no event_id", fedhistory.ErrInvalidEvent)
	}
	switch {
	case p.Event.Type == TypeRedaction && redactsInContent(roomVersion):
		p.Event.Redacts = eventcontent.String(event.Content(), "redacts")
	case p.Event.Type == TypeRedaction:
		p.Event.Redacts = event.Redacts()
	case p.IsState() && p.Event.Type == TypeMember:
		p.Membership = eventcontent.String(event.Content(), "membership")
	case p.IsState() && p.Event.Type == TypeHistoryVisibility && *p.Event.StateKey == "":
		p.HistoryVisibility = eventcontent.String(event.Content(), "history_visibility")
	}
	return p, nil
}

// redactsInContent reports whether the room version carries a redaction's
// target in content.redacts instead of the top-level "redacts" key: room
// version 11 moved it there, and version 12 builds on 11.
func redactsInContent(version string) bool {
	return version == "11" || version == "12"
}

// ServerOf returns the server part of a user ID: everything after the first
// colon, port included, which is how the spec compares a user's server
// with another server name. It returns "" for a string without a colon.
func ServerOf(userID string) string {
	_, server, ok := strings.Cut(userID, ":")
	if !ok {
		return ""
	}
	return server
}

// MayRedact reports whether sender holds the power level "redact" in a room
// state whose m.room.create event is create and whose m.room.power_levels
// event is powerLevels (nil when the state has none). create nil means the
// state is unknown or broken: nobody may redact.
//
// It follows the spec's auth rules: in room version 12 the room's creators
// (the create event's sender and content.additional_creators) have a power
// level above every other; without a power_levels event the creator
// (content.creator before room version 11, the create event's sender from
// 11 on) has 100 and everybody else 0; the redact level defaults to 50.
func MayRedact(roomVersion string, create, powerLevels gomatrixserverlib.PDU, sender string) bool {
	if create == nil {
		return false
	}
	verImpl, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(roomVersion))
	if err != nil {
		return false
	}
	if verImpl.PrivilegedCreators() && slices.Contains(gomatrixserverlib.CreatorsFromCreateEvent(create), sender) {
		return true
	}
	if powerLevels == nil {
		var levels gomatrixserverlib.PowerLevelContent
		levels.Defaults()
		creator := string(create.SenderID())
		if !redactsInContent(roomVersion) { // before version 11, which dropped "creator"
			creator = eventcontent.String(create.Content(), "creator")
		}
		if sender == creator {
			return 100 >= levels.Redact
		}
		return levels.UsersDefault >= levels.Redact
	}
	levels, err := gomatrixserverlib.NewPowerLevelContentFromEvent(powerLevels)
	if err != nil {
		// Content that the room version's auth rules could not parse: the
		// event would not have been accepted, so it grants nothing.
		return false
	}
	return levels.UserLevel(spec.SenderID(sender)) >= levels.Redact
}

// RedactionApplies reports whether the spec applies redaction to target
// (see "Redactions" on fedhistory.EventStore): redaction must be an
// m.room.redaction that is not rejected, of the same room as target, whose
// target is not the room's create event; then in room versions 1 and 2 it
// always applies (the auth rules already checked it), and from version 3 on
// when senderMayRedact (MayRedact in the state before the redaction, false
// when that state is unknown) or the redaction's sender and target's sender
// belong to the same server ("Handling redactions" in room version 3).
func RedactionApplies(roomVersion string, redaction *fedhistory.Event, senderMayRedact bool, target *fedhistory.Event) bool {
	switch {
	case redaction.Type != TypeRedaction, redaction.Rejected,
		redaction.Redacts != target.ID, redaction.RoomID != target.RoomID,
		IsCreate(target):
		return false
	case roomVersion == "1" || roomVersion == "2":
		return true
	default:
		server := ServerOf(redaction.Sender)
		return senderMayRedact || (server != "" && server == ServerOf(target.Sender))
	}
}
