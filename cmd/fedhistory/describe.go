package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/matrix-org/gomatrixserverlib"
)

// eventSummary is what the demo shows of one PDU.
type eventSummary struct {
	ID, Type, Sender string
	StateKey         *string
	Depth            int64
	OriginServerTS   int64
	PrevEvents       []string
	Content          json.RawMessage
	// Redacted: the content hash no longer matches, which is how a
	// receiver tells that the sender served the event redacted.
	Redacted bool
}

// summarizeEvent parses pdu as untrusted JSON of its room version, as a
// receiving server would.
func summarizeEvent(version gomatrixserverlib.IRoomVersion, pdu json.RawMessage) (eventSummary, error) {
	ev, err := version.NewEventFromUntrustedJSON(pdu)
	if err != nil {
		return eventSummary{}, fmt.Errorf("parsing a PDU of the answer: %w", err)
	}
	return eventSummary{
		ID:             ev.EventID(),
		Type:           ev.Type(),
		Sender:         string(ev.SenderID()),
		StateKey:       ev.StateKey(),
		Depth:          ev.Depth(),
		OriginServerTS: int64(ev.OriginServerTS()),
		PrevEvents:     ev.PrevEventIDs(),
		Content:        ev.Content(),
		Redacted:       ev.Redacted(),
	}, nil
}

// maxSummaryLen bounds the content column.
const maxSummaryLen = 72

// Summary describes the event's content in a few words: a message's body,
// the gist of a state event.
func (e eventSummary) Summary() string {
	var content map[string]any
	_ = json.Unmarshal(e.Content, &content) // a non-object content summarises as empty
	text := func(key string) string {
		s, _ := content[key].(string)
		return s
	}
	var summary string
	switch e.Type {
	case "m.room.message":
		if body := text("body"); body != "" {
			summary = fmt.Sprintf("%q", body)
		}
	case "m.room.member":
		if e.StateKey != nil {
			summary = *e.StateKey + " → " + text("membership")
		}
	case "m.room.history_visibility":
		summary = "history_visibility=" + text("history_visibility")
	case "m.room.join_rules":
		summary = "join_rule=" + text("join_rule")
	case "m.room.create":
		summary = "room_version=" + text("room_version")
	case "m.room.server_acl":
		summary = fmt.Sprintf("allow=%s deny=%s", listOf(content["allow"]), listOf(content["deny"]))
	case "m.room.power_levels":
		users, _ := content["users"].(map[string]any)
		names := make([]string, 0, len(users))
		for user, level := range users {
			names = append(names, fmt.Sprintf("%s:%v", user, level))
		}
		slices.Sort(names)
		summary = "users " + strings.Join(names, " ")
	default:
		if e.StateKey != nil && *e.StateKey != "" {
			summary = "state_key=" + *e.StateKey
		}
	}
	return truncate(summary, maxSummaryLen)
}

func listOf(v any) string {
	items, _ := v.([]any)
	parts := make([]string, 0, len(items))
	for _, item := range items {
		parts = append(parts, fmt.Sprint(item))
	}
	return "[" + strings.Join(parts, ",") + "]"
}

// truncate shortens s to at most n runes, marking the cut.
func truncate(s string, n int) string {
	runes := []rune(s)
	if len(runes) <= n {
		return s
	}
	return string(runes[:n-1]) + "…"
}
