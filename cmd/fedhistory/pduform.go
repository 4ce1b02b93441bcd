package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib"

	"github.com/fedhistory/fedhistory/internal/redact"
)

// pduForm is what a receiver can tell, from the bytes alone, of the form in
// which a server served a PDU. The sender hashed the whole event
// (hashes.sha256, the content hash), so a receiver can tell whether the
// content is the sender's; it cannot tell why it is not.
type pduForm string

const (
	// formWhole: the content hash matches the PDU as served. Nothing the
	// sender put in it was withheld; this includes an event whose
	// redaction removes nothing, which reads "whole" even when the server
	// meant to redact it.
	formWhole pduForm = "whole"
	// formRedacted: the content hash does not match, and redacting the PDU
	// with its room version's algorithm changes nothing (unsigned apart,
	// which no hash covers): the server served the event in its redacted
	// form, as it does for events the asker may not see.
	formRedacted pduForm = "redacted"
	// formAltered: the content hash does not match, and the PDU is not in
	// its redacted form either: it was changed in some other way.
	formAltered pduForm = "altered"
	// formNotWhole: the content hash does not match, and the room version
	// is unknown, so redacted and altered cannot be told apart.
	formNotWhole pduForm = "not whole"
	// formUnknown: the PDU carries no content hash that can be read.
	formUnknown pduForm = "no hash"
)

// formHelp documents the forms for the --help of the subcommands that
// print them.
const formHelp = `

Each PDU's form is what its bytes tell: "whole" when its content hash
(hashes.sha256) matches it, so nothing its sender wrote was withheld (an event
whose redaction removes nothing reads whole even if the server redacted it);
"redacted" when the hash does not match and redacting the PDU by its room
version's rules changes nothing, which is how a server serves an event the
asker may not see; "altered" when the hash matches neither; "not whole" when
the hash does not match and the room version is unknown; "no hash" when the
PDU has none. The room version is --room-version, or else the one named by
the m.room.create event of the answer. The content column lists the keys of
each PDU's content, "(empty)" for none; a line starting with "!" after a PDU
says what of it could not be read.`

// pduInfo is what the client subcommands show of one PDU.
type pduInfo struct {
	// ID is the event ID: computed from the PDU for room versions 3 and
	// later, which needs the room version; "" when it cannot be had.
	ID             string
	RoomID         string
	Type           string
	StateKey       *string
	Sender         string
	Depth          int64
	OriginServerTS int64
	// Content is the PDU's content as served, ContentKeys its keys, sorted.
	Content     json.RawMessage
	ContentKeys []string
	Form        pduForm
	// Problems are what was wrong with the PDU's fields, if anything.
	Problems []string
}

// inspectPDU reads one PDU of an answer, untrusted: a field it cannot read
// is noted in Problems, never fatal. version is the room version, or "" when
// unknown (supportedVersion tells which versions are known).
func inspectPDU(version string, pdu []byte) pduInfo {
	var info pduInfo
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(pdu, &fields); err != nil || fields == nil {
		info.Problems = append(info.Problems, "not a JSON object")
		info.Form = formUnknown
		return info
	}
	field := func(name string, into any) {
		raw, ok := fields[name]
		if !ok {
			return
		}
		if err := json.Unmarshal(raw, into); err != nil {
			info.Problems = append(info.Problems, fmt.Sprintf("%s is not %s", name, kindOf(into)))
		}
	}
	field("room_id", &info.RoomID)
	field("type", &info.Type)
	field("sender", &info.Sender)
	if raw, ok := fields["state_key"]; ok {
		var stateKey string
		if err := json.Unmarshal(raw, &stateKey); err != nil {
			info.Problems = append(info.Problems, "state_key is not a string")
		} else {
			info.StateKey = &stateKey
		}
	}
	field("depth", &info.Depth)
	field("origin_server_ts", &info.OriginServerTS)

	info.Content = fields["content"]
	var content map[string]json.RawMessage
	switch err := json.Unmarshal(info.Content, &content); {
	case info.Content == nil:
		info.Problems = append(info.Problems, "no content")
	case err != nil || content == nil:
		info.Problems = append(info.Problems, "content is not an object")
	default:
		info.ContentKeys = make([]string, 0, len(content))
		for key := range content {
			info.ContentKeys = append(info.ContentKeys, key)
		}
		slices.Sort(info.ContentKeys)
	}

	info.ID = eventIDOf(version, pdu, fields)
	info.Form = formOf(version, pdu, fields)
	return info
}

// kindOf names the JSON kind a decoding target wants.
func kindOf(into any) string {
	switch into.(type) {
	case *string:
		return "a string"
	case *int64:
		return "an integer"
	}
	return "a value"
}

// supportedVersion reports whether this tool can compute event IDs and
// redactions for version.
func supportedVersion(version string) bool {
	if !redact.Supported(version) {
		return false
	}
	_, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(version))
	return err == nil
}

