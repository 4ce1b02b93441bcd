package redact

// The redaction algorithm of each room version, transcribed from the spec
// (content/rooms/). Five algorithms cover room versions 1 to 12:
//
//	room versions  algorithm                        spec text
//	1–5            v1                               fragments/v1-redactions.md (v1.md…v5.md include it)
//	6, 7           v6: m.room.aliases loses its     fragments/v6-redactions.md (v6.md, v7.md)
//	               special case
//	8              v8: m.room.join_rules keeps      written out in v8.md ("The full redaction
//	               allow                            algorithm follows.")
//	9, 10          v9: m.room.member keeps          fragments/v9-redactions.md (v9.md, v10.md)
//	               join_authorised_via_users_server
//	11, 12         v11: origin, membership and      fragments/v11-redactions.md (v11.md, v12.md;
//	               prev_state no longer kept; all   v12 changes nothing in redaction)
//	               of m.room.create's content kept;
//	               power_levels keeps invite;
//	               m.room.redaction keeps redacts;
//	               m.room.member keeps
//	               third_party_invite.signed
//
// No algorithm keeps the top-level "unsigned" or "redacts": neither is in any
// version's list (before room version 11 "redacts" is a top-level key of
// m.room.redaction events and is removed with the rest; from 11 it lives in
// content, where the v11 algorithm keeps it).

// algorithm is one room version's redaction algorithm.
type algorithm struct {
	// name names the spec text the algorithm comes from, for error messages.
	name string
	// top lists the top-level keys kept ("strip off any keys not in the
	// following list"). It always holds "type" and "content".
	top []string
	// content holds, per event type, the keys kept in content ("The content
	// object must also be stripped of all keys, unless it is one of the
	// following event types"). Every other event type keeps no content key.
	content map[string]contentRule
}

// contentRule is what one event type keeps of its content.
type contentRule struct {
	// all keeps the whole content, byte for byte (m.room.create from v11:
	// "allows all keys").
	all bool
	// keys lists the content keys kept.
	keys []string
	// thirdPartyInviteSigned keeps content.third_party_invite with only its
	// "signed" key (m.room.member from v11: "Additionally, it allows the
	// `signed` key of the `third_party_invite` key").
	thirdPartyInviteSigned bool
}

// Event types with a content rule in some version.
const (
	typeMember            = "m.room.member"
	typeCreate            = "m.room.create"
	typeJoinRules         = "m.room.join_rules"
	typePowerLevels       = "m.room.power_levels"
	typeAliases           = "m.room.aliases"
	typeHistoryVisibility = "m.room.history_visibility"
	typeRedaction         = "m.room.redaction"
)

// Keys the algorithms inspect.
const (
	keyType             = "type"
	keyContent          = "content"
	keyThirdPartyInvite = "third_party_invite"
	keySigned           = "signed"
)

// topV1 is the top-level list of fragments/v1-redactions.md, repeated
// unchanged by v6-redactions.md, the v8 page and v9-redactions.md.
var topV1 = []string{
	"event_id",
	keyType,
	"room_id",
	"sender",
	"state_key",
	keyContent,
	"hashes",
	"signatures",
	"depth",
	"prev_events",
	"prev_state",
	"auth_events",
	"origin",
	"origin_server_ts",
	"membership",
}

// topV11 is the top-level list of fragments/v11-redactions.md: topV1 less
// prev_state, origin and membership ("The top-level origin, membership, and
// prev_state properties are no longer protected from redaction", v11.md).
var topV11 = []string{
	"event_id",
	keyType,
	"room_id",
	"sender",
	"state_key",
	keyContent,
	"hashes",
	"signatures",
	"depth",
	"prev_events",
	"auth_events",
	"origin_server_ts",
}

// powerLevelsV1 is what m.room.power_levels keeps from v1 to v10.
var powerLevelsV1 = []string{"ban", "events", "events_default", "kick", "redact", "state_default", "users", "users_default"}

var (
	// fragments/v1-redactions.md
	algV1 = &algorithm{
		name: "v1 redaction algorithm",
		top:  topV1,
		content: map[string]contentRule{
			typeMember:            {keys: []string{"membership"}},
			typeCreate:            {keys: []string{"creator"}},
			typeJoinRules:         {keys: []string{"join_rule"}},
			typePowerLevels:       {keys: powerLevelsV1},
			typeAliases:           {keys: []string{"aliases"}},
			typeHistoryVisibility: {keys: []string{"history_visibility"}},
		},
	}

	// fragments/v6-redactions.md: "All significant meaning for
	// m.room.aliases has been removed from the redaction algorithm" (v6.md).
	algV6 = &algorithm{
		name: "v6 redaction algorithm",
		top:  topV1,
		content: map[string]contentRule{
			typeMember:            {keys: []string{"membership"}},
			typeCreate:            {keys: []string{"creator"}},
			typeJoinRules:         {keys: []string{"join_rule"}},
			typePowerLevels:       {keys: powerLevelsV1},
			typeHistoryVisibility: {keys: []string{"history_visibility"}},
		},
	}

	// v8.md, "Redactions": "m.room.join_rules events now keep allow".
	algV8 = &algorithm{
		name: "v8 redaction algorithm",
		top:  topV1,
		content: map[string]contentRule{
			typeMember:            {keys: []string{"membership"}},
			typeCreate:            {keys: []string{"creator"}},
			typeJoinRules:         {keys: []string{"join_rule", "allow"}},
			typePowerLevels:       {keys: powerLevelsV1},
			typeHistoryVisibility: {keys: []string{"history_visibility"}},
		},
	}

	// fragments/v9-redactions.md: "m.room.member events now keep
	// join_authorised_via_users_server" (v9.md).
	algV9 = &algorithm{
		name: "v9 redaction algorithm",
		top:  topV1,
		content: map[string]contentRule{
			typeMember:            {keys: []string{"membership", "join_authorised_via_users_server"}},
			typeCreate:            {keys: []string{"creator"}},
			typeJoinRules:         {keys: []string{"join_rule", "allow"}},
			typePowerLevels:       {keys: powerLevelsV1},
			typeHistoryVisibility: {keys: []string{"history_visibility"}},
		},
	}

	// fragments/v11-redactions.md.
	algV11 = &algorithm{
		name: "v11 redaction algorithm",
		top:  topV11,
		content: map[string]contentRule{
			typeMember:            {keys: []string{"membership", "join_authorised_via_users_server"}, thirdPartyInviteSigned: true},
			typeCreate:            {all: true},
			typeJoinRules:         {keys: []string{"join_rule", "allow"}},
			typePowerLevels:       {keys: []string{"ban", "events", "events_default", "invite", "kick", "redact", "state_default", "users", "users_default"}},
			typeHistoryVisibility: {keys: []string{"history_visibility"}},
			typeRedaction:         {keys: []string{"redacts"}},
		},
	}
)

// algorithms maps each room version to its redaction algorithm.
var algorithms = map[string]*algorithm{
	"1":  algV1,
	"2":  algV1,
	"3":  algV1,
	"4":  algV1,
	"5":  algV1,
	"6":  algV6,
	"7":  algV6,
	"8":  algV8,
	"9":  algV9,
	"10": algV9,
	"11": algV11,
	"12": algV11,
}
