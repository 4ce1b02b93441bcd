package eventcontent

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestString(t *testing.T) {
	tests := []struct {
		name, content, field, want string
	}{
		{"a string field", `{"membership":"join"}`, "membership", "join"},
		{"an absent field", `{"membership":"join"}`, "history_visibility", ""},
		{"a field that is not a string", `{"membership":5}`, "membership", ""},
		{"null", `{"membership":null}`, "membership", ""},
		{"content that is not an object", `["membership"]`, "membership", ""},
		{"content that is not JSON", `{`, "membership", ""},
		{"escapes are decoded", `{"body":"a\u00e9\"b"}`, "body", "aé\"b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, String([]byte(tc.content), tc.field))
		})
	}
}
