//go:build chaos

package chaos_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/interop/internal/serveproc"

	"github.com/fedhistory/fedhistory/sign"
)

// The served server, and the servers whose keys it pins (serve --trust);
// each has a user joined to the room (gen --other-server).
const serverName = "hs1.example"

var pinnedOrigins = []string{"hs2.example", "hs3.example", "hs4.example", "hs5.example", "hs6.example"}

// settings are the suite's timings and sizes: the full run's, -short's, or
// as overridden by the environment.
type settings struct {
	events, rate int
	// warm is how long the load runs before each fault; hold how long the
	// restart-free faults last; outage how long the killed database stays
	// down; pause how long it stays stopped (longer than serve's 30 s
	// request timeout); settle how long the load runs on after recovery.
	warm, hold, outage, pause, settle time.Duration
	// recoveryBound is how soon after a fault's end the pinned origins
	// must be served again.
	recoveryBound time.Duration
	// slowLatency delays each chunk the database sends during the slow
	// database fault; drainLatency during SIGTERM under load, longer so
	// that requests outlive the drain timeout.
	slowLatency, drainLatency time.Duration
	drainTimeout              time.Duration
	maxConnections            int
	hangingWorkers            int
	hangingOrigins            int
}

func loadSettings(t *testing.T) settings {
	s := settings{events: 5000, rate: 100, warm: 5 * time.Second, hold: 20 * time.Second, outage: 30 * time.Second,
		pause: 40 * time.Second, settle: 5 * time.Second, recoveryBound: 30 * time.Second,
		slowLatency: 50 * time.Millisecond, drainLatency: 400 * time.Millisecond, drainTimeout: 3 * time.Second,
		maxConnections: 20, hangingWorkers: 300, hangingOrigins: 200}
	if testing.Short() {
		s.events, s.warm, s.hold, s.outage, s.pause, s.settle = 2000, 3*time.Second, 8*time.Second, 10*time.Second, 35*time.Second, 3*time.Second
	}
	for name, target := range map[string]*time.Duration{
		"FEDHISTORY_CHAOS_HOLD": &s.hold, "FEDHISTORY_CHAOS_OUTAGE": &s.outage, "FEDHISTORY_CHAOS_PAUSE": &s.pause,
		"FEDHISTORY_CHAOS_RECOVERY_BOUND": &s.recoveryBound,
	} {
		if v := os.Getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			require.NoError(t, err, name)
			*target = d
		}
	}
	for name, target := range map[string]*int{"FEDHISTORY_CHAOS_EVENTS": &s.events, "FEDHISTORY_CHAOS_RATE": &s.rate} {
		if v := os.Getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			require.NoError(t, err, name)
			require.Positive(t, n, name)
			*target = n
		}
	}
	return s
}

// timelineRow is one fault's line of the report.
type timelineRow struct {
	fault                   string
	start, end              time.Duration // since the suite's first fault phase
	answers                 string
	recovery                string
	before, after           runtimeStats
	errorLogLines           int
	pinnedFailuresRecovered int
}

// suite is everything the faults act on.
type suite struct {
	t        *testing.T
	cfg      settings
	pg       *postgres
	proxy    *latencyProxy
	srv      *serveproc.Server
	driver   *driver
	stats    *http.Client
	baseline runtimeStats
	digest   map[string]tableDigest
	epoch    time.Time
	rows     []timelineRow
}

// fault is one injected fault: inject starts it and returns what ends it.
type fault struct {
	name   string
	inject func(t *testing.T) (end func(t *testing.T))
	// hold is how long the fault lasts between inject and end.
	hold time.Duration
	// pinnedUnaffected: the fault is someone else's (a hanging key
	// server), so the pinned origins must be served 200 throughout.
	pinnedUnaffected bool
}

