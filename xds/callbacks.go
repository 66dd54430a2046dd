package xds

import (
	"cmp"
	"context"
	"slices"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
)

// callbacks record ACKs and NACKs per stream. go-control-plane calls them
// from each stream's goroutine, before it acts on a request and before it
// sends a response.
func (s *Server) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc:     s.onStreamOpen,
		StreamClosedFunc:   s.onStreamClosed,
		StreamRequestFunc:  s.onStreamRequest,
		StreamResponseFunc: s.onStreamResponse,
	}
}

func (s *Server) onStreamOpen(_ context.Context, id int64, _ string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.streams[id] = &streamState{
		connectedAt: time.Now(),
		subscribed:  map[string]bool{},
		acked:       map[string]string{},
		sent:        map[string]sentState{},
		nacks:       map[string]NackStatus{},
	}
	s.metrics.connectedStreams.Set(float64(len(s.streams)))
	s.notifyLocked()
	return nil
}

func (s *Server) onStreamClosed(id int64, node *core.Node) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.streams, id)
	s.metrics.connectedStreams.Set(float64(len(s.streams)))
	s.notifyLocked()
	s.log.Info("gateway disconnected", "node", node.GetId(), "stream", id)
}

// onStreamRequest classifies a request as a subscription, an ACK or a NACK.
//
// On a NACK it also rewrites req.VersionInfo to the rejected version. The
// request goes on to the snapshot cache, which compares VersionInfo with
// its current version and, on a NACK (which carries the last good
// version), would otherwise re-send the rejected snapshot at once and
// forever. Told the client holds the rejected version, the cache waits for
// a newer snapshot instead.
func (s *Server) onStreamRequest(id int64, req *discoverypb.DiscoveryRequest) error {
	t := req.GetTypeUrl()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.streams[id]
	if st == nil {
		return nil
	}
	if st.nodeID == "" && req.GetNode().GetId() != "" {
		st.nodeID = req.GetNode().GetId()
		s.log.Info("gateway connected", "node", st.nodeID, "stream", id)
	}
	st.subscribed[t] = true
	sent, hasSent := st.sent[t]
	switch {
	case req.GetResponseNonce() == "":
		// A first request. After a reconnect it names the version the
		// client still runs, which is as good as an ACK of it.
		if v := req.GetVersionInfo(); v != "" && parseVersion(v) > parseVersion(st.acked[t]) {
			st.acked[t] = v
		}
	case !hasSent || req.GetResponseNonce() != sent.nonce:
		// Stale nonce: the server ignores the request, so do we.
		return nil
	case req.GetErrorDetail() == nil:
		st.acked[t] = req.GetVersionInfo()
		s.metrics.acks.WithLabelValues(typeLabel(t)).Inc()
	default:
		n := NackStatus{TypeURL: t, Version: sent.version, Error: req.GetErrorDetail().GetMessage(), At: time.Now()}
		st.nacks[t] = n
		st.lastNack = &n
		s.metrics.nacks.WithLabelValues(typeLabel(t)).Inc()
		s.log.Warn("gateway rejected configuration", "node", st.nodeID, "type", t, "version", n.Version, "error", n.Error)
		req.VersionInfo = sent.version
	}
	s.notifyLocked()
	return nil
}

func (s *Server) onStreamResponse(_ context.Context, id int64, req *discoverypb.DiscoveryRequest, resp *discoverypb.DiscoveryResponse) {
	t := req.GetTypeUrl()
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.streams[id]; st != nil {
		st.sent[t] = sentState{nonce: resp.GetNonce(), version: resp.GetVersionInfo()}
	}
	s.metrics.responses.WithLabelValues(typeLabel(t)).Inc()
}

func sortGateways(gs []GatewayStatus) {
	slices.SortFunc(gs, func(a, b GatewayStatus) int {
		return cmp.Or(cmp.Compare(a.NodeID, b.NodeID), a.ConnectedAt.Compare(b.ConnectedAt), cmp.Compare(a.StreamID, b.StreamID))
	})
}
