package main

import (
	"crypto/ed25519"
	"encoding/base64"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/sign"
)

func TestUsageErrorsExitTwoWithOneLine(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string // in the one line on stderr
	}{
		{"unknown flag", []string{"serve", "--bogus"}, "flag provided but not defined: -bogus"},
		{"bad flag value", []string{"backfill", "--limit", "many"}, `invalid value "many" for flag -limit`},
		{"positional argument", []string{"gen", "--events", "10", "--out", "x", "extra"}, `unexpected argument "extra"`},
		{"missing required flag", []string{"backfill", "--server", "http://127.0.0.1:1", "--origin", "a", "--signing-key", "k", "--room", "!r:a"}, "--v is required"},
		{"missing --server and others", []string{"missing", "--latest", "$e"}, "--server, --origin, --signing-key and --room are required"},
		{"every missing flag at once", []string{"backfill"}, "--server, --origin, --signing-key, --room and --v are required"},
		{"gen without its two required flags", []string{"gen"}, "--events and --out are required"},
		{"gen with an empty --out", []string{"gen", "--events", "3", "--out", ""}, "--out is required"},
		{"gen with zero events", []string{"gen", "--events", "0", "--out", "x"}, "--events must be positive"},
		{"import without its two required flags", []string{"import"}, "--db and --room are required"},
		{"demo has no --version", []string{"demo", "--version", "11"}, "flag provided but not defined: -version"},
		{"gen has no --version", []string{"gen", "--events", "10", "--out", "x", "--version", "11"}, "flag provided but not defined: -version"},
		{"version takes no argument", []string{"version", "now"}, `unexpected argument "now"`},
		{"tls cert without key", []string{"serve", "--tls-cert", "c.pem"}, "--tls-cert and --tls-key go together"},
		{"malformed --trust", []string{"serve", "--trust", "hs2.example"}, "want SERVER=KEYID:BASE64KEY"},
		{"malformed --resolve", []string{"serve", "--resolve", "hs2.example=nowhere"}, "want SERVER=HOST:PORT"},
		{"--metrics-listen without a port", []string{"serve", "--metrics-listen", "127.0.0.1"}, `--metrics-listen "127.0.0.1": want HOST:PORT`},
		{"--otlp-endpoint not a URL", []string{"serve", "--otlp-endpoint", "127.0.0.1:4318"}, `--otlp-endpoint "127.0.0.1:4318": want an http:// or https:// URL`},
		{"negative per-origin limit", []string{"serve", "--max-queued-per-origin", "-1"}, "--max-concurrent-per-origin and --max-queued-per-origin may not be negative"},
		{"keygen without --out", []string{"keygen"}, "--out is required"},
		{"gen with unknown room version", []string{"gen", "--events", "10", "--out", "x", "--room-version", "99"}, `--room-version "99" is not a stable room version`},
		{"demo with unknown room version", []string{"demo", "--room-version", "99"}, `--room-version "99" is not a stable room version`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := runCommand(t, t.TempDir(), tt.args...)
			require.Equal(t, exitUsage, res.code)
			requireOneLine(t, res.stderr)
			require.Contains(t, res.stderr, tt.want)
			require.Empty(t, res.stdout)
		})
	}
}

func TestHelpExitsZero(t *testing.T) {
	for _, args := range [][]string{
		{"--help"}, {"help"}, {"demo", "--help"}, {"serve", "--help"}, {"serve", "-h"},
		{"backfill", "--help"}, {"missing", "--help"}, {"gen", "--help"}, {"keygen", "--help"},
		{"import", "--help"}, {"version", "--help"}, {"help", "serve"}, {"help", "version"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			t.Parallel()
			res := runCommand(t, t.TempDir(), args...)
			require.Equal(t, exitOK, res.code, res.stderr)
			require.True(t, strings.HasPrefix(res.stdout, "Usage: fedhistory"), res.stdout)
			require.Empty(t, res.stderr)
		})
	}
}