func TestChaos(t *testing.T) {
	cfg := loadSettings(t)
	pg := startPostgres(t, cfg.maxConnections)
	proxy := startProxy(t, pg.addr())
	hangingKeys := startHangingKeyServer(t)

	dir := t.TempDir()
	binary := serveproc.Build(t, dir)
	genArgs := []string{"gen", "--out", filepath.Join(dir, "room.jsonl"), "--events", strconv.Itoa(cfg.events),
		"--fork-every", "9", "--seed", "1", "--server-name", serverName}
	for _, origin := range pinnedOrigins {
		genArgs = append(genArgs, "--other-server", origin)
	}
	serveproc.Run(t, dir, binary, genArgs...)
	r := serveproc.ReadRoom(t, filepath.Join(dir, "room.jsonl"))
	serveproc.Run(t, dir, binary, "import", "--db", dsn(pg.addr()), "--room", filepath.Join(dir, "room.jsonl"))

	hangingNames := make([]string, cfg.hangingOrigins)
	for i := range hangingNames {
		hangingNames[i] = fmt.Sprintf("hang%d.example", i)
	}
	pinned := map[string]*sign.SigningKey{}
	serveArgs := []string{"serve", "--db", dsn(proxy.addr()), "--listen", "127.0.0.1:0", "--debug-addr", "127.0.0.1:0",
		"--metrics-listen", "127.0.0.1:0", "--server-name", serverName, "--drain-timeout", cfg.drainTimeout.String()}
	for _, origin := range pinnedOrigins {
		key, err := sign.GenerateKey(nil)
		require.NoError(t, err)
		pinned[origin] = key
		serveArgs = append(serveArgs, "--trust", origin+"="+key.ID+":"+base64.RawStdEncoding.EncodeToString(key.Public()))
	}
	for _, name := range hangingNames {
		serveArgs = append(serveArgs, "--resolve", name+"="+hangingKeys)
	}
	s := &suite{t: t, cfg: cfg, pg: pg, proxy: proxy, stats: &http.Client{Timeout: 30 * time.Second}}
	s.srv = serveproc.Start(t, dir, binary, serveArgs...)
	s.driver = newDriver(s.srv.FederationURL, serverName, r, pinned)
	s.digest = pg.digest(t)

	// The baseline: after a first load, idle, after GCs.
	ctx, stop := context.WithTimeout(context.Background(), cfg.warm)
	s.driver.mixed(ctx, cfg.rate, 256)
	stop()
	s.driver.transport.CloseIdleConnections()
	s.baseline = settledStats(t, s.stats, s.srv, 0)
	t.Logf("baseline: %d goroutines, %s heap in use", s.baseline.Goroutines, mib(s.baseline.HeapInuse))
	s.epoch = time.Now()

	var exhausted []*pgx.Conn
	faults := []fault{
		{name: "PostgreSQL restart (fast shutdown, start)", inject: func(t *testing.T) func(*testing.T) {
			pg.stop(t, syscall.SIGINT)
			pg.start(t)
			return func(*testing.T) {}
		}},
		{name: fmt.Sprintf("PostgreSQL killed (SIGKILL), down %s", cfg.outage), hold: cfg.outage, inject: func(t *testing.T) func(*testing.T) {
			pg.stop(t, syscall.SIGKILL)
			return pg.start
		}},
		{name: fmt.Sprintf("PostgreSQL paused (SIGSTOP) %s, SIGCONT", cfg.pause), hold: cfg.pause, inject: func(t *testing.T) func(*testing.T) {
			pg.signalGroup(t, syscall.SIGSTOP)
			return func(t *testing.T) { pg.signalGroup(t, syscall.SIGCONT) }
		}},
		{name: fmt.Sprintf("slow database (+%s per chunk)", cfg.slowLatency), hold: cfg.hold, inject: func(*testing.T) func(*testing.T) {
			proxy.setLatency(cfg.slowLatency)
			return func(*testing.T) { proxy.setLatency(0) }
		}},
		{name: fmt.Sprintf("hanging key server, one origin, %d requests at once", cfg.hangingWorkers), hold: cfg.hold, pinnedUnaffected: true,
			inject: s.hangingLoad(hangingNames[:1])},
		{name: fmt.Sprintf("hanging key server, %d origins, %d requests at once", cfg.hangingOrigins, cfg.hangingWorkers), hold: cfg.hold, pinnedUnaffected: true,
			inject: s.hangingLoad(hangingNames)},
		{name: fmt.Sprintf("max_connections (%d) exhausted", cfg.maxConnections), hold: cfg.hold, inject: func(t *testing.T) func(*testing.T) {
			exhausted = pg.exhaust(t)
			return func(*testing.T) {
				for _, conn := range exhausted {
					conn.Close(context.Background())
				}
			}
		}},
	}
	for _, f := range faults {
		if !s.runFault(f) {
			break
		}
	}
	if !t.Failed() {
		s.sigtermUnderLoad()
	}

	if keep := os.Getenv("FEDHISTORY_CHAOS_LOGS"); keep != "" {
		for _, path := range []string{s.srv.LogPath, pg.logPath} {
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(filepath.Join(keep, filepath.Base(path)), data, 0o644))
		}
	}
	report := s.report()
	t.Log("\n" + report)
	if path := os.Getenv("FEDHISTORY_CHAOS_REPORT"); path != "" {
		require.NoError(t, os.WriteFile(path, []byte(report), 0o644))
	}
}

