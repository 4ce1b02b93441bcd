//go:build chaos

package chaos_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/interop/internal/serveproc"
	"github.com/fedhistory/fedhistory/sign"
)

// requestKind is what one request of the mix is, and so what it may get.
type requestKind string

const (
	kindBackfill requestKind = "backfill" // signed by a pinned origin, valid
	kindMissing  requestKind = "missing"  // signed by a pinned origin, valid
	kindUnsigned requestKind = "unsigned" // no Authorization
	kindBadLimit requestKind = "badlimit" // signed, limit not a positive integer
	kindHanging  requestKind = "hanging"  // signed by an origin whose key server hangs
)

// Classes of outcome. A Matrix error is classed by its status and errcode.
const (
	classOK      = "200"
	classRefused = "refused" // no connection: serve's listener is closed
)

// outcome is one request's result.
type outcome struct {
	kind       requestKind
	start, end time.Time
	class      string
	// message is a Matrix error's "error", which tells apart the limits
	// behind a 429.
	message string
	// invalid says what is wrong with the answer: no answer at all (EOF,
	// reset, timeout), a body that is neither the endpoint's nor a Matrix
	// error, or a status the kind may never get.
	invalid string
}

func (o outcome) valid() bool { return o.invalid == "" }

// driver sends the requests and records their outcomes.
type driver struct {
	base, serverName string
	room             *serveproc.Room
	pinned           map[string]*sign.SigningKey
	pinnedNames      []string
	client           *http.Client
	transport        *http.Transport

	mu       sync.Mutex
	rng      *rand.Rand
	outcomes []outcome
}

func newDriver(base, serverName string, r *serveproc.Room, pinned map[string]*sign.SigningKey) *driver {
	names := make([]string, 0, len(pinned))
	for name := range pinned {
		names = append(names, name)
	}
	sort.Strings(names)
	transport := &http.Transport{MaxIdleConnsPerHost: 512, IdleConnTimeout: time.Minute}
	return &driver{base: base, serverName: serverName, room: r, pinned: pinned, pinnedNames: names,
		// Longer than serve's request timeout and drain: an answer that
		// does not come within it is a hung request, and invalid.
		client:    &http.Client{Transport: transport, Timeout: 90 * time.Second},
		transport: transport, rng: rand.New(rand.NewPCG(1, 0xc4a05))}
}

// draw picks the next request of the mix: 45% backfill and 45%
// get_missing_events from the pinned origins, 5% unsigned, 5% with a bad
// limit.
func (d *driver) draw() (kind requestKind, method, uri string, body []byte, origin string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := len(d.room.Events)
	latest := n/2 + d.rng.IntN(n-n/2)
	origin = d.pinnedNames[d.rng.IntN(len(d.pinnedNames))]
	backfillURI := func(limit string) string {
		q := url.Values{"v": {d.room.Events[latest]}, "limit": {limit}}
		return "/_matrix/federation/v1/backfill/" + url.PathEscape(d.room.ID) + "?" + q.Encode()
	}
	missingBody := func() []byte {
		earliest := max(0, latest-1-d.rng.IntN(60))
		b, _ := json.Marshal(map[string]any{
			"earliest_events": []string{d.room.Events[earliest]},
			"latest_events":   []string{d.room.Events[latest]},
			"limit":           1 + d.rng.IntN(20),
		})
		return b
	}
	missingURI := "/_matrix/federation/v1/get_missing_events/" + url.PathEscape(d.room.ID)
	switch draw := d.rng.IntN(100); {
	case draw < 45:
		return kindBackfill, http.MethodGet, backfillURI(strconv.Itoa(1 + d.rng.IntN(100))), nil, origin
	case draw < 90:
		return kindMissing, http.MethodPost, missingURI, missingBody(), origin
	case draw < 95:
		return kindUnsigned, http.MethodGet, backfillURI("10"), nil, ""
	default:
		return kindBadLimit, http.MethodGet, backfillURI([]string{"0", "-5", "ten", "1e3", ""}[d.rng.IntN(5)]), nil, origin
	}
}

