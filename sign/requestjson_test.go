package sign

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// requestSigningJSON must give exactly signedRequestJSON's bytes, or the
// verifier would reject what the signer (and every other server) signs.
func TestRequestSigningJSONMatchesSignedRequestJSON(t *testing.T) {
	tests := []struct {
		name                             string
		method, uri, origin, destination string
		content                          string
	}{
		{"GET without a body", "GET", "/_matrix/federation/v1/backfill/%21room%3Ahs1?limit=10&v=%24ev", "hs2.example", "hs1.example", ""},
		{"raw room ID and query characters", "GET", "/_matrix/federation/v1/backfill/!room:hs1.example?v=$a&v=$b&limit=5", "hs2.example:8448", "hs1.example", ""},
		{"POST with a body in canonical order", "POST", "/_matrix/federation/v1/get_missing_events/%21r%3Ahs1", "hs2.example", "hs1.example",
			`{"earliest_events":["$a"],"latest_events":["$b"],"limit":10,"min_depth":0}`},
		{"body with unsorted keys, whitespace and escapes", "POST", "/x", "hs2.example", "hs1.example",
			"{ \"z\": [1, {\"b\": \"\\u00e9\\u003c\", \"a\": -0}], \"a\": \"\\/\" }"},
		{"HTML characters in the URI", "GET", "/x?a=<b>&c", "hs2.example", "hs1.example", ""},
		{"a quote in the URI takes the general path", "GET", `/x?a="b"`, "hs2.example", "hs1.example", ""},
		{"a backslash in the URI", "GET", `/x\y`, "hs2.example", "hs1.example", ""},
		{"non-ASCII in the URI", "GET", "/x/é", "hs2.example", "hs1.example", ""},
		{"a control character", "GET", "/x\x01", "hs2.example", "hs1.example", ""},
		{"invalid UTF-8", "GET", "/x\xff", "hs2.example", "hs1.example", ""},
		{"a body that is not JSON", "POST", "/x", "hs2.example", "hs1.example", `{"a":`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want, wantErr := signedRequestJSON(tc.method, tc.uri, tc.origin, tc.destination, []byte(tc.content))
			got, err := requestSigningJSON(tc.method, tc.uri, tc.origin, tc.destination, []byte(tc.content))
			if wantErr != nil {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, string(want), string(got))
		})
	}
}

func FuzzRequestSigningJSON(f *testing.F) {
	f.Add("GET", "/_matrix/federation/v1/backfill/!r:hs1?v=$e&limit=3", "hs2.example", "hs1.example", "")
	f.Add("POST", "/x", "hs2.example", "hs1.example", `{"b":1,"a":[true,null,"\u0041"]}`)
	f.Fuzz(func(t *testing.T, method, uri, origin, destination, content string) {
		want, wantErr := signedRequestJSON(method, uri, origin, destination, []byte(content))
		got, err := requestSigningJSON(method, uri, origin, destination, []byte(content))
		if wantErr != nil {
			require.Error(t, err)
			return
		}
		require.NoError(t, err)
		require.Equal(t, string(want), string(got))
	})
}
