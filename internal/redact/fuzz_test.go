package redact_test

import (
	"encoding/json"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/redact"
)

// FuzzEvent feeds events from hostile servers to Event, in any room
// version. Event must not panic; it either fails with ErrMalformed, or its
// output is valid JSON, has no top-level key the input lacks, is no longer
// than the input, comes back unchanged when redacted again, and, where
// gomatrixserverlib's RedactEventJSON is right (gmslIsRight), equals its
// redaction of the canonical input once canonicalised.
func FuzzEvent(f *testing.F) {
	for _, c := range tableCases(f) {
		f.Add([]byte(c.in), uint8(slices.Index(roomVersions, c.version)))
	}
	for _, c := range signCases(f) {
		f.Add([]byte(c.in), uint8(slices.Index(roomVersions, c.version)))
	}
	for i := range roomVersions {
		f.Add([]byte(topLevelIn), uint8(i))
	}
	for _, s := range []string{
		`{"typ\u0065":"m.room.m\u0065mber","content":{"m\u0065mbership":"join","third_party_invite":{"signed":{},"x":1}}}`,
		`{"type":"m.room.member","type":"m.room.message","content":{}}`,
		`{"type":"m.room.member","content":{"membership":"join","membership":"leave"}}`,
		` {"type" : "m.room.create" , "content" : {"creator": "@a:x", "n": 123456789012345678901 } } `,
		`{"type":"m.room.message","content":{"x":[[[{"}":"]"}]]]}}`,
		`{"type":"m.room.message"`,
		`[]`,
	} {
		for i := range roomVersions {
			f.Add([]byte(s), uint8(i))
		}
	}

	f.Fuzz(func(t *testing.T, event []byte, vi uint8) {
		v := roomVersions[int(vi)%len(roomVersions)]
		out, err := redact.Event(v, event)
		if err != nil {
			require.ErrorIs(t, err, redact.ErrMalformed)
			require.Nil(t, out)
			return
		}
		require.True(t, json.Valid(out), "output is not valid JSON: %q", out)
		require.LessOrEqual(t, len(out), len(event))

		var in, got map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(event, &in))
		require.NoError(t, json.Unmarshal(out, &got))
		for k := range got {
			_, ok := in[k]
			require.True(t, ok, "output key %q is not in the input", k)
		}

		again, err := redact.Event(v, out)
		require.NoError(t, err)
		require.Equal(t, string(out), string(again), "not idempotent")

		sameAsGmsl(t, v, event)
	})
}