// send sends one request, signed by key as origin unless key is nil, and
// records and returns its outcome.
func (d *driver) send(ctx context.Context, kind requestKind, method, uri string, body []byte, origin string, key *sign.SigningKey) outcome {
	o := outcome{kind: kind, start: time.Now()}
	req, err := http.NewRequestWithContext(ctx, method, d.base+uri, bytes.NewReader(body))
	if err != nil {
		panic(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != nil {
		if err := key.SignRequest(req, origin, d.serverName); err != nil {
			panic(err)
		}
	}
	resp, err := d.client.Do(req)
	if err != nil {
		o.end = time.Now()
		if errors.Is(err, syscall.ECONNREFUSED) {
			o.class = classRefused
		} else {
			o.class, o.invalid = "no answer", err.Error()
		}
		return d.record(o)
	}
	answer, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	o.end = time.Now()
	if err != nil {
		o.class, o.invalid = "no answer", "reading the body: "+err.Error()
		return d.record(o)
	}
	o.class, o.invalid = classify(kind, resp.StatusCode, answer, d.serverName)
	if o.class != classOK {
		var matrixError struct{ Error string }
		_ = json.Unmarshal(answer, &matrixError)
		o.message = matrixError.Error
		if resp.StatusCode == http.StatusTooManyRequests {
			o.class += " (" + limitOf(o.message) + ")"
		}
	}
	return d.record(o)
}

// limitOf names the limit behind a 429 from its message: the report
// must tell an origin's own queue from the server-wide cap and from the
// verifier's bounds on requests waiting for key fetches.
func limitOf(message string) string {
	switch {
	case strings.Contains(message, "too many concurrent requests from"):
		return "origin queue"
	case strings.Contains(message, "server is busy"):
		return "in flight"
	case strings.Contains(message, "waiting for key fetches"):
		return "key fetches"
	default:
		return "other"
	}
}

// classify names an answer's class and says what is invalid about it.
func classify(kind requestKind, status int, body []byte, serverName string) (class, invalid string) {
	if status == http.StatusOK {
		var prefix string
		switch kind {
		case kindBackfill:
			prefix = `{"origin":"` + serverName + `","origin_server_ts":`
		case kindMissing:
			prefix = `{"events":[`
		default:
			return classOK, fmt.Sprintf("%s got 200: %.200s", kind, body)
		}
		if !bytes.HasPrefix(body, []byte(prefix)) {
			return classOK, fmt.Sprintf("%s: a 200 body that does not start with %s: %.200s", kind, prefix, body)
		}
		return classOK, ""
	}
	var matrixError struct {
		Errcode *string `json:"errcode"`
		Error   *string `json:"error"`
	}
	if err := json.Unmarshal(body, &matrixError); err != nil || matrixError.Errcode == nil || matrixError.Error == nil {
		return strconv.Itoa(status) + " not a Matrix error", fmt.Sprintf("%s: status %d with body %.200s", kind, status, body)
	}
	class = strconv.Itoa(status) + " " + *matrixError.Errcode
	// The request itself decides these answers, whatever the faults:
	// authentication comes first, so an unsigned request is refused
	// before anything can be busy, and a bad limit is found by parsing,
	// before the request queues for its origin's turn (so never 429); only
	// a shutdown that cancels it first answers 503 instead.
	switch {
	case kind == kindUnsigned && status != http.StatusUnauthorized:
		return class, fmt.Sprintf("unsigned: status %d, want 401", status)
	case kind == kindBadLimit && status != http.StatusBadRequest && status != http.StatusServiceUnavailable:
		return class, fmt.Sprintf("bad limit: status %d, want 400 (or 503 when shutdown cancelled it)", status)
	}
	return class, ""
}

func (d *driver) record(o outcome) outcome {
	d.mu.Lock()
	d.outcomes = append(d.outcomes, o)
	d.mu.Unlock()
	return o
}

// mixed sends the mix at rate requests per second until ctx ends, with
// at most maxInFlight outstanding (beyond them it skips a tick, as a
// peer's bounded sender would). It returns when every request has ended.
func (d *driver) mixed(ctx context.Context, rate, maxInFlight int) {
	slots := make(chan struct{}, maxInFlight)
	var wg sync.WaitGroup
	ticker := time.NewTicker(time.Second / time.Duration(rate))
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-ticker.C:
		}
		select {
		case slots <- struct{}{}:
		default:
			continue
		}
		kind, method, uri, body, origin := d.draw()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			// Not ctx: a request in flight when the phase ends gets its
			// answer.
			d.send(context.Background(), kind, method, uri, body, origin, d.pinned[origin])
		}()
	}
}

