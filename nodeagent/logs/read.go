package logs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Line is one line of a container's output.
type Line struct {
	Time    time.Time
	Stream  string
	Text    []byte
	Partial bool
}

// ReadOptions select what Read returns.
type ReadOptions struct {
	// Previous reads the run before the latest (the container before its
	// last restart).
	Previous bool
	// Since drops lines before it; Tail keeps only the last Tail lines
	// (0: all) of what is already written.
	Since time.Time
	Tail  int
	// Follow goes on with what the run writes next, until the run ends
	// or ctx is done.
	Follow bool
	// Poll is how often a followed file is checked (default 200ms).
	Poll time.Duration
}

// ParseLine reads one CRI log line (without its newline).
func ParseLine(b []byte) (Line, error) {
	ts, rest, ok := bytes.Cut(b, []byte{' '})
	if !ok {
		return Line{}, errors.New("logs: no time")
	}
	t, err := time.Parse(time.RFC3339Nano, string(ts))
	if err != nil {
		return Line{}, fmt.Errorf("logs: time: %w", err)
	}
	stream, rest, ok := bytes.Cut(rest, []byte{' '})
	if !ok || (string(stream) != "stdout" && string(stream) != "stderr") {
		return Line{}, errors.New("logs: no stream")
	}
	tag, text, ok := bytes.Cut(rest, []byte{' '})
	if !ok || (string(tag) != "F" && string(tag) != "P") {
		return Line{}, errors.New("logs: no tag")
	}
	return Line{Time: t, Stream: string(stream), Text: text, Partial: string(tag) == "P"}, nil
}

// Read sends an instance's lines to emit, oldest first.
func (s *Store) Read(ctx context.Context, instance string, o ReadOptions, emit func(Line) error) error {
	if err := validInstance(instance); err != nil {
		return err
	}
	if o.Poll <= 0 {
		o.Poll = 200 * time.Millisecond
	}
	runs, err := s.runs(instance)
	if err != nil {
		return err
	}
	if len(runs) == 0 {
		return fmt.Errorf("instance %s: %w on this node", instance, ErrNotFound)
	}
	n := runs[len(runs)-1]
	if o.Previous {
		if len(runs) < 2 {
			return fmt.Errorf("instance %s: no previous run (it has not restarted): %w", instance, ErrNotFound)
		}
		n, o.Follow = runs[len(runs)-2], false
	}
	path := s.runPath(instance, n)
	// What is written: the rotated file, then the current one.
	var lines []Line
	keep := func(l Line) error {
		if !o.Since.IsZero() && l.Time.Before(o.Since) {
			return nil
		}
		if o.Tail > 0 {
			if len(lines) == o.Tail {
				lines = append(lines[:0], lines[1:]...)
			}
			lines = append(lines, l)
			return nil
		}
		return emit(l)
	}
	if err := readFile(path+".1", keep); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) && o.Follow {
		f, err = os.Open(path) // rotated between the two reads: try once more
	}
	if err != nil {
		return fmt.Errorf("logs: %w", err)
	}
	defer func() { f.Close() }()
	rd := &lineReader{f: f}
	if err := rd.read(keep); err != nil {
		return err
	}
	for _, l := range lines {
		if err := emit(l); err != nil {
			return err
		}
	}
	if !o.Follow {
		return nil
	}
	o.Tail = 0
	for {
		if err := rd.read(keep); err != nil {
			return err
		}
		// Rotated: finish the old file (done above), go on with the new.
		if st, err := os.Stat(path); err == nil {
			if cur, err := f.Stat(); err == nil && !os.SameFile(st, cur) {
				nf, err := os.Open(path)
				if err == nil {
					// What reached the old file before it moved.
					if err := rd.read(keep); err != nil {
						nf.Close()
						return err
					}
					f.Close()
					f, rd = nf, &lineReader{f: nf}
					continue
				}
			}
		}
		if !s.Active(instance, n) {
			return rd.read(keep) // what was written last
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.Poll):
		}
	}
}

func readFile(path string, emit func(Line) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return (&lineReader{f: f}).read(emit)
}

// lineReader emits a file's complete lines as they are written; a line
// without its newline yet waits for the next read.
type lineReader struct {
	f       *os.File
	pending []byte
	buf     [64 << 10]byte
}

func (r *lineReader) read(emit func(Line) error) error {
	for {
		n, err := r.f.Read(r.buf[:])
		r.pending = append(r.pending, r.buf[:n]...)
		for {
			i := bytes.IndexByte(r.pending, '\n')
			if i < 0 {
				break
			}
			if l, perr := ParseLine(r.pending[:i]); perr == nil {
				// The text is copied: pending is reused.
				l.Text = bytes.Clone(l.Text)
				if err := emit(l); err != nil {
					return err
				}
			}
			r.pending = r.pending[i+1:]
		}
		r.pending = append([]byte(nil), r.pending...)
		if err == io.EOF || n == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("logs: %w", err)
		}
	}
}
