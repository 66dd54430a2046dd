package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Colour, only on a terminal and without NO_COLOR (no-color.org).
const (
	green  = "\x1b[32m"
	yellow = "\x1b[33m"
	red    = "\x1b[31m"
	plain  = "\x1b[39m" // the default colour: as long as the others, so tabwriter columns stay aligned
	reset  = "\x1b[0m"
)

func colourOn(w io.Writer) bool {
	if _, set := os.LookupEnv("NO_COLOR"); set {
		return false
	}
	return isTerminal(w)
}

// painter colours table cells for w. Every cell of a coloured column
// gets a code of the same length (plain for none), so widths stay even.
type painter struct{ on bool }

func painterFor(w io.Writer) painter { return painter{on: colourOn(w)} }

func (p painter) paint(s, colour string) string {
	if !p.on {
		return s
	}
	return colour + s + reset
}

// state colours a state word: good green, waiting yellow, bad red.
func (p painter) state(s string) string {
	switch {
	case strings.HasPrefix(s, "Running"), strings.HasPrefix(s, "Ready"), s == "true", s == "SYNCED", s == "Succeeded", s == "Bound",
		s == "healthy", s == "leader", s == "OK":
		return p.paint(s, green)
	case strings.HasPrefix(s, "Backoff"), strings.HasPrefix(s, "NotReady"), strings.HasPrefix(s, "Lost"), s == "false",
		s == "NACKED", s == "STALE", s == "RolledBack", s == "Aborted", s == "Unscheduled", s == "unhealthy", s == "LOST":
		return p.paint(s, red)
	case s == "Starting", s == "Pulling", s == "Pending", s == "Draining", s == "Stopping", s == "Progressing", s == "Paused", s == "learner":
		return p.paint(s, yellow)
	}
	return p.paint(s, plain)
}

// redrawer prints a block of text again in place on a terminal (cursor up
// over the last block, clear to the end), or after the last one elsewhere.
type redrawer struct {
	w     io.Writer
	tty   bool
	lines int
}

func (r *redrawer) draw(block string) {
	if r.tty && r.lines > 0 {
		fmt.Fprintf(r.w, "\x1b[%dA\x1b[J", r.lines)
	}
	io.WriteString(r.w, block)
	r.lines = strings.Count(block, "\n")
}

// progress shows an upload's bytes and rate on a terminal, in place.
type progress struct {
	w          io.Writer
	name       string
	total      int64
	done       int64
	start, out time.Time
}

func newProgress(w io.Writer, name string, total int64) *progress {
	if !isTerminal(w) {
		return nil
	}
	return &progress{w: w, name: name, total: total, start: time.Now()}
}

func (p *progress) add(n int) {
	if p == nil {
		return
	}
	p.done += int64(n)
	if time.Since(p.out) < 100*time.Millisecond && p.done < p.total {
		return
	}
	p.out = time.Now()
	frac := 1.0
	if p.total > 0 {
		frac = float64(p.done) / float64(p.total)
	}
	bar := strings.Repeat("#", int(frac*30)) + strings.Repeat(".", 30-int(frac*30))
	rate := float64(p.done) / max(time.Since(p.start).Seconds(), 1e-3) / (1 << 20)
	fmt.Fprintf(p.w, "\r%s [%s] %.1f/%.1f MiB %.1f MiB/s ", p.name, bar, float64(p.done)/(1<<20), float64(p.total)/(1<<20), rate)
}

func (p *progress) finish() {
	if p != nil {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
}
