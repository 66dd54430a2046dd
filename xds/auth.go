package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berth-dev/berth/pki"
)

// Auth makes the xDS server serve only gateways: mutual TLS with a
// client certificate from the cluster CA whose role is gateway, a node
// id equal to the certificate's name on every request and load report,
// and the stream cut when the identity is revoked.
type Auth struct {
	// TLS is the listener's configuration; it must require and verify
	// client certificates (pki.ServerTLS(..., true)).
	TLS *tls.Config
	// Check refuses an identity that is revoked or of an older generation.
	Check func(pki.Identity) error
	// Changed wakes open streams to check their identity again.
	Changed func() (<-chan struct{}, func())
	// MaxStreamsPerGateway bounds the streams (ADS and LRS) one gateway
	// identity may hold open (default 8: ADS, LRS and a reconnect's
	// overlap); MaxStreams bounds them all (default 10,000).
	MaxStreamsPerGateway, MaxStreams int
}

// streamSlots counts open streams per gateway identity.
type streamSlots struct {
	mu    sync.Mutex
	per   map[string]int
	total int
}

func (s *Server) acquireStream(name string) error {
	a := s.auth
	s.slots.mu.Lock()
	defer s.slots.mu.Unlock()
	if s.slots.per == nil {
		s.slots.per = map[string]int{}
	}
	if s.slots.per[name] >= a.MaxStreamsPerGateway {
		return status.Errorf(codes.ResourceExhausted, "xds: gateway %s already holds %d streams, the most one gateway may", name, a.MaxStreamsPerGateway)
	}
	if s.slots.total >= a.MaxStreams {
		return status.Errorf(codes.ResourceExhausted, "xds: %d streams open, the most this control plane serves", a.MaxStreams)
	}
	s.slots.per[name]++
	s.slots.total++
	return nil
}

func (s *Server) releaseStream(name string) {
	s.slots.mu.Lock()
	defer s.slots.mu.Unlock()
	s.slots.total--
	if s.slots.per[name]--; s.slots.per[name] <= 0 {
		delete(s.slots.per, name)
	}
}

// SetAuth turns authentication on; call it before Run.
func (s *Server) SetAuth(a Auth) {
	if a.MaxStreamsPerGateway <= 0 {
		a.MaxStreamsPerGateway = 8
	}
	if a.MaxStreams <= 0 {
		a.MaxStreams = 10000
	}
	s.auth = &a
}

// nodeOf is any xDS or LRS request that names its node.
type nodeOf interface{ GetNode() *core.Node }

func (s *Server) streamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	id, _, ok := pki.PeerIdentity(ss.Context())
	if !ok {
		s.log.Warn("xds stream refused: no cluster certificate", "method", info.FullMethod)
		return status.Error(codes.Unauthenticated, "xds: a gateway certificate from the cluster CA is required (join with `berth gateway --join-token`)")
	}
	if id.Role != pki.RoleGateway {
		s.log.Warn("xds stream refused: not a gateway", "identity", id.String(), "method", info.FullMethod)
		return status.Errorf(codes.PermissionDenied, "xds: permission denied: %s is not a gateway", id)
	}
	if err := s.auth.Check(id); err != nil {
		s.log.Warn("xds stream refused", "identity", id.String(), "err", err)
		return status.Errorf(codes.Unauthenticated, "xds: %v", err)
	}
	if err := s.acquireStream(id.Name); err != nil {
		s.log.Warn("xds stream refused", "identity", id.String(), "err", err)
		return err
	}
	defer s.releaseStream(id.Name)
	ctx, cancel := context.WithCancelCause(ss.Context())
	defer cancel(nil)
	if s.auth.Changed != nil {
		changed, stop := s.auth.Changed()
		defer stop()
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-changed:
					if err := s.auth.Check(id); err != nil {
						s.log.Warn("xds stream cut: gateway revoked", "identity", id.String())
						cancel(status.Errorf(codes.Unauthenticated, "xds: %v", err))
						return
					}
				}
			}
		}()
	}
	err := handler(srv, &gatewayStream{ServerStream: ss, ctx: ctx, cancel: cancel, id: id, log: s.log})
	// go-control-plane ends a stream whose receive failed without an
	// error: the refusal is what the client must see.
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

type gatewayStream struct {
	grpc.ServerStream
	ctx    context.Context
	cancel context.CancelCauseFunc
	id     pki.Identity
	log    *slog.Logger
}

func (g *gatewayStream) Context() context.Context { return g.ctx }

// RecvMsg receives, or fails as soon as the stream is refused: the
// handlers (go-control-plane's among them) end a stream only when a
// receive fails, and a revoked gateway that sends nothing must be cut
// too. The receive left behind ends with the stream.
func (g *gatewayStream) RecvMsg(m any) error {
	done := make(chan error, 1)
	go func() { done <- g.ServerStream.RecvMsg(m) }()
	select {
	case err := <-done:
		if err != nil {
			return err
		}
	case <-g.ctx.Done():
		return context.Cause(g.ctx)
	}
	if g.ctx.Err() != nil {
		return context.Cause(g.ctx)
	}
	if n, ok := m.(nodeOf); ok && n.GetNode() != nil && n.GetNode().GetId() != g.id.Name {
		g.log.Warn("xds request refused: node id does not match the certificate", "identity", g.id.String(), "claimed", n.GetNode().GetId())
		err := status.Error(codes.PermissionDenied, fmt.Sprintf("xds: permission denied: node id %q is not this certificate's gateway %q", n.GetNode().GetId(), g.id.Name))
		g.cancel(err)
		return err
	}
	return nil
}
