package redact_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"testing"
	"unicode/utf8"

	"github.com/matrix-org/gomatrixserverlib"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/redact"
)

// gmslRedact is gomatrixserverlib's RedactEventJSON for room version v.
func gmslRedact(v string, event []byte) ([]byte, error) {
	ver, err := gomatrixserverlib.GetRoomVersion(gomatrixserverlib.RoomVersion(v))
	if err != nil {
		return nil, err
	}
	return ver.RedactEventJSON(event)
}

// gmslIsRight reports whether RedactEventJSON redacts the canonical event c
// of room version v correctly, so that its canonical output must equal ours.
// It is not right when:
//   - c is not valid UTF-8 (encoding/json replaces bad bytes);
//   - c has an object with a duplicate key anywhere: it decodes content, and
//     keeps the last occurrence, where we copy kept values whole;
//   - c holds a number that is not an integer in canonical JSON's range: it
//     decodes content into interface{}, so float64, and respells it;
//   - c has no content object (it adds "content":{} or keeps a null);
//   - a top-level key matches one of its struct fields only when case is
//     ignored, as encoding/json matches;
//   - from v11, c is an m.room.member event whose content has
//     third_party_invite (it drops third_party_invite.signed).
func gmslIsRight(v string, c []byte) bool {
	if !utf8.Valid(c) {
		return false
	}
	// Walk every token, keeping the keys of each open object.
	type frame struct {
		object  bool
		wantKey bool
		keys    map[string]bool
	}
	var stack []*frame
	valueDone := func() {
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].wantKey = true
		}
	}
	dec := json.NewDecoder(bytes.NewReader(c))
	dec.UseNumber()
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return false
		}
		if len(stack) > 0 && stack[len(stack)-1].wantKey {
			if key, ok := tok.(string); ok {
				top := stack[len(stack)-1]
				if top.keys[key] {
					return false
				}
				top.keys[key] = true
				top.wantKey = false
				continue
			}
		}
		switch tok := tok.(type) {
		case json.Delim:
			switch tok {
			case '{':
				stack = append(stack, &frame{object: true, wantKey: true, keys: map[string]bool{}})
			case '[':
				stack = append(stack, &frame{})
			default:
				stack = stack[:len(stack)-1]
				valueDone()
			}
		case json.Number:
			i, err := strconv.ParseInt(string(tok), 10, 64)
			if err != nil || i > 1<<53-1 || i < -(1<<53-1) || string(tok) == "-0" {
				return false
			}
			valueDone()
		default:
			valueDone()
		}
	}
	var top map[string]json.RawMessage
	if json.Unmarshal(c, &top) != nil {
		return false
	}
	for k := range top {
		for _, f := range redact.GmslTopLevel {
			if k != f && bytes.EqualFold([]byte(k), []byte(f)) {
				return false
			}
		}
	}
	var content map[string]json.RawMessage
	if json.Unmarshal(top["content"], &content) != nil || content == nil {
		return false
	}
	var typ string
	_ = json.Unmarshal(top["type"], &typ)
	if n, _ := strconv.Atoi(v); n >= 11 && typ == "m.room.member" {
		if _, ok := content["third_party_invite"]; ok {
			return false
		}
	}
	return true
}

// sameAsGmsl checks that, on canonical input where RedactEventJSON is right
// and both succeed, the canonical forms of the two redactions are equal. It
// reports whether it compared.
func sameAsGmsl(t testing.TB, v string, event []byte) bool {
	t.Helper()
	c, err := gomatrixserverlib.CanonicalJSON(event)
	if err != nil || !gmslIsRight(v, c) {
		return false
	}
	theirs, err := gmslRedact(v, c)
	if err != nil {
		return false
	}
	ours, err := redact.Event(v, c)
	if err != nil {
		return false
	}
	theirsC, err := gomatrixserverlib.CanonicalJSON(theirs)
	require.NoError(t, err)
	oursC, err := gomatrixserverlib.CanonicalJSON(ours)
	require.NoError(t, err)
	require.Equal(t, string(theirsC), string(oursC), "room version %s, input %s", v, c)
	return true
}

func TestEventMatchesGomatrixserverlib(t *testing.T) {
	compared := 0
	for _, c := range tableCases(t) {
		if sameAsGmsl(t, c.version, []byte(c.in)) {
			compared++
		}
	}
	for _, v := range roomVersions {
		require.True(t, sameAsGmsl(t, v, []byte(topLevelIn)), "room version %s", v)
		compared++
	}
	// Every table case but the v11/v12 third_party_invite ones.
	require.Equal(t, len(tableCases(t))-2+len(roomVersions), compared)
}
