package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// forwarder sends queries for names outside the zone to the upstreams, in
// order, and caches what they answer. It bounds how many exchanges are in
// flight; the caller takes a slot with tryAcquire before calling exchange.
type forwarder struct {
	upstreams []string
	timeout   time.Duration
	udp, tcp  *dns.Client
	cache     *cache // nil when disabled
	slots     chan struct{}
	shares    *clientShares
	log       *slog.Logger
}

func newForwarder(cfg Config, log *slog.Logger) *forwarder {
	f := &forwarder{
		upstreams: cfg.Upstreams,
		timeout:   cfg.UpstreamTimeout,
		udp:       &dns.Client{Net: "udp", UDPSize: MaxUDPSize, Timeout: cfg.UpstreamTimeout},
		tcp:       &dns.Client{Net: "tcp", Timeout: cfg.UpstreamTimeout},
		slots:     make(chan struct{}, cfg.MaxForwards),
		shares:    newClientShares(cfg.MaxForwardsPerClient, cfg.ForwardRatePerClient),
		log:       log,
	}
	if cfg.CacheSize > 0 {
		f.cache = newCache(cfg.CacheSize, cfg.CacheBytes, cfg.MaxCacheTTL)
	}
	return f
}

// Why a forward was not started (the forwarded metric's result label).
const (
	limitedServer = "limited"        // every forwarding slot is taken
	limitedClient = "client_limited" // the client used up its share
)

// tryAcquire takes a forwarding slot for client: its own share first (so
// one client flooding cannot take every slot), then one of the server's.
// It returns "" on success, else why not.
func (f *forwarder) tryAcquire(client netip.Addr) string {
	if !f.shares.acquire(client, time.Now()) {
		return limitedClient
	}
	select {
	case f.slots <- struct{}{}:
		return ""
	default:
		f.shares.release(client)
		return limitedServer
	}
}

func (f *forwarder) release(client netip.Addr) {
	<-f.slots
	f.shares.release(client)
}

// cached returns a reply to req from the cache, or nil.
func (f *forwarder) cached(req *dns.Msg, now time.Time) *dns.Msg {
	if f.cache == nil {
		return nil
	}
	r := f.cache.get(keyOf(req), now)
	if r == nil {
		return nil
	}
	return clientReply(r, req)
}

var errNoUpstream = errors.New("no upstream answered")

// exchange asks the upstreams, in order, and returns the reply for req.
// A SERVFAIL or REFUSED from one upstream moves on to the next; if none
// answers better, the last such reply is returned.
func (f *forwarder) exchange(ctx context.Context, req *dns.Msg) (*dns.Msg, error) {
	q := new(dns.Msg)
	q.Id = dns.Id()
	q.RecursionDesired = true
	q.CheckingDisabled = req.CheckingDisabled
	q.Question = []dns.Question{req.Question[0]}
	q.SetEdns0(MaxUDPSize, wantsDNSSEC(req))

	var last *dns.Msg
	var lastErr error = errNoUpstream
	for _, up := range f.upstreams {
		r, err := f.exchangeOne(ctx, q, up)
		if err != nil {
			lastErr = err
			f.log.Debug("upstream failed", "upstream", up, "name", q.Question[0].Name, "err", err)
			if ctx.Err() != nil {
				break
			}
			continue
		}
		if r.Rcode == dns.RcodeServerFailure || r.Rcode == dns.RcodeRefused {
			last = r
			continue
		}
		if f.cache != nil {
			f.cache.put(keyOf(req), r, time.Now())
		}
		return clientReply(r, req), nil
	}
	if last != nil {
		return clientReply(last, req), nil
	}
	return nil, lastErr
}