// hangingLoad returns a fault that keeps cfg.hangingWorkers requests
// claiming the origins in claimed in flight.
func (s *suite) hangingLoad(claimed []string) func(*testing.T) func(*testing.T) {
	return func(*testing.T) func(*testing.T) {
		ctx, stop := context.WithCancel(context.Background())
		var done sync.WaitGroup
		done.Add(1)
		go func() {
			defer done.Done()
			s.driver.hanging(ctx, s.cfg.hangingWorkers, claimed)
		}()
		return func(*testing.T) {
			stop()
			done.Wait()
		}
	}
}

// runFault runs the mixed load, injects f, ends it, waits for recovery,
// and checks what the suite promises. It reports whether the suite can go
// on: serve still runs and nothing failed (a fault -run leaves out is
// skipped).
// startLoad drives the mixed load in the background; the stop it returns
// ends it and waits until it has.
func (s *suite) startLoad() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.driver.mixed(ctx, s.cfg.rate, 256)
	}()
	return func() {
		cancel()
		<-done
	}
}

func (s *suite) runFault(f fault) bool {
	t := s.t
	t.Run(f.name, func(t *testing.T) {
		errorLines := len(serveproc.LogLines(t, s.srv.LogPath, "level=ERROR"))
		stopLoad := s.startLoad()
		time.Sleep(s.cfg.warm)

		faultStart := time.Now()
		end := f.inject(t)
		time.Sleep(f.hold)
		end(t)
		faultEnd := time.Now()
		require.True(t, s.srv.Running(), "serve exited during the fault; see %s", s.srv.LogPath)

		probed := s.driver.probe(t, s.cfg.recoveryBound)
		time.Sleep(s.cfg.settle)
		stopLoad()
		phaseEnd := time.Now()
		require.True(t, s.srv.Running(), "serve exited after the fault; see %s", s.srv.LogPath)

		outcomes := s.driver.window(faultStart.Add(-s.cfg.warm), phaseEnd)
		// Recovered: the probe got a 200 and no pinned request failed
		// after it ended.
		recovered := probed
		failuresAfterProbe := 0
		for _, o := range outcomes {
			if isPinned(o.kind) && o.class != classOK && o.start.After(faultEnd) {
				if o.end.After(recovered) {
					recovered = o.end
				}
				if o.start.After(probed) {
					failuresAfterProbe++
				}
			}
		}
		recovery := max(0, recovered.Sub(faultEnd))

		s.driver.transport.CloseIdleConnections()
		after := settledStats(t, s.stats, s.srv, s.baseline.Goroutines+goroutineSlack)
		row := timelineRow{fault: f.name, start: faultStart.Sub(s.epoch), end: faultEnd.Sub(s.epoch),
			answers: classCounts(outcomes), recovery: recovery.Round(10 * time.Millisecond).String(),
			before: s.baseline, after: after, pinnedFailuresRecovered: failuresAfterProbe,
			errorLogLines: len(serveproc.LogLines(t, s.srv.LogPath, "level=ERROR")) - errorLines}
		s.rows = append(s.rows, row)

		requireValidAnswers(t, outcomes)
		if f.pinnedUnaffected {
			for _, o := range outcomes {
				if isPinned(o.kind) {
					require.Equal(t, classOK, o.class, "a pinned origin's valid request was refused during someone else's fault: %q %s", o.message, o.invalid)
				}
			}
		}
		require.LessOrEqual(t, recovery, s.cfg.recoveryBound, "pinned origins failed until %s after the fault ended", recovery)
		require.LessOrEqual(t, after.Goroutines, s.baseline.Goroutines+goroutineSlack, "goroutines: baseline %d, after %d", s.baseline.Goroutines, after.Goroutines)
		require.LessOrEqual(t, after.HeapInuse, s.baseline.HeapInuse+s.baseline.HeapInuse/2+heapSlack,
			"heap in use: baseline %s, after %s", mib(s.baseline.HeapInuse), mib(after.HeapInuse))
		require.Equal(t, s.digest, s.pg.digest(t), "the database changed")
	})
	return !t.Failed() && s.srv.Running()
}

// goroutineSlack and heapSlack are what a settled server may hold beyond
// the baseline: the pool's connections to a restarted database, a
// runtime's background goroutines, size classes kept after a peak.
const (
	goroutineSlack = 10
	heapSlack      = 8 << 20
)

func isPinned(kind requestKind) bool { return kind == kindBackfill || kind == kindMissing }