func TestKeygenWritesAPrivateKeyAndRefusesToOverwrite(t *testing.T) {
	dir := t.TempDir()
	res := mustRun(t, dir, "keygen", "--out", "server.key")

	key, err := sign.ReadKeyFile(filepath.Join(dir, "server.key"))
	require.NoError(t, err)
	require.Equal(t, key.ID+":"+base64.RawStdEncoding.EncodeToString(key.Public())+"\n", res.stdout,
		"keygen prints the public key in --trust form")
	info, err := os.Stat(filepath.Join(dir, "server.key"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), info.Mode().Perm())

	again := runCommand(t, dir, "keygen", "--out", "server.key")
	require.Equal(t, exitFailure, again.code)
	requireOneLine(t, again.stderr)
	unchanged, err := sign.ReadKeyFile(filepath.Join(dir, "server.key"))
	require.NoError(t, err)
	require.Equal(t, key.Private, unchanged.Private)
}

func TestParseTrust(t *testing.T) {
	key, err := sign.GenerateKey(nil)
	require.NoError(t, err)
	public := key.Public()
	unpadded := base64.RawStdEncoding.EncodeToString(public)
	padded := base64.StdEncoding.EncodeToString(public)

	tests := []struct {
		name    string
		values  []string
		want    map[string]map[string]ed25519.PublicKey
		wantErr string
	}{
		{"unpadded base64", []string{"hs2.example=ed25519:a_1:" + unpadded},
			map[string]map[string]ed25519.PublicKey{"hs2.example": {"ed25519:a_1": public}}, ""},
		{"padded base64, server name with port", []string{"127.0.0.1:8009=ed25519:k:" + padded},
			map[string]map[string]ed25519.PublicKey{"127.0.0.1:8009": {"ed25519:k": public}}, ""},
		{"two keys of one server", []string{"a=ed25519:x:" + unpadded, "a=ed25519:y:" + unpadded},
			map[string]map[string]ed25519.PublicKey{"a": {"ed25519:x": public, "ed25519:y": public}}, ""},
		{"no server", []string{"=ed25519:x:" + unpadded}, nil, "want SERVER=KEYID:BASE64KEY"},
		{"no key", []string{"a=ed25519:x"}, nil, "must look like ed25519:VERSION"},
		{"other algorithm", []string{"a=curve25519:x:" + unpadded}, nil, "must look like ed25519:VERSION"},
		{"short key", []string{"a=ed25519:x:AAAA"}, nil, "want a base64 ed25519 public key"},
		{"not base64", []string{"a=ed25519:x:!!!"}, nil, "want a base64 ed25519 public key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseTrust(tt.values)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				var usage *usageError
				require.ErrorAs(t, err, &usage)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestParseResolve(t *testing.T) {
	tests := []struct {
		name    string
		values  []string
		want    map[string]string
		wantErr bool
	}{
		{"host and port", []string{"hs2.example=127.0.0.1:8448"}, map[string]string{"hs2.example": "http://127.0.0.1:8448"}, false},
		{"a URL is kept", []string{"hs2.example=https://keys.example:443"}, map[string]string{"hs2.example": "https://keys.example:443"}, false},
		{"IPv6 host", []string{"hs2=[::1]:80"}, map[string]string{"hs2": "http://[::1]:80"}, false},
		{"no port", []string{"hs2=keys.example"}, nil, true},
		{"no target", []string{"hs2="}, nil, true},
		{"no server", []string{"=127.0.0.1:1"}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseResolve(tt.values)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestDefaultServerName(t *testing.T) {
	bound := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 41234}
	tests := []struct {
		name, flag, listen, want string
	}{
		{"the flag wins", "hs1.example", "127.0.0.1:0", "hs1.example"},
		{"the listen address as given", "", "localhost:8008", "localhost:8008"},
		{"port 0 becomes the bound port", "", "127.0.0.1:0", "127.0.0.1:41234"},
		{"the host is kept as given", "", "localhost:0", "localhost:41234"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := defaultServerName(tt.flag, tt.listen, bound)
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
	_, err := defaultServerName("", ":8008", bound)
	require.ErrorContains(t, err, "give --server-name")
}
