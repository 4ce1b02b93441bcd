package main

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/redact"
	"github.com/fedhistory/fedhistory/internal/roomgen"
)

// sampleRoom generates a small room of version, with messages of 200 bytes.
func sampleRoom(tb testing.TB, version string) *roomgen.Room {
	tb.Helper()
	room, err := roomgen.Generate(roomgen.Options{Version: version, Events: 8, Seed: 1, MessageBytes: 200})
	require.NoError(tb, err)
	return room
}

// eventOfType returns the first event of room with the type.
func eventOfType(tb testing.TB, room *roomgen.Room, typ string) roomgen.Event {
	tb.Helper()
	for _, ev := range room.Events {
		var fields struct {
			Type string `json:"type"`
		}
		require.NoError(tb, json.Unmarshal(ev.JSON, &fields))
		if fields.Type == typ {
			return ev
		}
	}
	tb.Fatalf("no %s in the room", typ)
	return roomgen.Event{}
}

// withTopLevel returns pdu with one top-level key set to value.
func withTopLevel(tb testing.TB, pdu []byte, key string, value any) []byte {
	tb.Helper()
	var fields map[string]json.RawMessage
	require.NoError(tb, json.Unmarshal(pdu, &fields))
	if value == nil {
		delete(fields, key)
	} else {
		encoded, err := json.Marshal(value)
		require.NoError(tb, err)
		fields[key] = encoded
	}
	out, err := json.Marshal(fields)
	require.NoError(tb, err)
	return out
}

func TestInspectPDUTellsTheForm(t *testing.T) {
	for _, version := range []string{"1", "10", "11", "12"} {
		t.Run("room version "+version, func(t *testing.T) {
			room := sampleRoom(t, version)
			message := eventOfType(t, room, "m.room.message")
			redacted, err := redact.Event(version, message.JSON)
			require.NoError(t, err)
			altered := bytes.Replace(message.JSON, []byte(`"msgtype":"m.text"`), []byte(`"msgtype":"m.notice"`), 1)
			require.NotEqual(t, message.JSON, altered)

			tests := []struct {
				name    string
				version string
				pdu     []byte
				want    pduForm
			}{
				{"as sent", version, message.JSON, formWhole},
				{"as sent, version unknown", "", message.JSON, formWhole},
				{"unsigned added, which no hash covers", version, withTopLevel(t, message.JSON, "unsigned", map[string]int{"age": 5}), formWhole},
				{"redacted", version, redacted, formRedacted},
				{"redacted, with unsigned", version, withTopLevel(t, redacted, "unsigned", map[string]int{"age": 5}), formRedacted},
				{"redacted, version unknown", "", redacted, formNotWhole},
				{"content changed", version, altered, formAltered},
				{"content changed, version unknown", "", altered, formNotWhole},
				{"no hashes", version, withTopLevel(t, message.JSON, "hashes", nil), formUnknown},
				{"a hash of the wrong size", version, withTopLevel(t, message.JSON, "hashes", map[string]string{"sha256": "AAAA"}), formUnknown},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					info := inspectPDU(tt.version, tt.pdu)
					require.Equal(t, tt.want, info.Form)
					require.Equal(t, "m.room.message", info.Type)
					require.Nil(t, info.StateKey)
					require.Empty(t, info.Problems)
					hashesKept := bytes.Contains(tt.pdu, []byte(`"hashes"`)) && tt.name != "a hash of the wrong size"
					switch {
					case version == "1":
						require.Equal(t, message.ID, info.ID, "version 1 carries the ID")
					case tt.version == "":
						require.Empty(t, info.ID, "no ID without the version")
					case hashesKept:
						require.Equal(t, message.ID, info.ID, "the ID, computed, covers what redaction keeps: the hashes, not the content")
					default:
						require.NotEqual(t, message.ID, info.ID, "the ID covers the hashes")
					}
				})
			}
			require.Equal(t, []string{"body", "msgtype"}, inspectPDU(version, message.JSON).ContentKeys)
			require.Equal(t, []string{}, inspectPDU(version, redacted).ContentKeys, "a redacted message's content is empty")
		})
	}
}

func TestInspectPDUNotesWhatItCannotRead(t *testing.T) {
	tests := []struct {
		name string
		pdu  string
		want []string
	}{
		{"not JSON", `{"type":`, []string{"not a JSON object"}},
		{"an array", `[1, 2]`, []string{"not a JSON object"}},
		{"null", `null`, []string{"not a JSON object"}},
		{"fields of the wrong kind", `{"type": 5, "state_key": [], "depth": "deep", "content": "text"}`,
			[]string{"type is not a string", "state_key is not a string", "depth is not an integer", "content is not an object"}},
		{"no content", `{"type": "m.room.message"}`, []string{"no content"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info := inspectPDU("10", []byte(tt.pdu))
			require.Equal(t, tt.want, info.Problems)
			require.Equal(t, formUnknown, info.Form)
			var out strings.Builder
			printPDUTable(&out, []pduInfo{info})
			require.Contains(t, out.String(), "! "+strings.Join(tt.want, "; "))
		})
	}
}

