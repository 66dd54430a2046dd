package gateway

import (
	"bufio"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// epoch anchors nanotime: a monotonic clock in int64 nanoseconds.
var epoch = time.Now()

func nanotime() int64 { return int64(time.Since(epoch)) }

// endpoint is one upstream address and everything the gateway learns
// about it while it stays in the configuration: its keep-alive pool, its
// in-flight requests (least-request balancing) and its outlier state. One
// object per address lives across routing tables (the registry in ads.go
// hands the same one to every table), so a new xDS version keeps pools and
// counters; when the address leaves the configuration (removed or
// DRAINING) it is retired: idle connections close at once, in-flight ones
// finish their request and close.
type endpoint struct {
	addr string
	// zone is the endpoint's locality (its node, from Berth's control
	// plane): a retry prefers another one.
	zone string

	active atomic.Int64 // requests in flight

	// Outlier detection.
	fails5xx     atomic.Int32 // consecutive 5xx or local failures
	failsGateway atomic.Int32 // consecutive 502/503/504 or local failures
	ejections    atomic.Int32
	ejectedUntil atomic.Int64 // nanotime; 0 = never ejected

	retired atomic.Bool

	mu      sync.Mutex
	idle    []*upstreamConn // most recently used last
	maxIdle int
}

func (e *endpoint) ejected(now int64) bool { return e.ejectedUntil.Load() > now }

// upstreamConn is one keep-alive connection to an endpoint, with its read
// buffer; it is used by one request at a time.
type upstreamConn struct {
	net.Conn
	br        *bufio.Reader
	ep        *endpoint
	idleSince int64
	deadline  time.Time // as last set; zero = none
	// sent counts the bytes written on the connection (request bodies
	// streamed from the client excepted: an undercount only makes
	// undelivered say no); ackedBase is the peer's acknowledged count
	// right after the connect, ackedKnown whether the kernel tells.
	sent       uint64
	ackedBase  uint64
	ackedKnown bool
}

// undelivered reports that the exchange failed because the upstream's
// kernel acknowledged nothing for the user timeout (ETIMEDOUT, a cut link
// or a dead host: no RST, no FIN) and that it acknowledged no byte beyond
// the first before, i.e. none of the request sent after them. The
// upstream may still have received it (its acknowledgement, delayed to
// ride on the response, was lost with the link): only an idempotent
// request may then go elsewhere.
func (uc *upstreamConn) undelivered(err error, before uint64) bool {
	if !uc.ackedKnown || !errors.Is(err, syscall.ETIMEDOUT) {
		return false
	}
	n, ok := bytesAcked(uc.Conn)
	return ok && n-uc.ackedBase <= before
}

// alive reports whether an idle connection is still open: nothing to
// read yet means yes; EOF, an error or unexpected bytes mean no.
func (uc *upstreamConn) alive() bool {
	if uc.br.Buffered() > 0 {
		return false // bytes nobody asked for
	}
	return connAlive(uc.Conn)
}

// setDeadline bounds the coming exchange by d (zero: no bound). Re-arming
// a deadline costs a timer update per request, so a deadline already set
// that is not earlier than d and at most 1/64 of the remaining time later
// is kept: a timeout may fire up to ~1.6% late.
func (uc *upstreamConn) setDeadline(d time.Time) {
	if d.IsZero() {
		if !uc.deadline.IsZero() {
			uc.deadline = time.Time{}
			uc.Conn.SetDeadline(uc.deadline)
		}
		return
	}
	if !uc.deadline.IsZero() && !uc.deadline.Before(d) {
		if slack := uc.deadline.Sub(d); slack <= time.Until(d)/64 {
			return
		}
	}
	// Round up so that the following requests keep this one.
	uc.deadline = d.Add(time.Until(d) / 64)
	uc.Conn.SetDeadline(uc.deadline)
}

const upstreamBufSize = 8 << 10

// get returns an idle connection (reused = true) or dials a new one.
// mustBeOpen asks to check even a briefly idle connection (for requests
// that cannot be retried on a fresh one).
func (e *endpoint) get(dialer *net.Dialer, timeout, idleTimeout time.Duration, mustBeOpen bool) (*upstreamConn, bool, error) {
	now := nanotime()
	e.mu.Lock()
	for len(e.idle) > 0 {
		uc := e.idle[len(e.idle)-1]
		e.idle[len(e.idle)-1] = nil
		e.idle = e.idle[:len(e.idle)-1]
		idle := now - uc.idleSince
		if idle >= int64(idleTimeout) {
			uc.Conn.Close()
			continue
		}
		e.mu.Unlock()
		// A connection idle for a while may have been closed by the
		// upstream (keep-alive timeouts of a few seconds are common):
		// check before sending on it, so that a request that cannot be
		// retried is not lost on it.
		if (idle < int64(time.Second) && !mustBeOpen) || uc.alive() {
			return uc, true, nil
		}
		uc.Conn.Close()
		e.mu.Lock()
	}
	e.mu.Unlock()
	d := *dialer
	d.Timeout = timeout
	c, err := d.Dial("tcp", e.addr)
	if err != nil {
		return nil, false, err
	}
	uc := &upstreamConn{Conn: c, br: bufio.NewReaderSize(c, upstreamBufSize), ep: e}
	uc.ackedBase, uc.ackedKnown = bytesAcked(c)
	return uc, false, nil
}

// put returns a connection whose exchange completed cleanly to the pool.
func (e *endpoint) put(uc *upstreamConn) {
	if e.retired.Load() {
		uc.Conn.Close()
		return
	}
	uc.idleSince = nanotime()
	e.mu.Lock()
	if len(e.idle) >= e.maxIdle {
		e.mu.Unlock()
		uc.Conn.Close()
		return
	}
	e.idle = append(e.idle, uc)
	e.mu.Unlock()
}

// retire stops pooling: idle connections close now, busy ones when their
// request ends.
func (e *endpoint) retire() {
	e.retired.Store(true)
	e.mu.Lock()
	idle := e.idle
	e.idle = nil
	e.mu.Unlock()
	for _, uc := range idle {
		uc.Conn.Close()
	}
}

// clusterState is a cluster's runtime state across routing tables: the
// in-flight counts that the retry budget needs, the latest ejection, and
// the counters the load reporter drains.
type clusterState struct {
	name          string
	active        atomic.Int64
	activeRetries atomic.Int64
	ejectedUntil  atomic.Int64 // the latest ejectedUntil of its endpoints

	// Load report counters since the last report (lrs.go swaps them).
	issued, succeeded, failed atomic.Uint64
	latency                   latencyHistogram
}

// outlierPolicy is the part of Envoy's OutlierDetection the gateway
// enforces: consecutive 5xx and consecutive gateway failures (local
// connect failures and resets count as both, as in Envoy's default
// non-split mode), ejection for base * times ejected (capped), at most
// maxPercent of the cluster's endpoints but always at least one.
type outlierPolicy struct {
	consecutive5xx     int32 // 0 = off
	consecutiveGateway int32 // 0 = off
	baseEjection       time.Duration
	maxEjection        time.Duration
	maxPercent         int
}

// defaultOutlierPolicy is Envoy's OutlierDetection field defaults, used
// when a cluster has none (Envoy itself then ejects nothing; Berth's
// gateway prefers sane passive ejection).
var defaultOutlierPolicy = outlierPolicy{
	consecutive5xx: 5,
	baseEjection:   30 * time.Second,
	maxEjection:    300 * time.Second,
	maxPercent:     10,
}

// retryBudget bounds concurrent retries per cluster: budget_percent of
// active requests (but at least minConcurrency), or maxRetries when no
// budget is configured (Envoy's max_retries threshold, default 3).
type retryBudget struct {
	percent        float64 // 0 = use maxRetries
	minConcurrency int64
	maxRetries     int64
}

func (b retryBudget) allows(st *clusterState) bool {
	limit := b.maxRetries
	if b.percent > 0 {
		limit = max(b.minConcurrency, int64(b.percent*float64(st.active.Load())/100))
	}
	return st.activeRetries.Load() < limit
}

// outcome reports one attempt on e for outlier detection.
func (c *upstreamCluster) outcome(e *endpoint, status int, localFailure bool) {
	p := &c.outlier
	is5xx := localFailure || status >= 500
	isGateway := localFailure || status == 502 || status == 503 || status == 504
	if !is5xx {
		if e.fails5xx.Load() != 0 {
			e.fails5xx.Store(0)
		}
		if e.failsGateway.Load() != 0 {
			e.failsGateway.Store(0)
		}
		if e.ejections.Load() != 0 && !e.ejected(nanotime()) {
			e.ejections.Store(0)
		}
		return
	}
	n5 := e.fails5xx.Add(1)
	ng := int32(0)
	if isGateway {
		ng = e.failsGateway.Add(1)
	} else if e.failsGateway.Load() != 0 {
		e.failsGateway.Store(0)
	}
	if (p.consecutive5xx > 0 && n5 >= p.consecutive5xx) || (p.consecutiveGateway > 0 && ng >= p.consecutiveGateway) {
		c.eject(e)
	}
}

func (c *upstreamCluster) eject(e *endpoint) {
	now := nanotime()
	if e.ejected(now) {
		return
	}
	limit := max(1, len(c.endpoints)*c.outlier.maxPercent/100)
	if c.countEjected(now) >= limit {
		return
	}
	k := e.ejections.Add(1)
	d := min(c.outlier.baseEjection*time.Duration(k), max(c.outlier.maxEjection, c.outlier.baseEjection))
	until := now + int64(d)
	e.ejectedUntil.Store(until)
	e.fails5xx.Store(0)
	e.failsGateway.Store(0)
	for {
		cur := c.state.ejectedUntil.Load()
		if cur >= until || c.state.ejectedUntil.CompareAndSwap(cur, until) {
			break
		}
	}
}

// retryPolicy is Envoy's RetryPolicy as far as the gateway supports it.
type retryPolicy struct {
	numRetries    int
	perTryTimeout time.Duration
	on5xx         bool // "5xx": any 5xx, connect failures, resets
	onGateway     bool // "gateway-error": 502/503/504, connect failures
	onConnect     bool // "connect-failure"
	onReset       bool // "reset": connection failures before a response
	statuses      []int
	backoffBase   time.Duration
	backoffMax    time.Duration
	// methods, from retriable_request_headers (":method" exact matches),
	// limits every retry to requests with one of these methods; empty
	// means any.
	methods []string
}

// allowsMethodBytes is allowsMethod for the fast path (no allocation).
func (p *retryPolicy) allowsMethodBytes(m []byte) bool {
	if p == nil || len(p.methods) == 0 {
		return true
	}
	for _, allowed := range p.methods {
		if string(m) == allowed {
			return true
		}
	}
	return false
}

// allowsMethod says whether a request with method m may be retried at all.
func (p *retryPolicy) allowsMethod(m string) bool {
	if p == nil || len(p.methods) == 0 {
		return true
	}
	for _, allowed := range p.methods {
		if allowed == m {
			return true
		}
	}
	return false
}

// retriable says whether an attempt that ended with status (0 for a local
// failure: connect failed, or the connection broke before a response)
// may be retried. connectFailed tells a connect failure from a reset.
func (p *retryPolicy) retriable(status int, connectFailed bool) bool {
	if p == nil {
		return false
	}
	if status == 0 {
		return p.on5xx || p.onGateway || p.onReset || (connectFailed && p.onConnect)
	}
	if p.on5xx && status >= 500 {
		return true
	}
	if p.onGateway && (status == 502 || status == 503 || status == 504) {
		return true
	}
	for _, s := range p.statuses {
		if s == status {
			return true
		}
	}
	return false
}

// idempotent methods (RFC 9110 9.2.2) may be retried after the request
// reached an upstream; idempotent is idempotentMethod for the fast path's
// bytes.
func idempotent(method []byte) bool { return idempotentMethod(string(method)) }

func idempotentMethod(m string) bool {
	switch m {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}
