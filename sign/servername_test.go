package sign

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseServerName(t *testing.T) {
	tests := []struct {
		name     string
		host     string
		port     int
		isIP     bool
		hostPort string // with 8448 as the default port
	}{
		{name: "matrix.org", host: "matrix.org", hostPort: "matrix.org:8448"},
		{name: "matrix.org:8888", host: "matrix.org", port: 8888, hostPort: "matrix.org:8888"},
		{name: "localhost", host: "localhost", hostPort: "localhost:8448"},
		{name: "1.2.3.4", host: "1.2.3.4", isIP: true, hostPort: "1.2.3.4:8448"},
		{name: "1.2.3.4:1234", host: "1.2.3.4", port: 1234, isIP: true, hostPort: "1.2.3.4:1234"},
		{name: "[1234:5678::abcd]", host: "1234:5678::abcd", isIP: true, hostPort: "[1234:5678::abcd]:8448"},
		{name: "[1234:5678::abcd]:5678", host: "1234:5678::abcd", port: 5678, isIP: true, hostPort: "[1234:5678::abcd]:5678"},
		{name: "[::ffff:1.2.3.4]:1", host: "::ffff:1.2.3.4", port: 1, isIP: true, hostPort: "[::ffff:1.2.3.4]:1"},
		{name: "example.org.", host: "example.org.", hostPort: "example.org.:8448"},
		{name: "xn--bcher-kva.example:65535", host: "xn--bcher-kva.example", port: 65535, hostPort: "xn--bcher-kva.example:65535"},
		{name: strings.Repeat("a", 255), host: strings.Repeat("a", 255), hostPort: strings.Repeat("a", 255) + ":8448"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := parseServerName(tt.name)
			require.NoError(t, err)
			require.Equal(t, tt.host, s.host)
			require.Equal(t, tt.port, s.port)
			require.Equal(t, tt.isIP, s.isIP())
			require.Equal(t, tt.hostPort, s.hostPort(8448))
			require.Equal(t, tt.name, s.String())
		})
	}

	for _, bad := range []string{
		"", ":8448", "matrix.org:", "matrix.org:0", "matrix.org:65536", "matrix.org:123456", "matrix.org:-1", "matrix.org:+1",
		"matrix.org:80:80", "matrix org", "matrix_org", "mätrix.org", "matrix.org/path", "user@matrix.org",
		"1.2.3.256", "01.2.3.4", "1.2.3", "127.1", "1.2.3.4.5", "999.1.1.1",
		"1234:5678::abcd", "[1234:5678::abcd", "[1.2.3.4]", "[::1]x", "[::1]:", "[::1]:0", "[fe80::1%25eth0]", "[fe80::1%eth0]",
		"[" + strings.Repeat("0:", 22) + ":]", strings.Repeat("a", 256),
	} {
		t.Run("invalid "+bad, func(t *testing.T) {
			_, err := parseServerName(bad)
			require.ErrorIs(t, err, errBadServerName)
		})
	}
}