func TestRoomVersionOf(t *testing.T) {
	for _, version := range []string{"1", "10", "11"} {
		room := sampleRoom(t, version)
		create := eventOfType(t, room, "m.room.create")
		message := eventOfType(t, room, "m.room.message")
		got, ok := roomVersionOf([]json.RawMessage{message.JSON, create.JSON})
		require.True(t, ok, version)
		require.Equal(t, version, got)

		redacted, err := redact.Event(version, create.JSON)
		require.NoError(t, err)
		got, ok = roomVersionOf([]json.RawMessage{redacted})
		if version == "11" {
			require.True(t, ok, "version 11 keeps the whole content of a create event")
			require.Equal(t, "11", got)
		} else {
			require.False(t, ok, "version %s's redaction removes room_version", version)
		}
	}
	withoutVersion := `{"type":"m.room.create","state_key":"","content":{"creator":"@a:b"},"hashes":{"sha256":"` +
		strings.Repeat("A", 43) + `"}}`
	_, ok := roomVersionOf([]json.RawMessage{json.RawMessage(withoutVersion)})
	require.False(t, ok, "without room_version, a create event whose hash does not match tells nothing")
	_, ok = roomVersionOf(nil)
	require.False(t, ok)
}

func TestPDUTableOrders(t *testing.T) {
	key := func(s string) *string { return &s }
	infos := []pduInfo{
		{ID: "$c", Type: "m.room.member", StateKey: key("@b:x"), Depth: 3},
		{ID: "$a", Type: "m.room.create", StateKey: key(""), Depth: 1},
		{ID: "$d", Type: "m.room.member", StateKey: key("@a:x"), Depth: 3},
	}
	sortByTypeAndStateKey(infos)
	require.Equal(t, []string{"$a", "$d", "$c"}, idsOf(infos))
	sortByDepth(infos)
	require.Equal(t, []string{"$a", "$c", "$d"}, idsOf(infos))
}

func idsOf(infos []pduInfo) []string {
	ids := make([]string, len(infos))
	for i, info := range infos {
		ids[i] = info.ID
	}
	return ids
}

// FuzzInspectPDU reads arbitrary bytes as a PDU of every room version: it
// must never panic (gomatrixserverlib panics on some input, which
// inspectPDU must contain), and what it says must hold: a PDU read "whole"
// carries a matching content hash, and a "redacted" one is its own
// redaction.
func FuzzInspectPDU(f *testing.F) {
	for _, version := range []string{"1", "3", "10", "11", "12"} {
		for _, ev := range sampleRoom(f, version).Events {
			f.Add(version, []byte(ev.JSON))
			redacted, err := redact.Event(version, ev.JSON)
			require.NoError(f, err)
			f.Add(version, redacted)
		}
	}
	f.Add("", []byte(`{"type":"m.room.message","content":{}}`))
	f.Add("10", []byte(`{"hashes":{"sha256":"47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU"}}`))
	versions := []string{"", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"}
	f.Fuzz(func(t *testing.T, version string, pdu []byte) {
		if !slices.Contains(versions, version) {
			version = ""
		}
		info := inspectPDU(version, pdu)
		var fields map[string]json.RawMessage
		isObject := json.Unmarshal(pdu, &fields) == nil && fields != nil
		switch info.Form {
		case formWhole:
			match, ok := contentHashMatches(fields)
			require.True(t, ok && match, "read whole, but the hash does not match")
		case formRedacted:
			require.True(t, supportedVersion(version))
			require.True(t, isOwnRedaction(version, pdu, fields), "read redacted, but redacting it changes it")
		case formAltered:
			require.True(t, supportedVersion(version))
		case formNotWhole:
			require.False(t, supportedVersion(version))
		case formUnknown:
		default:
			t.Fatalf("unknown form %q", info.Form)
		}
		if !isObject {
			require.Equal(t, []string{"not a JSON object"}, info.Problems)
		}
		var out strings.Builder
		printPDUTable(&out, []pduInfo{info})
		require.Equal(t, 2+len(slices.DeleteFunc([]string{strings.Join(info.Problems, "")}, func(s string) bool { return s == "" })),
			strings.Count(out.String(), "\n"), "a header, a row and a line of problems if any: %q", out.String())
	})
}
