package logs

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// maxLine is the longest line kept whole: longer ones are split into
// partial lines (as the CRI does).
const maxLine = 16 << 10

// Run is one run's log file being written: its stdout and stderr writers
// turn the container's bytes into timestamped lines.
type Run struct {
	store    *Store
	instance string
	n        int
	path     string
	now      func() time.Time
	max      int64

	mu     sync.Mutex
	f      *os.File
	size   int64
	ended  bool
	stdout *streamWriter
	stderr *streamWriter
}

// Number is the run's number (1 for an instance's first container task).
func (r *Run) Number() int { return r.n }

// Stdout and Stderr are the writers for the container's two streams.
func (r *Run) Stdout() io.Writer { return r.stdout }
func (r *Run) Stderr() io.Writer { return r.stderr }

func (r *Run) openFile() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("logs: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("logs: %w", err)
	}
	r.f, r.size = f, st.Size()
	return nil
}

// line appends one line, rotating first when the file is full.
func (r *Run) line(stream string, text []byte, partial bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return
	}
	tag := "F"
	if partial {
		tag = "P"
	}
	var b bytes.Buffer
	b.Grow(len(text) + 48)
	b.WriteString(r.now().UTC().Format(time.RFC3339Nano))
	b.WriteByte(' ')
	b.WriteString(stream)
	b.WriteByte(' ')
	b.WriteString(tag)
	b.WriteByte(' ')
	b.Write(text)
	b.WriteByte('\n')
	if r.size > 0 && r.size+int64(b.Len()) > r.max {
		r.rotate()
	}
	n, _ := r.f.Write(b.Bytes())
	r.size += int64(n)
}

// rotate moves the file to .1 (replacing the one there) and starts anew.
func (r *Run) rotate() {
	r.f.Close()
	r.f = nil
	if err := os.Rename(r.path, r.path+".1"); err != nil {
		return
	}
	_ = r.openFile()
}

// end flushes what is buffered and closes the file. Store.mu is held.
func (r *Run) end() {
	if r.ended {
		return
	}
	r.stdout.flush()
	r.stderr.flush()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ended = true
	if r.f != nil {
		r.f.Close()
		r.f = nil
	}
}

// streamWriter splits one stream into lines.
type streamWriter struct {
	run    *Run
	stream string
	mu     sync.Mutex
	buf    []byte
}

func (w *streamWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.buf = append(w.buf, p...)
			for len(w.buf) >= maxLine {
				w.run.line(w.stream, w.buf[:maxLine], true)
				w.buf = append(w.buf[:0], w.buf[maxLine:]...)
			}
			break
		}
		line := p[:i]
		if len(w.buf) > 0 {
			line = append(w.buf, line...)
		}
		for len(line) > maxLine {
			w.run.line(w.stream, line[:maxLine], true)
			line = line[maxLine:]
		}
		w.run.line(w.stream, line, false)
		w.buf = w.buf[:0]
		p = p[i+1:]
	}
	return n, nil
}

// flush writes a partial line left without its newline.
func (w *streamWriter) flush() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.buf) > 0 {
		w.run.line(w.stream, w.buf, true)
		w.buf = w.buf[:0]
	}
}
