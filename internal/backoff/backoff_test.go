package backoff

import (
	"testing"
	"time"
)

// Delays double from Base to Max, each within ±Jitter, and Reset starts
// again from Base.
func TestBackoff(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Max: time.Second}
	within := func(d, want time.Duration) bool {
		return d >= time.Duration(float64(want)*0.8) && d <= time.Duration(float64(want)*1.2)
	}
	for _, want := range []time.Duration{100, 200, 400, 800, 1000, 1000} {
		want *= time.Millisecond
		if want > time.Second {
			want = time.Second
		}
		if d := b.Next(); !within(d, want) {
			t.Fatalf("delay %s, want %s ±20%%", d, want)
		}
	}
	b.Reset()
	if d := b.Next(); !within(d, 100*time.Millisecond) {
		t.Fatalf("after Reset: %s", d)
	}
	exact := Backoff{Base: time.Second, Max: time.Second, Jitter: -1}
	if d := exact.Next(); d != time.Second {
		t.Fatalf("no jitter: %s", d)
	}
	// The spread covers both sides (a thousand clients do not come back
	// in step).
	var lo, hi bool
	for range 1000 {
		d := Jittered(time.Second, 0.2)
		if d < 800*time.Millisecond || d > 1200*time.Millisecond {
			t.Fatalf("Jittered(1s, 0.2) = %s", d)
		}
		lo, hi = lo || d < 900*time.Millisecond, hi || d > 1100*time.Millisecond
	}
	if !lo || !hi {
		t.Fatal("Jittered does not spread both ways")
	}
}