// requireValidAnswers fails the test on any request that got no answer or
// one that is neither the endpoint's nor a Matrix error; a refused
// connection counts too, since serve's listener only closes at SIGTERM.
func requireValidAnswers(t *testing.T, outcomes []outcome) {
	t.Helper()
	var problems []string
	invalid := 0
	for _, o := range outcomes {
		problem := o.invalid
		if o.class == classRefused {
			problem = "connection refused while serving"
		}
		if problem == "" {
			continue
		}
		invalid++
		if len(problems) < 10 {
			problems = append(problems, string(o.kind)+": "+problem)
		}
	}
	require.Zero(t, invalid, "%d of %d requests got no valid answer, such as:\n%s", invalid, len(outcomes), strings.Join(problems, "\n"))
}

// sigtermUnderLoad slows the database so that requests are in flight
// beyond the drain timeout, sends SIGTERM, and checks that serve exits 0
// having answered every request it accepted.
func (s *suite) sigtermUnderLoad() {
	s.t.Run("SIGTERM under load (slow database)", func(t *testing.T) {
		s.proxy.setLatency(s.cfg.drainLatency)
		defer s.proxy.setLatency(0)
		stopLoad := s.startLoad()
		time.Sleep(s.cfg.warm)
		faultStart := time.Now()
		require.NoError(t, s.srv.Cmd.Process.Signal(syscall.SIGTERM))
		select {
		case <-s.srv.Exited():
		case <-time.After(s.cfg.drainTimeout + time.Minute):
			t.Fatalf("serve did not exit within a minute of its drain timeout after SIGTERM")
		}
		faultEnd := time.Now()
		// Requests sent after the exit are refused: no server.
		time.Sleep(time.Second)
		stopLoad()
		outcomes := s.driver.window(faultStart.Add(-s.cfg.warm), time.Now())
		s.rows = append(s.rows, timelineRow{fault: fmt.Sprintf("SIGTERM under load (database +%s per chunk, --drain-timeout %s)", s.cfg.drainLatency, s.cfg.drainTimeout),
			start: faultStart.Sub(s.epoch), end: faultEnd.Sub(s.epoch), answers: classCounts(outcomes), recovery: "exit " + strconv.Itoa(s.srv.Cmd.ProcessState.ExitCode()),
			before: s.baseline, errorLogLines: -1})

		var invalid []string
		for _, o := range outcomes {
			if o.invalid != "" || (o.class == classRefused && o.start.Before(faultStart)) {
				invalid = append(invalid, fmt.Sprintf("%s at +%s: %s %s", o.kind, o.start.Sub(faultStart).Round(time.Millisecond), o.class, o.invalid))
			}
		}
		require.Empty(t, invalid, "requests that got no valid answer around SIGTERM")
		require.Equal(t, 0, s.srv.Cmd.ProcessState.ExitCode(), "serve's exit status after SIGTERM; see %s", s.srv.LogPath)
		require.Equal(t, s.digest, s.pg.digest(t), "the database changed")
	})
}

func (s *suite) report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "fedhistory serve --db under faults: a room of %d events, %d req/s of mixed load from %d pinned origins; baseline %d goroutines, %s heap in use\n\n",
		s.cfg.events, s.cfg.rate, len(pinnedOrigins), s.baseline.Goroutines, mib(s.baseline.HeapInuse))
	fmt.Fprintf(&b, "| fault | start | end | answers by class (pinned = valid requests of pinned origins; bad = unsigned and bad limit) | recovery | pinned failures after the probe | goroutines before → after | heap in use before → after | ERROR log lines |\n")
	fmt.Fprintf(&b, "|---|---|---|---|---|---|---|---|---|\n")
	for _, row := range s.rows {
		after, heap, logs := "(exited)", "(exited)", "–"
		if row.after.Goroutines != 0 {
			after, heap = strconv.Itoa(row.after.Goroutines), mib(row.after.HeapInuse)
		}
		if row.errorLogLines >= 0 {
			logs = strconv.Itoa(row.errorLogLines)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %d | %d → %s | %s → %s | %s |\n", row.fault,
			row.start.Round(100*time.Millisecond), row.end.Round(100*time.Millisecond), row.answers, row.recovery, row.pinnedFailuresRecovered,
			row.before.Goroutines, after, mib(row.before.HeapInuse), heap, logs)
	}
	return b.String()
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// startHangingKeyServer serves HTTP on loopback and never answers: each
// request waits until its client gives up (or the test ends). It returns
// its HOST:PORT.
func startHangingKeyServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	stop := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-stop:
		}
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		close(stop)
		srv.Close()
	})
	return ln.Addr().String()
}
