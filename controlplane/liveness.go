package controlplane

import (
	"context"
	"sync"
	"time"

	"github.com/berth-dev/berth/controlplane/store"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// liveness keeps, in memory, when this replica last heard each node's
// agent (its heartbeats), and writes to etcd only transitions: a node
// first heard, a node no longer heard for NodeTimeout, and a changed DNS
// version. The node's lease key lives on this replica's session lease, so
// a replica that dies takes its nodes' claims with it; their agents fail
// over to another replica, which claims them on their next heartbeat.
// Heartbeats cost no etcd write (before: a get, a keep-alive and a put
// each, waking every cache).
type liveness struct {
	timeout time.Duration
	now     func() time.Time

	mu      sync.Mutex
	nodes   map[string]*heard
	wake    chan struct{}
	flushed chan struct{} // closed and replaced after each flush
}

type heard struct {
	last    time.Time
	dns     uint64
	claimed bool
	sentDNS uint64 // the version in the replica's last DNS versions write
}

func newLiveness(timeout time.Duration) *liveness {
	return &liveness{timeout: timeout, now: time.Now, nodes: map[string]*heard{}, wake: make(chan struct{}, 1), flushed: make(chan struct{})}
}

// Heard records a heartbeat (or a registration) of node whose DNS answers
// from version dns.
func (l *liveness) Heard(node string, dns uint64) {
	l.mu.Lock()
	h := l.nodes[node]
	if h == nil {
		h = &heard{}
		l.nodes[node] = h
	}
	h.last, h.dns = l.now(), dns
	news := !h.claimed || h.sentDNS != dns
	l.mu.Unlock()
	if news {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

// HeardAndClaimed records a registration and waits, a second at most,
// until the node's claim is in etcd: a node is live when Register
// returns (an apply right after a join sees it), and a join storm waits
// no longer than that.
func (l *liveness) HeardAndClaimed(ctx context.Context, node string, dns uint64) {
	deadline := time.After(time.Second)
	for {
		l.mu.Lock()
		ch := l.flushed
		l.mu.Unlock()
		l.Heard(node, dns)
		select {
		case <-ch:
		case <-ctx.Done():
			return
		case <-deadline:
			return // the next heartbeat claims it
		}
		l.mu.Lock()
		h := l.nodes[node]
		ok := h != nil && h.claimed
		l.mu.Unlock()
		if ok {
			return
		}
	}
}

// LastHeard is when this replica last heard node.
func (l *liveness) LastHeard(node string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h := l.nodes[node]; h != nil {
		return h.last, true
	}
	return time.Time{}, false
}

// run claims and releases nodes on one session lease at a time until ctx
// ends; a new session claims every node heard again.
func (s *Server) runLiveness(ctx context.Context) error {
	l := s.liveness
	for ctx.Err() == nil {
		sess, ok := s.newSession(ctx, "node liveness")
		if !ok {
			return nil
		}
		l.mu.Lock()
		for _, h := range l.nodes {
			h.claimed, h.sentDNS = false, 0 // not on this lease yet
		}
		l.mu.Unlock()
		s.flushLiveness(ctx, sess)
		if ctx.Err() != nil {
			// Shutting down: the claims lapse with the lease's TTL rather
			// than at once, so a restart (or the other replicas, while the
			// agents fail over) does not see every node vanish.
			sess.Orphan()
			return nil
		}
		sess.Close()
	}
	return nil
}

// minLivenessFlush is the least time between two woken liveness flushes.
const minLivenessFlush = 100 * time.Millisecond

func (s *Server) flushLiveness(ctx context.Context, sess *concurrency.Session) {
	l := s.liveness
	every := min(s.cfg.HeartbeatInterval/2, 250*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-sess.Done():
			s.logger.Warn("node liveness: etcd session expired, claiming again on a new one")
			return
		case <-t.C:
		case <-l.wake:
			// Heartbeats after a new snapshot come together: one write
			// carries them all. And at most one flush per minLivenessFlush:
			// a node flipping its DNS version on every message writes no
			// faster than that.
			wait := max(10*time.Millisecond, time.Until(last.Add(minLivenessFlush)))
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return
			}
		}
		last = time.Now()
		s.flushLivenessOnce(ctx, sess.Lease())
	}
}

func (s *Server) flushLivenessOnce(ctx context.Context, lease clientv3.LeaseID) {
	l := s.liveness
	now := l.now()
	puts := map[string]store.LeaseValue{}
	versions := map[string]uint64{}
	var gone []string
	dnsDirty := false
	l.mu.Lock()
	for name, h := range l.nodes {
		if now.Sub(h.last) > l.timeout {
			if h.claimed {
				gone = append(gone, name)
				dnsDirty = true // it leaves this replica's report
			} else {
				delete(l.nodes, name)
			}
			continue
		}
		if !h.claimed {
			puts[name] = store.LeaseValue{At: now.UTC(), DNSVersion: h.dns}
		}
		versions[name] = h.dns
		dnsDirty = dnsDirty || h.sentDNS != h.dns
	}
	ch := l.flushed
	l.mu.Unlock()
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var putErr, relErr, dnsErr error
	if len(puts) > 0 {
		putErr = s.store.PutLiveness(wctx, lease, puts)
	}
	if len(gone) > 0 {
		relErr = s.store.ReleaseLiveness(wctx, lease, gone)
	}
	if dnsDirty {
		// One write for every node this replica hears: a new snapshot
		// reaching a thousand nodes is a few writes, not a thousand.
		dnsErr = s.store.PutDNSVersions(wctx, s.replicaName(), lease, versions)
	}
	l.mu.Lock()
	if putErr == nil {
		for name := range puts {
			if h := l.nodes[name]; h != nil {
				h.claimed = true
			}
		}
	}
	if relErr == nil {
		for _, name := range gone {
			if h := l.nodes[name]; h != nil && l.now().Sub(h.last) > l.timeout {
				delete(l.nodes, name)
			}
		}
	}
	if dnsDirty && dnsErr == nil {
		for name, v := range versions {
			if h := l.nodes[name]; h != nil {
				h.sentDNS = v
			}
		}
	}
	l.flushed = make(chan struct{})
	l.mu.Unlock()
	close(ch)
	for what, err := range map[string]error{"claim": putErr, "release": relErr, "DNS versions": dnsErr} {
		if err != nil && ctx.Err() == nil {
			s.logger.Warn("node liveness: "+what+" failed", "err", err)
		}
	}
}
