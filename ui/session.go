package ui

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// session is one logged-in browser. The cookie holds only its id; the
// token stays in this process's memory, sent on each API call.
type session struct {
	id        string
	token     string
	principal string
	csrf      string
	expires   time.Time
	created   time.Time

	mu      sync.Mutex
	streams int
}

// newID is 128 random bits, hex.
func newID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("ui: no randomness: " + err.Error()) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b[:])
}

// sessions holds the live sessions, at most max (the oldest goes first)
// and at most maxPerPrincipal of one user (that user's oldest goes first:
// a user logging in over and over pushes out only their own sessions,
// not everyone else's).
type sessions struct {
	ttl time.Duration
	max int

	mu   sync.Mutex
	byID map[string]*session
}

func newSessions(ttl time.Duration, max int) *sessions {
	return &sessions{ttl: ttl, max: max, byID: map[string]*session{}}
}

func (ss *sessions) create(token, principal string, now time.Time) *session {
	s := &session{id: newID(), token: token, principal: principal, csrf: newID(), created: now, expires: now.Add(ss.ttl)}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for {
		var oldest, oldestOwn *session
		own := 0
		for _, o := range ss.byID {
			if oldest == nil || o.created.Before(oldest.created) {
				oldest = o
			}
			if o.principal == principal {
				own++
				if oldestOwn == nil || o.created.Before(oldestOwn.created) {
					oldestOwn = o
				}
			}
		}
		switch {
		case own >= maxPerPrincipal:
			delete(ss.byID, oldestOwn.id)
		case len(ss.byID) >= ss.max:
			delete(ss.byID, oldest.id)
		default:
			ss.byID[s.id] = s
			return s
		}
	}
}

// maxPerPrincipal bounds one user's sessions (browsers, tabs that logged
// in again).
const maxPerPrincipal = 32

// get returns the live session with id (compared as a map key: the id is
// 128 random bits, so a lookup's timing tells an attacker nothing useful).
func (ss *sessions) get(id string, now time.Time) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s := ss.byID[id]
	if s == nil {
		return nil
	}
	if now.After(s.expires) {
		delete(ss.byID, id)
		return nil
	}
	return s
}

func (ss *sessions) drop(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.byID, id)
}

func (ss *sessions) sweep(now time.Time) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	for id, s := range ss.byID {
		if now.After(s.expires) {
			delete(ss.byID, id)
		}
	}
}

func (ss *sessions) len() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.byID)
}

// csrfOK compares a request's CSRF token with the session's in constant
// time.
func (s *session) csrfOK(got string) bool {
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) == 1
}

// openStream counts a stream against the session's bound.
func (s *session) openStream(max int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.streams >= max {
		return false
	}
	s.streams++
	return true
}

func (s *session) closeStream() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams--
}

// loginLimiter is a token bucket per client address: burst logins at
// once, then one every `every`. It keeps at most maxClients buckets (a
// full table refuses new clients until old buckets refill and go).
type loginLimiter struct {
	burst int
	every time.Duration

	mu      sync.Mutex
	buckets map[netip.Addr]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

const maxLoginClients = 10000

func newLoginLimiter(burst int, every time.Duration) *loginLimiter {
	return &loginLimiter{burst: burst, every: every, buckets: map[netip.Addr]*bucket{}}
}

func (l *loginLimiter) allow(remoteAddr string, now time.Time) bool {
	addr := clientAddr(remoteAddr)
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[addr]
	if b == nil {
		if len(l.buckets) >= maxLoginClients {
			l.sweepLocked(now)
			if len(l.buckets) >= maxLoginClients {
				return false
			}
		}
		b = &bucket{tokens: float64(l.burst), at: now}
		l.buckets[addr] = b
	}
	b.tokens = min(float64(l.burst), b.tokens+float64(now.Sub(b.at))/float64(l.every))
	b.at = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sweepLocked forgets buckets that are full again.
func (l *loginLimiter) sweepLocked(now time.Time) {
	for a, b := range l.buckets {
		if b.tokens+float64(now.Sub(b.at))/float64(l.every) >= float64(l.burst) {
			delete(l.buckets, a)
		}
	}
}

// clientAddr is the client's address, IPv6 clients by their /64.
func clientAddr(remoteAddr string) netip.Addr {
	ap, err := netip.ParseAddrPort(remoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	a := ap.Addr().Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.Addr()
	}
	return a
}

// hostAllowed is the defence against DNS rebinding: a page of another
// site whose name the attacker re-points at this address sends its own
// name as Host. Allowed: the listener's own address, localhost, and IP
// literals with the listener's port when it listens on every address (an
// IP literal cannot be re-pointed).
func (s *Server) hostAllowed(hostHeader string) bool {
	_, port, err := net.SplitHostPort(s.Addr())
	if err != nil {
		return false
	}
	host, hport, err := net.SplitHostPort(hostHeader)
	if err != nil {
		// No port in Host: only for the default ports of the scheme.
		host, hport = hostHeader, "80"
		if s.cfg.TLS != nil {
			hport = "443"
		}
	}
	if hport != port {
		return false
	}
	host = strings.TrimSuffix(strings.ToLower(host), ".")
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return false // a name: the rebinding case
	}
	lisHost, _, _ := net.SplitHostPort(s.Addr())
	lis, err := netip.ParseAddr(lisHost)
	if err != nil {
		return false
	}
	if lis.IsUnspecified() {
		return true
	}
	return ip.Unmap() == lis.Unmap() || (lis.IsLoopback() && ip.IsLoopback())
}
