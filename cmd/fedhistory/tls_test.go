package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// writeSelfSignedCert writes a certificate for 127.0.0.1 and its key as PEM
// files in dir.
func writeSelfSignedCert(t *testing.T, dir string) (certPath, keyPath string) {
	t.Helper()
	private, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	template := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, template, &private.PublicKey, private)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(private)
	require.NoError(t, err)
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	require.NoError(t, os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
	return certPath, keyPath
}

// TestServeOverTLSReachedByServerName serves HTTPS and asks it both by URL
// and by server name: an IP literal with a port, which the spec's discovery
// (fclient's) resolves to itself without any lookup.
func TestServeOverTLSReachedByServerName(t *testing.T) {
	dir := t.TempDir()
	certPath, keyPath := writeSelfSignedCert(t, dir)
	room := generate(t, dir, "room.jsonl", "--events", "20", "--seed", "8")
	trust := strings.TrimSpace(mustRun(t, dir, "keygen", "--out", "hs2.key").stdout)
	srv := startServer(t, dir, "--room", room.Path, "--trust", asker+"="+trust, "--tls-cert", certPath, "--tls-key", keyPath)
	require.True(t, strings.HasPrefix(srv.URL, "https://"), srv.URL)

	for name, target := range map[string]string{"by URL": srv.URL, "by server name": srv.Name} {
		t.Run(name, func(t *testing.T) {
			res := mustRun(t, dir, "backfill", "--server", target, "--insecure", "--origin", asker, "--signing-key", "hs2.key",
				"--room", room.RoomID, "--v", room.last().ID, "--limit", "2", "--raw")
			var answer backfillAnswer
			require.NoError(t, json.Unmarshal([]byte(res.stdout), &answer))
			require.Equal(t, srv.Name, answer.Origin)
			require.Equal(t, room.expectedBackfill(room.last().ID, 2), room.pduIDs(t, answer.PDUs))
		})
	}

	t.Run("a certificate that does not load fails before serving", func(t *testing.T) {
		res := runCommand(t, dir, "serve", "--listen", "127.0.0.1:0", "--room", room.Path, "--tls-cert", keyPath, "--tls-key", keyPath)
		require.Equal(t, exitFailure, res.code)
		require.Empty(t, res.stdout)
		require.Contains(t, res.stderr, "fedhistory serve: loading the TLS certificate:")
	})

	t.Run("a certificate is verified unless --insecure", func(t *testing.T) {
		res := runCommand(t, dir, "backfill", "--server", srv.URL, "--origin", asker, "--signing-key", "hs2.key",
			"--room", room.RoomID, "--v", room.last().ID)
		require.Equal(t, exitFailure, res.code)
		requireOneLine(t, res.stderr)
		require.Contains(t, res.stderr, "certificate")
	})
}
