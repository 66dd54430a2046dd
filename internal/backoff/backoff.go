// Package backoff is the one retry delay of Berth's clients (agents,
// gateways, the CLI, the containerd event feed): it doubles from Base up
// to Max, and each delay is spread by ±Jitter so that a thousand clients
// that lost the same server do not come back in step.
package backoff

import (
	"math/rand/v2"
	"time"
)

// DefaultJitter spreads each delay by ±20%.
const DefaultJitter = 0.2

// Backoff hands out the delays of one retry loop. The zero Jitter means
// DefaultJitter; a negative one, none.
type Backoff struct {
	Base, Max time.Duration
	Jitter    float64

	d time.Duration
}

// Next returns the delay to wait now and doubles the following one, up
// to Max.
func (b *Backoff) Next() time.Duration {
	if b.d <= 0 {
		b.d = b.Base
	}
	d := Jittered(b.d, b.jitter())
	b.d = min(2*b.d, b.Max)
	return d
}

// Reset starts again from Base (after an attempt that went well).
func (b *Backoff) Reset() { b.d = 0 }

func (b *Backoff) jitter() float64 {
	switch {
	case b.Jitter < 0:
		return 0
	case b.Jitter == 0:
		return DefaultJitter
	}
	return b.Jitter
}

// Jittered is d spread uniformly by ±frac.
func Jittered(d time.Duration, frac float64) time.Duration {
	return time.Duration(float64(d) * (1 + frac*(2*rand.Float64()-1)))
}
