package redact_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/redact"
)

// benchEvent pads a canonical event of the given type to size bytes.
func benchEvent(tb testing.TB, typ string, size int) []byte {
	tb.Helper()
	const sig = "Pzv3XVtSLK4Mp8Uw1Ob7Ya9/0D5BLmNnVdPq6qV7FHcbLH6MiP3QcnHC8XHlIuOpHJtVZcBmFHZ/eoGw8pt6AQ"
	head := `{"auth_events":["$oWQR5Ex1cyZGYE4SxcD4zmJ9rhJLrUUSXuXWGg9OUHQ","$xQ2ZIyB9QAGsCOvRgfdfY1CNM9kXB7bEEFOvRiGIa34","$lmFXDTN2cPqsKWxRzc4C2UrgPBWchvxhx2ICWCK1Ehc"],`
	tail := `"depth":4711,"hashes":{"sha256":"Cbg1g8gT4hvBqWMKFc0mmKUjeG3XzZmTBn3LzTGuXks"},` +
		`"origin":"example.org","origin_server_ts":1700000000000,"prev_events":["$Q8s3MkyZI5Fhs8rnJDcsVIb6ZcHpAbX3BjHVfzvvLAk"],` +
		`"room_id":"!aVeryRoomIdentifier:example.org","sender":"@alice:example.org",` +
		`"signatures":{"example.org":{"ed25519:a_JaEG":"` + sig + `"}},`
	var content string
	switch typ {
	case "m.room.message":
		tail += `"type":"m.room.message","unsigned":{"age":1234}}`
		body := strings.Repeat("lorem ipsum ", 30)
		content = `"content":{"body":"` + body + `","msgtype":"m.text"},`
		pad := size - len(head) - len(content) - len(tail)
		require.Positive(tb, pad)
		content = `"content":{"body":"` + body + strings.Repeat("x", pad) + `","msgtype":"m.text"},`
	case "m.room.power_levels":
		tail += `"state_key":"","type":"m.room.power_levels","unsigned":{"age":1234}}`
		var users strings.Builder
		for i := 0; ; i++ {
			u := fmt.Sprintf(`"@user%04d:example.org":50,`, i)
			if len(head)+len(tail)+users.Len()+len(u)+200 > size {
				break
			}
			users.WriteString(u)
		}
		content = `"content":{"ban":50,"events":{"m.room.name":50,"m.room.power_levels":100},"events_default":0,` +
			`"invite":0,"kick":50,"notifications":{"room":50},"redact":50,"state_default":50,` +
			`"users":{` + strings.TrimSuffix(users.String(), ",") + `},"users_default":0},`
	}
	ev := []byte(head + content + tail)
	return ev
}

// BenchmarkEvent measures Event, and gomatrixserverlib's RedactEventJSON
// for the record, on a 1 KiB message and a 10 KiB power levels event in
// room version 10.
func BenchmarkEvent(b *testing.B) {
	for _, ev := range []struct {
		name string
		json []byte
	}{
		{"message-1KiB", benchEvent(b, "m.room.message", 1024)},
		{"state-10KiB", benchEvent(b, "m.room.power_levels", 10*1024)},
	} {
		b.Run(ev.name+"/redact", func(b *testing.B) {
			b.SetBytes(int64(len(ev.json)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := redact.Event("10", ev.json); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(ev.name+"/gomatrixserverlib", func(b *testing.B) {
			b.SetBytes(int64(len(ev.json)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := gmslRedact("10", ev.json); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestBenchEvents(t *testing.T) {
	// The benchmark's events are what they say: valid, of about their size,
	// and redacted alike by both.
	for _, c := range []struct {
		typ  string
		size int
	}{{"m.room.message", 1024}, {"m.room.power_levels", 10 * 1024}} {
		ev := benchEvent(t, c.typ, c.size)
		require.InDelta(t, c.size, len(ev), 200)
		require.True(t, sameAsGmsl(t, "10", ev))
	}
}