// eventIDOf returns the PDU's event ID: the event_id it carries (room
// versions 1 and 2), or the reference hash computed for version (3 and
// later; "" when version is unknown or the PDU cannot be hashed).
func eventIDOf(version string, pdu []byte, fields map[string]json.RawMessage) (id string) {
	if supportedVersion(version) {
		// gomatrixserverlib panics on some malformed input.
		defer func() {
			if recover() != nil {
				id = ""
			}
		}()
		verImpl := gomatrixserverlib.MustGetRoomVersion(gomatrixserverlib.RoomVersion(version))
		if ev, err := verImpl.NewEventFromTrustedJSON(pdu, false); err == nil {
			return ev.EventID()
		}
		return ""
	}
	var carried string
	if json.Unmarshal(fields["event_id"], &carried) == nil {
		return carried
	}
	return ""
}

// formOf judges the PDU's form (see pduForm).
func formOf(version string, pdu []byte, fields map[string]json.RawMessage) pduForm {
	match, ok := contentHashMatches(fields)
	switch {
	case !ok:
		return formUnknown
	case match:
		return formWhole
	case !supportedVersion(version):
		return formNotWhole
	case isOwnRedaction(version, pdu, fields):
		return formRedacted
	default:
		return formAltered
	}
}

// contentHashMatches reports whether the PDU's hashes.sha256 is the SHA-256
// of the canonical JSON of the PDU without unsigned, signatures and hashes
// (server-server API, "Calculating the content hash for an event"). ok is
// false when the PDU carries no readable SHA-256 hash.
func contentHashMatches(fields map[string]json.RawMessage) (match, ok bool) {
	var hashes struct {
		SHA256 string `json:"sha256"`
	}
	if err := json.Unmarshal(fields["hashes"], &hashes); err != nil {
		return false, false
	}
	want, err := decodeHash(hashes.SHA256)
	if err != nil || len(want) != sha256.Size {
		return false, false
	}
	hashed := make(map[string]json.RawMessage, len(fields))
	for name, value := range fields {
		switch name {
		case "unsigned", "signatures", "hashes":
		default:
			hashed[name] = value
		}
	}
	// Sorted keys from encoding/json, then gomatrixserverlib's canonical
	// form (sorted nested keys, no whitespace, escapes decoded), as the
	// sender hashed it. HTML escaping would change strings.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(hashed); err != nil {
		return false, false
	}
	canonical, err := gomatrixserverlib.CanonicalJSON(bytes.TrimSuffix(buf.Bytes(), []byte("\n")))
	if err != nil {
		return false, false
	}
	got := sha256.Sum256(canonical)
	return bytes.Equal(got[:], want), true
}

// decodeHash decodes unpadded base64, as the spec writes hashes, and
// accepts padding and the URL-safe alphabet too, as gomatrixserverlib does.
func decodeHash(s string) ([]byte, error) {
	s = strings.TrimRight(s, "=")
	if b, err := base64.RawStdEncoding.DecodeString(s); err == nil {
		return b, nil
	}
	return base64.RawURLEncoding.DecodeString(s)
}

// isOwnRedaction reports whether redacting the PDU by version's rules
// removes nothing but unsigned: every other top-level key and its value,
// content included, stays as served.
func isOwnRedaction(version string, pdu []byte, fields map[string]json.RawMessage) bool {
	redacted, err := redact.Event(version, pdu)
	if err != nil {
		return false
	}
	var kept map[string]json.RawMessage
	if json.Unmarshal(redacted, &kept) != nil {
		return false
	}
	for name, value := range fields {
		if name == "unsigned" {
			continue
		}
		if other, ok := kept[name]; !ok || !bytes.Equal(compactJSON(value), compactJSON(other)) {
			return false
		}
	}
	return true
}

// compactJSON removes the insignificant whitespace of valid JSON; anything
// else is returned as it is.
func compactJSON(raw json.RawMessage) []byte {
	var buf bytes.Buffer
	if json.Compact(&buf, raw) != nil {
		return raw
	}
	return buf.Bytes()
}

// roomVersionOf returns the room version the answer's PDUs tell: the
// content.room_version of its m.room.create event, "1" when the content
// has none (the spec's default) and its content hash matches. A create
// event whose hash does not match and whose content has no room_version
// tells nothing: redaction removes room_version before version 11.
func roomVersionOf(pdus []json.RawMessage) (string, bool) {
	for _, pdu := range pdus {
		var create struct {
			Type     string  `json:"type"`
			StateKey *string `json:"state_key"`
			Content  struct {
				RoomVersion *string `json:"room_version"`
			} `json:"content"`
		}
		if json.Unmarshal(pdu, &create) != nil || create.Type != "m.room.create" || create.StateKey == nil || *create.StateKey != "" {
			continue
		}
		if create.Content.RoomVersion != nil {
			return *create.Content.RoomVersion, true
		}
		var fields map[string]json.RawMessage
		if json.Unmarshal(pdu, &fields) == nil {
			if match, ok := contentHashMatches(fields); ok && match {
				return "1", true
			}
		}
	}
	return "", false
}

