package xds

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/peer"
)

// callbacks record subscriptions, ACKs and NACKs per stream.
// go-control-plane calls them from each stream's goroutine, before it acts
// on a request and before it sends a response.
func (s *Server) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc:   func(ctx context.Context, id int64, _ string) error { return s.onOpen(ctx, streamKey{id: id}) },
		StreamClosedFunc: func(id int64, n *core.Node) { s.onClosed(streamKey{id: id}, n) },
		DeltaStreamOpenFunc: func(ctx context.Context, id int64, _ string) error {
			return s.onOpen(ctx, streamKey{delta: true, id: id})
		},
		DeltaStreamClosedFunc:   func(id int64, n *core.Node) { s.onClosed(streamKey{delta: true, id: id}, n) },
		StreamRequestFunc:       s.onStreamRequest,
		StreamResponseFunc:      s.onStreamResponse,
		StreamDeltaRequestFunc:  s.onDeltaRequest,
		StreamDeltaResponseFunc: s.onDeltaResponse,
	}
}

func (s *Server) onOpen(ctx context.Context, key streamKey) error {
	st := &streamState{connectedAt: time.Now(), delta: key.delta, types: map[string]*typeState{}}
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		st.address = p.Addr.String()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams[key] = st
	s.metrics.connectedStreams.Set(float64(len(s.streams)))
	s.notifyLocked()
	return nil
}

func (s *Server) onClosed(key streamKey, node *core.Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.streams[key]; st != nil && st.pendingReq != nil {
		delete(s.deltaReqs, st.pendingReq)
	}
	delete(s.streams, key)
	s.metrics.connectedStreams.Set(float64(len(s.streams)))
	s.notifyLocked()
	s.log.Info("xds client disconnected", "node", node.GetId(), "stream", key.id, "delta", key.delta)
}

func (s *Server) identifyLocked(st *streamState, key streamKey, node *core.Node) {
	if st.nodeID == "" && node.GetId() != "" {
		st.nodeID = node.GetId()
		st.view = nodeView(node)
		s.log.Info("xds client connected", "node", st.nodeID, "stream", key.id, "delta", key.delta,
			"view", st.view.String(), "address", st.address)
	}
}

// onStreamRequest classifies a state-of-the-world request as a
// subscription, an ACK or a NACK.
//
// On a NACK it also rewrites req.VersionInfo to the rejected version. The
// request goes on to the snapshot cache, which compares VersionInfo with
// its current version and, on a NACK (which carries the last good
// version), would otherwise re-send the rejected snapshot at once and
// forever. Told the client holds the rejected version, the cache waits for
// a newer snapshot instead.
func (s *Server) onStreamRequest(id int64, req *discoverypb.DiscoveryRequest) error {
	t := req.GetTypeUrl()
	key := streamKey{id: id}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[key]
	if st == nil {
		return nil
	}
	s.identifyLocked(st, key, req.GetNode())
	ts := st.typeState(t)
	switch {
	case req.GetResponseNonce() == "":
		// A first request. After a reconnect it names the version the
		// client still runs, which is as good as an ACK of it.
		if v := req.GetVersionInfo(); v != "" && parseVersion(v) > parseVersion(ts.acked) {
			ts.acked = v
		}
	case req.GetResponseNonce() != ts.sent.nonce:
		// Stale nonce: the server ignores the request, so do we.
		return nil
	case req.GetErrorDetail() == nil:
		ts.acked = req.GetVersionInfo()
		s.metrics.acks.WithLabelValues(typeLabel(t)).Inc()
	default:
		s.recordNackLocked(st, ts, t, ts.sent.version, req.GetErrorDetail().GetMessage())
		req.VersionInfo = ts.sent.version
	}
	s.notifyLocked()
	return nil
}

func (s *Server) onStreamResponse(_ context.Context, id int64, req *discoverypb.DiscoveryRequest, resp *discoverypb.DiscoveryResponse) {
	t := req.GetTypeUrl()
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.streams[streamKey{id: id}]; st != nil {
		st.typeState(t).sent = sentState{nonce: resp.GetNonce(), version: resp.GetVersionInfo()}
	}
	s.metrics.responses.WithLabelValues(typeLabel(t), "sotw").Inc()
	s.metrics.resourcesSent.WithLabelValues(typeLabel(t), "sotw").Add(float64(len(resp.GetResources())))
}

