package sign

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseAuthorization(t *testing.T) {
	const sig = "ABCdef+/xyz0123"
	tests := []struct {
		name   string
		header string
		want   XMatrix
	}{
		{
			name:   "spec example, all quoted",
			header: `X-Matrix origin="origin.hs.example.com",destination="destination.hs.example.com",key="ed25519:key1",sig="ABCDEF..."`,
			want:   XMatrix{Origin: "origin.hs.example.com", Destination: "destination.hs.example.com", KeyID: "ed25519:key1", Signature: "ABCDEF..."},
		},
		{
			name:   "parameters in any order",
			header: `X-Matrix sig="s",key="ed25519:k",destination="d.example",origin="o.example"`,
			want:   XMatrix{Origin: "o.example", Destination: "d.example", KeyID: "ed25519:k", Signature: "s"},
		},
		{
			name:   "scheme and parameter names are case-insensitive",
			header: `x-matrix ORIGIN="o.example",Key="ed25519:k",SIG="s"`,
			want:   XMatrix{Origin: "o.example", KeyID: "ed25519:k", Signature: "s"},
		},
		{
			name:   "spaces and tabs around commas and equals, several spaces after scheme",
			header: "X-Matrix   origin = \"o.example\" ,\tkey\t=\t\"ed25519:k\"\t, sig=\"s\"  ",
			want:   XMatrix{Origin: "o.example", KeyID: "ed25519:k", Signature: "s"},
		},
		{
			name:   "tab after scheme",
			header: "X-Matrix\torigin=o.example,key=ed25519:k,sig=s",
			want:   XMatrix{Origin: "o.example", KeyID: "ed25519:k", Signature: "s"},
		},
		{
			name:   "bare values holding colon, slash, plus and padding (older servers, Sytest)",
			header: `X-Matrix origin=o.example:8448,key=ed25519:a_b,sig=` + sig + "==",
			want:   XMatrix{Origin: "o.example:8448", KeyID: "ed25519:a_b", Signature: sig + "=="},
		},
		{
			name:   "quoted values unescape backslash pairs",
			header: `X-Matrix origin="o\.example",key="ed25519:\"k\\",sig="s"`,
			want:   XMatrix{Origin: "o.example", KeyID: `ed25519:"k\`, Signature: "s"},
		},
		{
			name:   "quoted value may hold a comma",
			header: `X-Matrix origin="o.example",key="ed25519:k",sig="s",note="a, b"`,
			want:   XMatrix{Origin: "o.example", KeyID: "ed25519:k", Signature: "s"},
		},
		{
			name:   "signature is accepted as a spelling of sig",
			header: `X-Matrix origin="o.example",key="ed25519:k",signature="s"`,
			want:   XMatrix{Origin: "o.example", KeyID: "ed25519:k", Signature: "s"},
		},
		{
			name:   "unknown parameters are ignored, even repeated",
			header: `X-Matrix foo=bar,origin="o.example",foo="baz",key="ed25519:k",sig="s",x-extra=1`,
			want:   XMatrix{Origin: "o.example", KeyID: "ed25519:k", Signature: "s"},
		},
		{
			name:   "empty list elements are skipped",
			header: `X-Matrix ,origin="o.example", ,key="ed25519:k",,sig="s",`,
			want:   XMatrix{Origin: "o.example", KeyID: "ed25519:k", Signature: "s"},
		},
		{
			name:   "destination absent (servers before spec v1.3)",
			header: `X-Matrix origin="o.example",key="ed25519:k",sig="s"`,
			want:   XMatrix{Origin: "o.example", KeyID: "ed25519:k", Signature: "s"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseAuthorization(tt.header)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestParseAuthorizationRejects(t *testing.T) {
	tests := []struct {
		name      string
		header    string
		notXMatrx bool
		message   string
	}{
		{name: "other scheme", header: `Bearer abc`, notXMatrx: true},
		{name: "scheme prefix only", header: `X-Matrixorigin="o",key="k",sig="s"`, notXMatrx: true},
		{name: "empty header", header: ``, notXMatrx: true},
		{name: "scheme without parameters", header: `X-Matrix`, message: "no parameters"},
		{name: "scheme followed by spaces only", header: `X-Matrix   `, message: "no parameters"},
		{name: "missing origin", header: `X-Matrix key="ed25519:k",sig="s"`, message: "missing origin"},
		{name: "missing key", header: `X-Matrix origin="o",sig="s"`, message: "missing key"},
		{name: "missing sig", header: `X-Matrix origin="o",key="ed25519:k"`, message: "missing sig"},
		{name: "empty quoted origin", header: `X-Matrix origin="",key="ed25519:k",sig="s"`, message: "missing origin"},
		{name: "duplicate origin", header: `X-Matrix origin="a",origin="b",key="ed25519:k",sig="s"`, message: `"origin" given more than once`},
		{name: "duplicate with different case", header: `X-Matrix origin="a",ORIGIN="a",key="ed25519:k",sig="s"`, message: "more than once"},
		{name: "sig and signature together", header: `X-Matrix origin="a",key="ed25519:k",sig="s",signature="t"`, message: `"sig" given more than once`},
		{name: "duplicate destination", header: `X-Matrix origin="a",destination="x",destination="y",key="ed25519:k",sig="s"`, message: "more than once"},
		{name: "unterminated quote", header: `X-Matrix key=ed25519:k,sig=s,origin="o.example`, message: "unterminated"},
		{name: "backslash at end", header: `X-Matrix origin="o\`, message: "backslash"},
		{name: "text after closing quote", header: `X-Matrix origin="o"x,key="ed25519:k",sig="s"`, message: "after closing quote"},
		{name: "parameter without value", header: `X-Matrix origin,key="ed25519:k",sig="s"`, message: "has no value"},
		{name: "empty bare value", header: `X-Matrix origin=,key="ed25519:k",sig="s"`, message: "empty value"},
		{name: "bare value with inner space", header: `X-Matrix origin=o example,key="ed25519:k",sig="s"`, message: "whitespace"},
		{name: "name is not a token", header: `X-Matrix "origin"="o"`, message: "unexpected character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseAuthorization(tt.header)
			require.Error(t, err)
			if tt.notXMatrx {
				require.ErrorIs(t, err, ErrNotXMatrix)
				return
			}
			require.ErrorIs(t, err, errMalformedHeader)
			require.Contains(t, err.Error(), tt.message)
		})
	}
}

func TestXMatrixStringRoundTrips(t *testing.T) {
	for _, x := range []XMatrix{
		{Origin: "o.example", Destination: "d.example", KeyID: "ed25519:k", Signature: "abc+/"},
		{Origin: "o.example:8448", KeyID: "ed25519:k", Signature: "s"},
		{Origin: `we"ird\name`, Destination: `d"`, KeyID: `ed25519:\`, Signature: "s,t"},
	} {
		got, err := ParseAuthorization(x.String())
		require.NoError(t, err)
		require.Equal(t, x, got)
	}
	require.Equal(t,
		`X-Matrix origin="o",destination="d",key="ed25519:k",sig="s"`,
		XMatrix{Origin: "o", Destination: "d", KeyID: "ed25519:k", Signature: "s"}.String(),
		"the spec's recommended form for older servers")
}

// BenchmarkParseAuthorization parses the header every signed request
// carries, as gomatrixserverlib writes it.
func BenchmarkParseAuthorization(b *testing.B) {
	header := `X-Matrix origin="hs2.example",destination="hs1.example",key="ed25519:a_AbCd",` +
		`sig="Rmr3QiXqSzPD7yxZ7h5JdZFOjkR8vjgP2ukWqlN3rfdVHy4sBnqJU0Uw5nBFOTdHZsyxEzDkxVhCFMk1ZGHCAQ"`
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseAuthorization(header); err != nil {
			b.Fatal(err)
		}
	}
}
