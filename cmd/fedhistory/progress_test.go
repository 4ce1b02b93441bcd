package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// fakeClock is a clock the test moves.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestProgressOnATerminalRewritesOneLine(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	var out bytes.Buffer
	p := newProgressAt(&out, "fedhistory gen", time.Second, true, clock.now)

	p.update(100, 1000)
	require.Empty(t, out.String(), "silent for the first second")
	clock.advance(2 * time.Second)
	p.update(500, 1000)
	require.Equal(t, "\rfedhistory gen: 500/1000 events, 250 events/s, ETA 2s", out.String())

	// Updates closer together than progressRedraw are not drawn.
	for range 10 {
		clock.advance(10 * time.Millisecond)
		p.update(510, 1000)
	}
	require.Equal(t, 1, strings.Count(out.String(), "\r"))
	clock.advance(progressRedraw)
	p.update(900, 1000)
	require.Equal(t, 2, strings.Count(out.String(), "\r"))
	clock.advance(time.Second)
	p.update(1000, 1000)
	p.done()
	lines := strings.Split(out.String(), "\r")
	require.Equal(t, "fedhistory gen: 1000/1000 events, 299 events/s", strings.TrimRight(lines[3], " "))
	require.Len(t, lines[3], len(lines[2]), "a line blanks what is left of the longer one before it")
	require.Equal(t, "fedhistory gen: 1000 events in 3.4s (299 events/s)\n", lines[4], "the totals end the line")
}

func TestProgressElsewherePrintsOneSummaryLine(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	var out bytes.Buffer
	p := newProgressAt(&out, "fedhistory gen", time.Second, false, clock.now)
	for i := range 100 {
		clock.advance(50 * time.Millisecond)
		p.update(i*10, 1000)
	}
	p.update(1000, 1000)
	require.Empty(t, out.String())
	p.done()
	require.Equal(t, "fedhistory gen: 1000 events in 5s (200 events/s)\n", out.String())

	// A quick task says nothing.
	out.Reset()
	quick := newProgressAt(&out, "fedhistory gen", time.Second, false, clock.now)
	quick.update(10, 10)
	quick.done()
	require.Empty(t, out.String())
}

func TestProgressWaitingShowsTheTimeElapsed(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1000, 0)}
	var out bytes.Buffer
	p := newProgressAt(&out, "adding 5 events", 0, true, clock.now)
	clock.advance(1500 * time.Millisecond)
	p.redraw(false)
	require.Equal(t, "\radding 5 events: 1.5s", out.String())
	clock.advance(time.Minute)
	p.done()
	require.True(t, strings.HasSuffix(out.String(), "\radding 5 events: done in 1m2s\n"), "%q", out.String())
}

func TestIsTerminal(t *testing.T) {
	require.False(t, isTerminal(&bytes.Buffer{}))
	f, err := os.CreateTemp(t.TempDir(), "stderr")
	require.NoError(t, err)
	defer f.Close()
	require.False(t, isTerminal(f), "a regular file")
}