// onDeltaRequest classifies a delta request. A delta ACK or NACK names no
// version, only the nonce of the response it answers. Whether the request
// proves the client has seen every response of its type (current) is
// decided here and used by CreateDeltaWatch, which go-control-plane calls
// next with the same request.
func (s *Server) onDeltaRequest(id int64, req *discoverypb.DeltaDiscoveryRequest) error {
	t := req.GetTypeUrl()
	key := streamKey{delta: true, id: id}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[key]
	if st == nil {
		return nil
	}
	s.identifyLocked(st, key, req.GetNode())
	ts := st.typeState(t)
	current := false
	switch {
	case req.GetResponseNonce() == "":
		current = ts.sent.nonce == ""
	case req.GetResponseNonce() != ts.sent.nonce:
		// Answers an older response: a newer one is on its way.
	case req.GetErrorDetail() == nil:
		ts.blocked = false
		current = true
		s.metrics.acks.WithLabelValues(typeLabel(t)).Inc()
	default:
		// The delta server records what it sent as held, so a NACK is not
		// re-sent; the client stays blocked until it ACKs a later response.
		ts.blocked = true
		ts.nackNonce = ts.sent.nonce
		s.recordNackLocked(st, ts, t, ts.sent.version, req.GetErrorDetail().GetMessage())
	}
	ts.current = current && !ts.blocked
	if st.pendingReq != nil {
		delete(s.deltaReqs, st.pendingReq)
	}
	st.pendingReq = req
	s.deltaReqs[req] = key
	s.notifyLocked()
	return nil
}

func (s *Server) onDeltaResponse(id int64, req *discoverypb.DeltaDiscoveryRequest, resp *discoverypb.DeltaDiscoveryResponse) {
	t := req.GetTypeUrl()
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.streams[streamKey{delta: true, id: id}]; st != nil {
		st.typeState(t).sent = sentState{nonce: resp.GetNonce(), version: resp.GetSystemVersionInfo()}
	}
	s.metrics.responses.WithLabelValues(typeLabel(t), "delta").Inc()
	s.metrics.resourcesSent.WithLabelValues(typeLabel(t), "delta").Add(float64(len(resp.GetResources())))
}

func (s *Server) recordNackLocked(st *streamState, ts *typeState, t, version, msg string) {
	n := NackStatus{TypeURL: t, Version: version, Error: msg, At: time.Now()}
	ts.nack = &n
	st.lastNack = &n
	s.metrics.nacks.WithLabelValues(typeLabel(t)).Inc()
	s.log.Warn("xds client rejected configuration", "node", st.nodeID, "type", t, "version", n.Version, "error", n.Error)
}

// muxCache sends state-of-the-world watches to the snapshot cache and
// delta watches to the type's deltaCache, and records which delta clients
// are up to date.
type muxCache struct{ s *Server }

var _ cachev3.Cache = (*muxCache)(nil)

func (m *muxCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	return m.s.sotw.CreateWatch(req, sub, ch)
}

func (m *muxCache) Fetch(ctx context.Context, req *cachev3.Request) (cachev3.Response, error) {
	return m.s.sotw.Fetch(ctx, req)
}

// CreateDeltaWatch answers or opens the watch under pubMu, so no publish
// runs between "nothing to send" and the record that the client is up to
// date.
func (m *muxCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	s := m.s
	t := req.GetTypeUrl()
	dc := s.delta[t]
	if dc == nil {
		return nil, errors.New("xds: no delta cache for type " + t)
	}
	s.pubMu.RLock()
	defer s.pubMu.RUnlock()

	s.mu.Lock()
	key := s.deltaReqs[req]
	delete(s.deltaReqs, req)
	var ts *typeState
	var current bool
	var known uint64
	if st := s.streams[key]; st != nil {
		if st.pendingReq == req {
			st.pendingReq = nil
		}
		ts = st.typeState(t)
		current, known = ts.current, parseVersion(ts.sent.version)
	}
	s.mu.Unlock()

	dc.mu.Lock()
	resp, w := dc.createWatch(req, sub, ch, known, ts, current)
	dc.mu.Unlock()
	if resp != nil {
		ch <- resp // buffered by the delta server for every type: never blocks
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if ts != nil {
		if w == nil {
			ts.watch = nil
		} else {
			ts.watch = w
			if current && ts.applied < s.published {
				ts.applied = s.published
				s.notifyLocked()
			}
		}
	}
	if w == nil {
		return nil, nil
	}
	return func() {
		dc.cancel(w)
		s.mu.Lock()
		if ts != nil && ts.watch == w {
			ts.watch = nil
		}
		s.mu.Unlock()
	}, nil
}

func sortGateways(gs []GatewayStatus) {
	slices.SortFunc(gs, func(a, b GatewayStatus) int {
		return cmp.Or(cmp.Compare(a.NodeID, b.NodeID), a.ConnectedAt.Compare(b.ConnectedAt), cmp.Compare(a.StreamID, b.StreamID))
	})
}
