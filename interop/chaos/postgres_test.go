//go:build chaos

package chaos_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"
)

// postgres is a PostgreSQL instance of the test's own: its postmaster runs
// in a process group of its own, so that a signal to the group reaches
// every backend too (a paused database is all of its processes paused).
type postgres struct {
	binDir, dir, dataDir, logPath string
	port, maxConnections          int
	// credential runs initdb and postgres as nobody when the test runs as
	// root, which PostgreSQL refuses to run as.
	credential *syscall.Credential

	cmd    *exec.Cmd
	exited chan struct{}
}

// startPostgres initialises and starts an instance, or skips the test
// when PostgreSQL's binaries are absent or cannot be run here.
func startPostgres(t *testing.T, maxConnections int) *postgres {
	t.Helper()
	binDir := os.Getenv("FEDHISTORY_CHAOS_PG_BIN")
	if binDir == "" {
		binDir = "/usr/lib/postgresql/15/bin"
	}
	for _, tool := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(binDir, tool)); err != nil {
			t.Skipf("the chaos suite starts its own PostgreSQL and needs %s (set FEDHISTORY_CHAOS_PG_BIN to the directory holding initdb and postgres): %v", filepath.Join(binDir, tool), err)
		}
	}
	// Not t.TempDir: its parent is private to the test's user, and as root
	// the instance runs as nobody, who must reach the data directory.
	dir, err := os.MkdirTemp("", "fedhistory-chaos-pg-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	pg := &postgres{binDir: binDir, dir: dir, dataDir: filepath.Join(dir, "data"), logPath: filepath.Join(dir, "postgres.log"),
		maxConnections: maxConnections}
	if os.Geteuid() == 0 {
		nobody, err := user.Lookup("nobody")
		if err != nil {
			t.Skipf("running as root, the chaos suite runs PostgreSQL as the user nobody, who does not exist here: %v", err)
		}
		uid, _ := strconv.ParseUint(nobody.Uid, 10, 32)
		gid, _ := strconv.ParseUint(nobody.Gid, 10, 32)
		pg.credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		require.NoError(t, os.Chown(dir, int(uid), int(gid)))
	}
	pg.port = freePort(t)

	initdb := exec.Command(filepath.Join(binDir, "initdb"), "-D", pg.dataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: pg.credential}
	out, err := initdb.CombinedOutput()
	if err != nil && pg.credential != nil {
		t.Skipf("initdb as the user nobody failed (the chaos suite needs to run PostgreSQL unprivileged): %v\n%s", err, out)
	}
	require.NoError(t, err, "initdb: %s", out)

	pg.start(t)
	t.Cleanup(func() { pg.stop(t, syscall.SIGKILL) })
	return pg
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// addr is where the instance listens.
func (pg *postgres) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(pg.port)) }

// dsn is a connection string for addr (the instance's, or a proxy's).
func dsn(addr string) string {
	return "postgres://postgres@" + addr + "/postgres?sslmode=disable"
}

// start runs the postmaster and waits until it accepts connections (after
// crash recovery, when it was killed).
func (pg *postgres) start(t *testing.T) {
	t.Helper()
	logFile, err := os.OpenFile(pg.logPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	require.NoError(t, err)
	defer logFile.Close()
	pg.cmd = exec.Command(filepath.Join(pg.binDir, "postgres"), "-D", pg.dataDir, "-p", strconv.Itoa(pg.port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+pg.dir,
		"-c", "max_connections="+strconv.Itoa(pg.maxConnections), "-c", "fsync=off")
	pg.cmd.Stdout, pg.cmd.Stderr = logFile, logFile
	pg.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: pg.credential}
	require.NoError(t, pg.cmd.Start())
	exited := make(chan struct{})
	pg.exited = exited
	cmd := pg.cmd
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		conn, err := pg.connect(context.Background())
		if err == nil {
			conn.Close(context.Background())
			return
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(pg.logPath)
			t.Fatalf("postgres exited while starting: %s", tail(string(log), 2000))
		default:
		}
		require.True(t, time.Now().Before(deadline), "postgres did not accept connections: %v", err)
		time.Sleep(100 * time.Millisecond)
	}
}

// stop ends the instance with sig: SIGINT is PostgreSQL's fast shutdown,
// SIGKILL to the whole group a crash. It waits until the postmaster is gone
// and, for SIGKILL, its backends too (a new postmaster refuses to start
// while they hold the old shared memory).
func (pg *postgres) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	select {
	case <-pg.exited:
		return
	default:
	}
	if sig == syscall.SIGKILL {
		_ = syscall.Kill(-pg.cmd.Process.Pid, syscall.SIGKILL)
	} else {
		_ = pg.cmd.Process.Signal(sig)
	}
	<-pg.exited
	for range 100 {
		if err := syscall.Kill(-pg.cmd.Process.Pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// signalGroup sends sig to the postmaster and all its backends.
func (pg *postgres) signalGroup(t *testing.T, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, syscall.Kill(-pg.cmd.Process.Pid, sig))
}

func (pg *postgres) connect(ctx context.Context) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return pgx.Connect(ctx, dsn(pg.addr()))
}

// exhaust opens connections until PostgreSQL refuses one for too many
// clients, and returns them (the caller closes them to end the fault).
func (pg *postgres) exhaust(t *testing.T) []*pgx.Conn {
	t.Helper()
	var held []*pgx.Conn
	for range pg.maxConnections + 1 {
		conn, err := pg.connect(context.Background())
		if err != nil {
			var pgErr *pgconn.PgError
			require.True(t, errors.As(err, &pgErr) && pgErr.Code == "53300", "want too_many_connections, got %v", err)
			return held
		}
		held = append(held, conn)
	}
	t.Fatalf("PostgreSQL accepted %d connections with max_connections=%d", len(held), pg.maxConnections)
	return nil
}

// tableDigest is a table's row count and a digest of its rows.
type tableDigest struct {
	Rows   int64
	Digest string
}

// digest reads every table of the database outside PostgreSQL's own
// schemas: the served database must be the same after every fault.
func (pg *postgres) digest(t *testing.T) map[string]tableDigest {
	t.Helper()
	ctx := context.Background()
	conn, err := pg.connect(ctx)
	require.NoError(t, err)
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables
		WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`)
	require.NoError(t, err)
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.NotEmpty(t, tables, "the imported database holds no tables")
	out := map[string]tableDigest{}
	for _, table := range tables {
		var d tableDigest
		// The text form of each row, hashed, in a fixed order.
		err := conn.QueryRow(ctx, fmt.Sprintf(`SELECT count(*), coalesce(md5(string_agg(md5(r::text), '' ORDER BY md5(r::text))), '')
			FROM %s r`, table)).Scan(&d.Rows, &d.Digest)
		require.NoError(t, err, "digesting %s", table)
		out[table] = d
	}
	return out
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "…" + s[len(s)-n:]
}
