package logs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { c.t = c.t.Add(time.Millisecond); return c.t }

func newStore(t *testing.T, cfg Config) (*Store, *clock) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	cfg.Dir, cfg.Now = t.TempDir(), c.now
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, c
}

func readAll(t *testing.T, s *Store, id string, o ReadOptions) []string {
	t.Helper()
	var out []string
	err := s.Read(context.Background(), id, o, func(l Line) error {
		tag := ""
		if l.Partial {
			tag = "+"
		}
		out = append(out, l.Stream[3:]+":"+string(l.Text)+tag)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestLinesStreamsAndPartials(t *testing.T) {
	s, _ := newStore(t, Config{})
	r, err := s.NewRun("web-1", Meta{Namespace: "default", Service: "web"})
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(r.Stdout(), "one\ntw")
	fmt.Fprint(r.Stderr(), "oops\n")
	fmt.Fprint(r.Stdout(), "o\nthree")
	long := strings.Repeat("x", maxLine+10)
	fmt.Fprint(r.Stderr(), long+"\n")
	s.End("web-1")
	got := readAll(t, s, "web-1", ReadOptions{})
	want := []string{"out:one", "err:oops", "out:two", "err:" + strings.Repeat("x", maxLine) + "+", "err:xxxxxxxxxx", "out:three+"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got %q\nwant %q", got, want)
	}
	if got := readAll(t, s, "web-1", ReadOptions{Tail: 2}); len(got) != 2 || got[1] != "out:three+" {
		t.Fatalf("tail 2: %q", got)
	}
}

func TestRunsPreviousAndKeep(t *testing.T) {
	s, _ := newStore(t, Config{KeepRuns: 2})
	for i := 1; i <= 3; i++ {
		r, err := s.NewRun("web-1", Meta{Namespace: "default", Service: "web"})
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(r.Stdout(), "run %d\n", i)
	}
	if got := readAll(t, s, "web-1", ReadOptions{}); len(got) != 1 || got[0] != "out:run 3" {
		t.Fatalf("latest: %q", got)
	}
	if got := readAll(t, s, "web-1", ReadOptions{Previous: true}); len(got) != 1 || got[0] != "out:run 2" {
		t.Fatalf("previous: %q", got)
	}
	if runs, _ := s.runs("web-1"); len(runs) != 2 {
		t.Fatalf("runs kept %v, want the last 2", runs)
	}
	// An agent restart goes on with the same run.
	r, _ := s.Resume("web-1", Meta{})
	fmt.Fprintln(r.Stdout(), "after agent restart")
	if got := readAll(t, s, "web-1", ReadOptions{}); len(got) != 2 {
		t.Fatalf("resumed run: %q", got)
	}
}

func TestRotationCapsARun(t *testing.T) {
	s, _ := newStore(t, Config{MaxFileSize: 4096})
	r, _ := s.NewRun("web-1", Meta{Namespace: "default", Service: "web"})
	for i := range 1000 {
		fmt.Fprintf(r.Stdout(), "line %04d %s\n", i, strings.Repeat("y", 40))
	}
	s.End("web-1")
	var size int64
	for _, f := range []string{"run-000001.log", "run-000001.log.1"} {
		st, err := os.Stat(filepath.Join(s.dir("web-1"), f))
		if err != nil {
			t.Fatal(err)
		}
		size += st.Size()
	}
	if size > 2*4096 {
		t.Fatalf("a run takes %d bytes, cap 2x4096", size)
	}
	got := readAll(t, s, "web-1", ReadOptions{})
	if len(got) == 0 || !strings.HasPrefix(got[len(got)-1], "out:line 0999") {
		t.Fatalf("last line %q", got[len(got)-1])
	}
	for i := 1; i < len(got); i++ {
		if got[i] < got[i-1] {
			t.Fatalf("out of order at %d: %q after %q", i, got[i], got[i-1])
		}
	}
}

func TestSinceAndFollow(t *testing.T) {
	// A rotation at most between two polls: then nothing is lost (with
	// two, the file in between is gone, as in Kubernetes).
	s, c := newStore(t, Config{MaxFileSize: 8192})
	r, _ := s.NewRun("web-1", Meta{Namespace: "default", Service: "web"})
	fmt.Fprintln(r.Stdout(), "old")
	since := c.t.Add(time.Millisecond / 2)
	fmt.Fprintln(r.Stdout(), "new")
	if got := readAll(t, s, "web-1", ReadOptions{Since: since}); len(got) != 1 || got[0] != "out:new" {
		t.Fatalf("since: %q", got)
	}
	// Follow sees what comes next, across rotations, and ends with the run.
	lines := make(chan string, 1000)
	done := make(chan error, 1)
	go func() {
		done <- s.Read(context.Background(), "web-1", ReadOptions{Follow: true, Poll: 5 * time.Millisecond}, func(l Line) error {
			lines <- string(l.Text)
			return nil
		})
	}()
	for i := range 200 {
		fmt.Fprintf(r.Stdout(), "more %03d %s\n", i, strings.Repeat("z", 30))
		if i%50 == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	time.Sleep(20 * time.Millisecond)
	s.End("web-1")
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not end with the run")
	}
	close(lines)
	var got []string
	for l := range lines {
		got = append(got, l)
	}
	if len(got) != 202 || got[len(got)-1] != "more 199 "+strings.Repeat("z", 30) {
		t.Fatalf("followed %d lines, last %q", len(got), got[len(got)-1])
	}
	for i := 3; i < len(got); i++ { // "old", "new", then "more"s in order
		if got[i] <= got[i-1] {
			t.Fatalf("followed out of order or twice: %q after %q", got[i], got[i-1])
		}
	}
}

func TestRemovedInstancesAreSweptAfterRetention(t *testing.T) {
	s, c := newStore(t, Config{Retention: time.Hour})
	r, _ := s.NewRun("web-1", Meta{Namespace: "default", Service: "web"})
	fmt.Fprintln(r.Stdout(), "bye")
	s.Removed("web-1")
	c.t = c.t.Add(59 * time.Minute)
	if n := s.Sweep(); n != 0 {
		t.Fatal("swept before the retention")
	}
	if got := readAll(t, s, "web-1", ReadOptions{}); len(got) != 1 {
		t.Fatalf("logs of a removed instance: %q", got)
	}
	if got := s.Instances("default", "web"); len(got) != 1 || got[0] != "web-1" {
		t.Fatalf("instances of default/web: %q", got)
	}
	c.t = c.t.Add(2 * time.Minute)
	if n := s.Sweep(); n != 1 {
		t.Fatal("not swept after the retention")
	}
	if err := s.Read(context.Background(), "web-1", ReadOptions{}, func(Line) error { return nil }); err == nil {
		t.Fatal("read after the sweep")
	}
	if _, err := s.NewRun("../etc", Meta{}); err == nil {
		t.Fatal("an instance id naming a path outside the store")
	}
}

// FuzzParseLine: whatever a log file holds, reading it never panics, and a
// line the writer makes parses back to itself.
func FuzzParseLine(f *testing.F) {
	f.Add([]byte("2026-12-04T06:30:00.123456789Z stdout F hello"), "x")
	f.Add([]byte("garbage"), "")
	f.Fuzz(func(t *testing.T, raw []byte, text string) {
		ParseLine(raw)
		if strings.ContainsRune(text, '\n') {
			return
		}
		s, _ := newStore(t, Config{})
		r, _ := s.NewRun("i", Meta{})
		fmt.Fprintln(r.Stderr(), text)
		s.End("i")
		var got []Line
		s.Read(context.Background(), "i", ReadOptions{}, func(l Line) error { got = append(got, l); return nil })
		var joined string
		for _, l := range got {
			joined += string(l.Text)
		}
		if joined != text && len(text) > 0 {
			t.Fatalf("wrote %q, read %q", text, joined)
		}
	})
}