// exchangeOne asks one upstream over UDP, then over TCP if the answer was
// truncated, and checks the reply answers the question asked.
func (f *forwarder) exchangeOne(ctx context.Context, q *dns.Msg, up string) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	r, err := exchangeCancellable(ctx, f.udp, q, up)
	if err == nil && r.Truncated {
		r, err = exchangeCancellable(ctx, f.tcp, q, up)
	}
	if err != nil {
		return nil, fmt.Errorf("dns: forward to %s: %w", up, err)
	}
	if len(r.Question) != 1 || !strings.EqualFold(r.Question[0].Name, q.Question[0].Name) ||
		r.Question[0].Qtype != q.Question[0].Qtype || r.Question[0].Qclass != q.Question[0].Qclass {
		return nil, fmt.Errorf("dns: forward to %s: reply is for another question", up)
	}
	return r, nil
}

// exchangeCancellable is c.ExchangeContext, except that cancelling ctx
// ends a read in progress (miekg/dns only takes ctx's deadline), so a
// stopping server does not wait for its upstreams' timeouts.
func exchangeCancellable(ctx context.Context, c *dns.Client, q *dns.Msg, up string) (*dns.Msg, error) {
	conn, err := c.DialContext(ctx, up)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	r, _, err := c.ExchangeWithConnContext(ctx, q, conn)
	return r, err
}

// clientReply makes the client's reply from an upstream reply r, which is
// not modified (it may be shared with the cache): the client's id and
// question (with its case), and fresh section slices so fitting the reply
// to the client's transport cannot touch r.
func clientReply(r, req *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.MsgHdr = r.MsgHdr
	m.Id = req.Id
	m.RecursionDesired = req.RecursionDesired
	m.RecursionAvailable = true
	m.Authoritative = false
	m.Truncated = false
	m.Question = []dns.Question{req.Question[0]}
	m.Answer = r.Answer[:len(r.Answer):len(r.Answer)]
	m.Ns = r.Ns[:len(r.Ns):len(r.Ns)]
	for _, rr := range r.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			m.Extra = append(m.Extra, rr)
		}
	}
	return m
}

// cacheKey is what makes two queries' answers interchangeable: the
// question, and as in CoreDNS's cache the CD and DO bits (a DO answer
// carries signatures; a CD answer may be one validation would refuse).
type cacheKey struct {
	name          string
	qtype, qclass uint16
	do, cd        bool
}

func keyOf(req *dns.Msg) cacheKey {
	q := req.Question[0]
	return cacheKey{name: lowerASCII(q.Name), qtype: q.Qtype, qclass: q.Qclass, do: wantsDNSSEC(req), cd: req.CheckingDisabled}
}

func wantsDNSSEC(req *dns.Msg) bool {
	opt := req.IsEdns0()
	return opt != nil && opt.Do()
}

// cache holds upstream replies for as long as their TTLs allow (capped by
// maxTTL), at most size entries and maxBytes of packed replies. When full
// it evicts expired entries it meets first, else an arbitrary one:
// simple, bounded, good enough for a node-local forwarder.
type cache struct {
	mu       sync.Mutex
	size     int
	maxBytes int
	bytes    int
	maxTTL   time.Duration
	m        map[cacheKey]cacheEntry
}

type cacheEntry struct {
	msg     *dns.Msg // never modified once stored
	size    int      // its packed length
	stored  time.Time
	expires time.Time
}

func newCache(size, maxBytes int, maxTTL time.Duration) *cache {
	return &cache{size: size, maxBytes: maxBytes, maxTTL: maxTTL, m: make(map[cacheKey]cacheEntry)}
}

