package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// progressDelay is how long a task runs before it shows progress: quick
// tasks stay silent.
const progressDelay = time.Second

// progressRedraw is the least time between two redraws of a live line.
const progressRedraw = 250 * time.Millisecond

// progress shows how far a long task over events is. On a terminal it
// keeps one live line, "label: 1200/5000 events, 850 events/s, ETA 4s",
// rewritten in place (\r) at most every progressRedraw once the task has
// run for delay, and ends it with the totals. Elsewhere (a file, a pipe)
// it prints one summary line at the end, "label: 5000 events in 5.9s (850
// events/s)", and only if the task took longer than delay.
//
// A progress with a total of 0 (waiting) shows only the time elapsed.
type progress struct {
	w     io.Writer
	label string
	tty   bool
	delay time.Duration
	now   func() time.Time

	mu          sync.Mutex
	start, last time.Time
	n, total    int
	shown       bool
	width       int // of the line on screen, to blank what a shorter one leaves
	stop        chan struct{}
	stopped     sync.WaitGroup
}

func newProgress(w io.Writer, label string, delay time.Duration) *progress {
	return newProgressAt(w, label, delay, isTerminal(w), time.Now)
}

func newProgressAt(w io.Writer, label string, delay time.Duration, tty bool, now func() time.Time) *progress {
	return &progress{w: w, label: label, tty: tty, delay: delay, now: now, start: now()}
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	info, err := f.Stat()
	return err == nil && info.Mode()&os.ModeCharDevice != 0
}

// update records that done of total events are done, redrawing the live
// line if it is time to.
func (p *progress) update(done, total int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n, p.total = done, total
	p.redraw(false)
}

// redraw draws the live line, unless it is too soon (or force).
func (p *progress) redraw(force bool) {
	if !p.tty {
		return
	}
	now := p.now()
	if !force && (now.Sub(p.start) < p.delay || (p.shown && now.Sub(p.last) < progressRedraw)) {
		return
	}
	p.draw(p.liveLine(now))
	p.shown, p.last = true, now
}

// tick redraws the live line every progressRedraw until done, for a task
// that reports no progress of its own (a waiting progress).
func (p *progress) tick() {
	if !p.tty {
		return
	}
	p.stop = make(chan struct{})
	p.stopped.Go(func() {
		ticker := time.NewTicker(progressRedraw)
		defer ticker.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-ticker.C:
				p.mu.Lock()
				p.redraw(false)
				p.mu.Unlock()
			}
		}
	})
}

// done ends the live line with the totals, or prints the summary line.
func (p *progress) done() {
	if p.stop != nil {
		close(p.stop)
		p.stopped.Wait()
		p.stop = nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	elapsed := p.now().Sub(p.start)
	switch {
	case p.tty && p.shown:
		p.draw(p.summary(elapsed))
		fmt.Fprintln(p.w)
	case !p.tty && elapsed >= p.delay:
		fmt.Fprintln(p.w, p.summary(elapsed))
	}
}

// liveLine is the live line: count, rate and ETA, or the time elapsed.
func (p *progress) liveLine(now time.Time) string {
	elapsed := now.Sub(p.start)
	if p.total == 0 {
		return fmt.Sprintf("%s: %s", p.label, roundDuration(elapsed))
	}
	line := fmt.Sprintf("%s: %d/%d events", p.label, p.n, p.total)
	if rate := float64(p.n) / elapsed.Seconds(); p.n > 0 && elapsed > 0 {
		line += fmt.Sprintf(", %.0f events/s", rate)
		if left := p.total - p.n; left > 0 {
			line += ", ETA " + roundDuration(time.Duration(float64(left)/rate*float64(time.Second))).String()
		}
	}
	return line
}

// summary is the last line: the total, the time it took and the rate.
func (p *progress) summary(elapsed time.Duration) string {
	if p.total == 0 {
		return fmt.Sprintf("%s: done in %s", p.label, roundDuration(elapsed))
	}
	line := fmt.Sprintf("%s: %d events in %s", p.label, p.n, roundDuration(elapsed))
	if elapsed > 0 {
		line += fmt.Sprintf(" (%.0f events/s)", float64(p.n)/elapsed.Seconds())
	}
	return line
}

// draw rewrites the live line with line.
func (p *progress) draw(line string) {
	pad := ""
	if len(line) < p.width {
		pad = strings.Repeat(" ", p.width-len(line))
	}
	fmt.Fprint(p.w, "\r"+line+pad)
	p.width = len(line)
}

// roundDuration rounds d for display: to a tenth of a second under a
// minute, to the second above.
func roundDuration(d time.Duration) time.Duration {
	if d < time.Minute {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}