// answerVersion settles the room version to read an answer's PDUs with: the
// --room-version given, or the one roomVersionOf finds. It returns the
// version ("" when unknown) and how it was found, for the output.
func answerVersion(given string, pdus []json.RawMessage) (version, source string) {
	if given != "" {
		return given, "from --room-version"
	}
	version, ok := roomVersionOf(pdus)
	switch {
	case !ok:
		return "", "unknown: no m.room.create event in the answer tells it; give --room-version"
	case !supportedVersion(version):
		return "", fmt.Sprintf("%q, from the m.room.create event, is unknown to this tool", version)
	}
	return version, "from the m.room.create event"
}

// checkRoomVersionFlag checks a --room-version value.
func checkRoomVersionFlag(version string) error {
	if version != "" && !supportedVersion(version) {
		return usageErrorf("--room-version %q is not a room version this tool knows", version)
	}
	return nil
}

// inspectPDUs inspects each PDU of an answer.
func inspectPDUs(version string, pdus []json.RawMessage) []pduInfo {
	infos := make([]pduInfo, len(pdus))
	for i, pdu := range pdus {
		infos[i] = inspectPDU(version, pdu)
	}
	return infos
}

// formCounts says how many of infos came in each form: "3 whole, 1
// redacted".
func formCounts(infos []pduInfo) string {
	counts := make(map[pduForm]int)
	for _, info := range infos {
		counts[info.Form]++
	}
	var parts []string
	for _, form := range []pduForm{formWhole, formRedacted, formAltered, formNotWhole, formUnknown} {
		if counts[form] > 0 || form == formWhole || form == formRedacted {
			parts = append(parts, fmt.Sprintf("%d %s", counts[form], form))
		}
	}
	return strings.Join(parts, ", ")
}

// orUnknown shows a string of an answer, printable (see printable), or
// "?" for an empty one.
func orUnknown(s string) string {
	if s == "" {
		return "?"
	}
	return printable(s)
}

// printable shows a string of an answer on one line of a terminal: as it
// is when every character is printable and none is a space (which would
// break a table's columns), quoted with Go escapes otherwise, so that a
// server cannot break the output's lines or send escape sequences to the
// terminal.
func printable(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) || !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	return s
}

// stateKeyCell shows a state key quoted ("" is the common one), or "-" for
// an event that has none.
func stateKeyCell(stateKey *string) string {
	if stateKey == nil {
		return "-"
	}
	return strconv.Quote(*stateKey)
}

// contentCell lists the content's keys.
func contentCell(info pduInfo) string {
	if info.ContentKeys == nil {
		return "(no object)"
	}
	if len(info.ContentKeys) == 0 {
		return "(empty)"
	}
	keys := make([]string, len(info.ContentKeys))
	for i, key := range info.ContentKeys {
		keys[i] = printable(key)
	}
	return truncate(strings.Join(keys, " "), maxSummaryLen)
}

// printPDUTable prints one line per PDU under a header: depth, event ID,
// type, state key, sender, form and content keys, then any problems.
func printPDUTable(w io.Writer, infos []pduInfo) {
	header := []string{"depth", "event", "type", "state_key", "sender", "form", "content"}
	rows := [][]string{header}
	for _, info := range infos {
		rows = append(rows, []string{
			strconv.FormatInt(info.Depth, 10), orUnknown(info.ID), orUnknown(info.Type), stateKeyCell(info.StateKey),
			orUnknown(info.Sender), string(info.Form), contentCell(info),
		})
	}
	widths := make([]int, len(header))
	for _, row := range rows {
		for i, cell := range row {
			widths[i] = max(widths[i], len([]rune(cell)))
		}
	}
	for r, row := range rows {
		var line strings.Builder
		line.WriteString(" ")
		for i, cell := range row {
			pad := widths[i] - len([]rune(cell))
			line.WriteString(" ")
			if i == 0 { // depth: right-aligned
				line.WriteString(strings.Repeat(" ", pad) + cell)
			} else {
				line.WriteString(cell + strings.Repeat(" ", pad))
			}
			line.WriteString(" ")
		}
		fmt.Fprintln(w, strings.TrimRight(line.String(), " "))
		if r > 0 && len(infos[r-1].Problems) > 0 {
			fmt.Fprintf(w, "  %*s  ! %s\n", widths[0], "", strings.Join(infos[r-1].Problems, "; "))
		}
	}
}

// sortByTypeAndStateKey orders a state: by type, then state key.
func sortByTypeAndStateKey(infos []pduInfo) {
	slices.SortStableFunc(infos, func(a, b pduInfo) int {
		if c := strings.Compare(a.Type, b.Type); c != 0 {
			return c
		}
		return strings.Compare(stateKeyCell(a.StateKey), stateKeyCell(b.StateKey))
	})
}

// sortByDepth orders an auth chain: by depth, then event ID.
func sortByDepth(infos []pduInfo) {
	slices.SortStableFunc(infos, func(a, b pduInfo) int {
		if a.Depth != b.Depth {
			if a.Depth < b.Depth {
				return -1
			}
			return 1
		}
		return strings.Compare(a.ID, b.ID)
	})
}
