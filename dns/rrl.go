package dns

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"time"
)

// Response rate limiting for UDP, as NSD and Knot do it: each client
// prefix (an IPv4 /24, an IPv6 /56) may receive RateLimit responses a
// second (bursts of twice that). Past it, responses are dropped, except
// every RateLimitSlip-th one, which goes out truncated (TC, no records) so
// a real client behind a spoofed flood retries over TCP and is answered.
// It keeps the server from being a reflection amplifier when it listens
// on an address others can reach; TCP is not limited (it cannot be
// spoofed).
type rateLimiter struct {
	rate float64
	slip int
	mu   sync.Mutex
	m    map[netip.Prefix]*rrlBucket
}

type rrlBucket struct {
	tokens  float64
	last    time.Time
	dropped int
}

// maxRRLPrefixes bounds the table; full, refilled buckets are forgotten.
const maxRRLPrefixes = 1 << 16

func newRateLimiter(rate float64, slip int) *rateLimiter {
	return &rateLimiter{rate: rate, slip: slip, m: make(map[netip.Prefix]*rrlBucket)}
}

func rrlPrefix(a netip.Addr) netip.Prefix {
	bits := 24
	if !a.Is4() {
		bits = 56
	}
	p, _ := a.Prefix(bits)
	return p
}

// rrlVerdict is what to do with one response.
type rrlVerdict uint8

const (
	rrlSend rrlVerdict = iota
	rrlDrop
	rrlSlip // send truncated
)

func (r *rateLimiter) check(client netip.Addr, now time.Time) rrlVerdict {
	p := rrlPrefix(client)
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.m[p]
	if b == nil {
		if len(r.m) >= maxRRLPrefixes {
			for k, v := range r.m {
				if v.tokens+now.Sub(v.last).Seconds()*r.rate >= 2*r.rate {
					delete(r.m, k)
				}
			}
		}
		b = &rrlBucket{tokens: 2 * r.rate, last: now}
		r.m[p] = b
	}
	b.tokens = min(2*r.rate, b.tokens+now.Sub(b.last).Seconds()*r.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return rrlSend
	}
	b.dropped++
	if r.slip > 0 && b.dropped%r.slip == 0 {
		return rrlSlip
	}
	return rrlDrop
}

// truncatedReply rewrites reply in place to its header and question with
// TC set and no records.
func truncatedReply(reply []byte) []byte {
	if len(reply) < headerLen {
		return reply
	}
	end := questionEnd(reply)
	if binary.BigEndian.Uint16(reply[4:]) == 0 || end > len(reply) {
		end = headerLen
		binary.BigEndian.PutUint16(reply[4:], 0)
	}
	reply[2] |= 0x02 // TC
	clear(reply[6:12])
	return reply[:end]
}