// put stores r if it may be cached: NOERROR or NXDOMAIN, complete, with a
// TTL above zero (a negative answer needs an SOA to take its TTL from).
func (c *cache) put(k cacheKey, r *dns.Msg, now time.Time) {
	if r.Truncated || (r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError) {
		return
	}
	ttl, ok := cacheTTL(r)
	if !ok || ttl == 0 {
		return
	}
	d := min(time.Duration(ttl)*time.Second, c.maxTTL)
	size := r.Len()
	if size > c.maxBytes {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, have := c.m[k]; have {
		c.bytes -= old.size
		delete(c.m, k)
	}
	for len(c.m) > 0 && (len(c.m) >= c.size || c.bytes+size > c.maxBytes) {
		c.evictLocked(now)
	}
	c.m[k] = cacheEntry{msg: r, size: size, stored: now, expires: now.Add(d)}
	c.bytes += size
}

func (c *cache) evictLocked(now time.Time) {
	const scan = 16
	i := 0
	var victim cacheKey
	for k, e := range c.m {
		if !now.Before(e.expires) {
			c.bytes -= e.size
			delete(c.m, k)
			return
		}
		if i == 0 {
			victim = k
		}
		if i++; i == scan {
			break
		}
	}
	c.bytes -= c.m[victim].size
	delete(c.m, victim)
}

// get returns a copy of the cached reply for k with its TTLs lowered by the
// time it spent in the cache, or nil.
func (c *cache) get(k cacheKey, now time.Time) *dns.Msg {
	c.mu.Lock()
	e, ok := c.m[k]
	if ok && !now.Before(e.expires) {
		c.bytes -= e.size
		delete(c.m, k)
		ok = false
	}
	c.mu.Unlock()
	if !ok {
		return nil
	}
	age := uint32(now.Sub(e.stored) / time.Second)
	m := e.msg.Copy()
	for _, sec := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range sec {
			h := rr.Header()
			if h.Rrtype == dns.TypeOPT {
				continue
			}
			if h.Ttl > age {
				h.Ttl -= age
			} else {
				h.Ttl = 0
			}
		}
	}
	return m
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// cacheTTL is how long r may be cached: the smallest TTL of its answer and
// authority records, or for a negative answer min(SOA TTL, SOA minimum)
// (RFC 2308). ok is false when a negative answer carries no SOA.
func cacheTTL(r *dns.Msg) (ttl uint32, ok bool) {
	if len(r.Answer) == 0 {
		for _, rr := range r.Ns {
			if soa, isSOA := rr.(*dns.SOA); isSOA {
				return min(soa.Hdr.Ttl, soa.Minttl), true
			}
		}
		return 0, false
	}
	ttl = ^uint32(0)
	for _, sec := range [][]dns.RR{r.Answer, r.Ns} {
		for _, rr := range sec {
			ttl = min(ttl, rr.Header().Ttl)
		}
	}
	return ttl, true
}

// clientShares gives each client address its own share of forwarding: at
// most perClient queries in flight and a token bucket of rate queries a
// second (burst twice that), so one pod flooding names outside the zone
// gets SERVFAIL for its excess while every other client's lookups go on.
type clientShares struct {
	perClient int
	rate      float64
	mu        sync.Mutex
	m         map[netip.Addr]*share
}

type share struct {
	inflight int
	tokens   float64
	last     time.Time
}

// maxTrackedClients bounds the map; idle, full buckets are dropped past it.
const maxTrackedClients = 4096

func newClientShares(perClient int, rate float64) *clientShares {
	return &clientShares{perClient: perClient, rate: rate, m: make(map[netip.Addr]*share)}
}

func (c *clientShares) acquire(client netip.Addr, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.m[client]
	if s == nil {
		if len(c.m) >= maxTrackedClients {
			c.sweepLocked(now)
		}
		s = &share{tokens: 2 * c.rate, last: now}
		c.m[client] = s
	}
	s.tokens = min(2*c.rate, s.tokens+now.Sub(s.last).Seconds()*c.rate)
	s.last = now
	if s.inflight >= c.perClient || s.tokens < 1 {
		return false
	}
	s.tokens--
	s.inflight++
	return true
}

func (c *clientShares) release(client netip.Addr) {
	c.mu.Lock()
	if s := c.m[client]; s != nil && s.inflight > 0 {
		s.inflight--
	}
	c.mu.Unlock()
}

// sweepLocked drops clients with nothing in flight whose bucket has
// refilled: forgetting them changes nothing.
func (c *clientShares) sweepLocked(now time.Time) {
	for a, s := range c.m {
		if s.inflight == 0 && s.tokens+now.Sub(s.last).Seconds()*c.rate >= 2*c.rate {
			delete(c.m, a)
		}
	}
}
