package runtime

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// logRecorder keeps the messages logged at Warn and above.
type logRecorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *logRecorder) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}
func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *logRecorder) WithGroup(string) slog.Handler      { return r }
func (r *logRecorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

// fakeSubscriber hands out exit channels; while down, subscribing fails.
type fakeSubscriber struct {
	mu    sync.Mutex
	down  bool
	calls int
	chans []chan Exit
}

func (s *fakeSubscriber) subscribe(context.Context) (<-chan Exit, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.down {
		return nil, errors.New("containerd: connection refused")
	}
	ch := make(chan Exit, 1)
	s.chans = append(s.chans, ch)
	return ch, nil
}

// breakStream closes the current subscription and sets whether
// subscribing fails.
func (s *fakeSubscriber) breakStream(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	close(s.chans[len(s.chans)-1])
	s.down = down
}

func (s *fakeSubscriber) setDown(down bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
}

func (s *fakeSubscriber) last() chan Exit {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.chans[len(s.chans)-1]
}

// A broken stream is followed by a new subscription within a second, a
// Resubscribed signal (the consumer reconciles), and the new stream's
// exits; while subscribing fails the feed tries a bounded number of times
// and logs once for the outage.
func TestFollowExitsResubscribes(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sub := &fakeSubscriber{}
	rec := &logRecorder{}
	feed, err := FollowExits(ctx, sub.subscribe, slog.New(rec))
	if err != nil {
		t.Fatal(err)
	}
	sub.last() <- Exit{InstanceID: "a"}
	if ex := <-feed.Exits(); ex.InstanceID != "a" {
		t.Fatalf("exit %v", ex)
	}

	// A break with containerd up: back within a second.
	broke := time.Now()
	sub.breakStream(false)
	select {
	case <-feed.Resubscribed():
	case <-time.After(2 * time.Second):
		t.Fatal("no resubscription 2s after the stream broke")
	}
	if d := time.Since(broke); d > time.Second {
		t.Errorf("resubscribed after %s, want within a second", d)
	}
	sub.last() <- Exit{InstanceID: "b"}
	if ex := <-feed.Exits(); ex.InstanceID != "b" {
		t.Fatalf("exit %v after resubscribing", ex)
	}

	// containerd away for 3s: bounded attempts, one warning.
	warnings := rec.count()
	attempts := feed.Attempts()
	sub.breakStream(true)
	time.Sleep(3 * time.Second) // the outage itself, not a wait for a condition
	if n := feed.Attempts() - attempts; n < 2 || n > 10 {
		t.Errorf("%d subscribe attempts in a 3s outage, want 2..10 (bounded, no busy loop)", n)
	}
	sub.setDown(false)
	back := time.Now()
	select {
	case <-feed.Resubscribed():
	case <-time.After(3 * time.Second):
		t.Fatal("no resubscription 3s after containerd came back")
	}
	if d := time.Since(back); d > 1500*time.Millisecond {
		t.Errorf("resubscribed %s after containerd was back, want about a second at most", d)
	}
	if n := rec.count() - warnings; n != 1 {
		t.Errorf("%d warnings for one outage, want 1: %q", n, rec.msgs)
	}
}