// hanging keeps workers requests in flight until ctx ends, each signed by
// one of claimed (round robin) with a key serve must fetch from a key
// server that never answers. A worker answered at once (429) waits a
// second before its next request: the fault is the waiting, not a flood
// of requests that would starve the two cores of the machine whatever
// serve did.
func (d *driver) hanging(ctx context.Context, workers int, claimed []string) {
	var wg sync.WaitGroup
	for i := range workers {
		origin := claimed[i%len(claimed)]
		key, err := sign.GenerateKey(nil)
		if err != nil {
			panic(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			uri := "/_matrix/federation/v1/backfill/" + url.PathEscape(d.room.ID) + "?v=" + url.QueryEscape(d.room.Events[len(d.room.Events)-1]) + "&limit=5"
			for ctx.Err() == nil {
				o := d.send(context.Background(), kindHanging, http.MethodGet, uri, nil, origin, key)
				if o.end.Sub(o.start) < time.Second {
					select {
					case <-ctx.Done():
					case <-time.After(time.Second):
					}
				}
			}
		}()
	}
	wg.Wait()
}

// probe sends a valid signed backfill every 100 ms until one is answered
// 200, and returns when that was.
func (d *driver) probe(t *testing.T, bound time.Duration) time.Time {
	t.Helper()
	origin := d.pinnedNames[0]
	uri := "/_matrix/federation/v1/backfill/" + url.PathEscape(d.room.ID) + "?v=" + url.QueryEscape(d.room.Events[len(d.room.Events)-1]) + "&limit=5"
	deadline := time.Now().Add(bound)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), bound)
		o := d.send(ctx, kindBackfill, http.MethodGet, uri, nil, origin, d.pinned[origin])
		cancel()
		if o.class == classOK && o.valid() {
			return o.end
		}
		require.True(t, time.Now().Before(deadline), "serve did not answer a valid backfill 200 within %s of the fault's end; last: %s %s", bound, o.class, o.invalid)
		time.Sleep(100 * time.Millisecond)
	}
}

// window returns the outcomes of requests that started in [from, to).
func (d *driver) window(from, to time.Time) []outcome {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []outcome
	for _, o := range d.outcomes {
		if !o.start.Before(from) && o.start.Before(to) {
			out = append(out, o)
		}
	}
	return out
}

// classCounts summarises outcomes as "class×count" by kind group: the
// pinned origins' valid requests, the invalid ones (unsigned, bad limit)
// and the hanging origins'.
func classCounts(outcomes []outcome) string {
	groups := map[string]map[string]int{}
	for _, o := range outcomes {
		group := "pinned"
		switch o.kind {
		case kindUnsigned, kindBadLimit:
			group = "bad"
		case kindHanging:
			group = "hanging"
		}
		if groups[group] == nil {
			groups[group] = map[string]int{}
		}
		groups[group][o.class]++
	}
	var parts []string
	for _, group := range []string{"pinned", "bad", "hanging"} {
		if groups[group] == nil {
			continue
		}
		classes := make([]string, 0, len(groups[group]))
		for class, n := range groups[group] {
			classes = append(classes, fmt.Sprintf("%s×%d", class, n))
		}
		sort.Strings(classes)
		parts = append(parts, group+": "+strings.Join(classes, ", "))
	}
	return strings.Join(parts, "; ")
}
