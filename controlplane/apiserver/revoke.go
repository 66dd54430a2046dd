package apiserver

import (
	"context"
	"sync"

	"github.com/berth-dev/berth/controlplane/authz"
)

// openStreams holds the streams whose credentials must be checked again
// when the authentication state changes (a token revoked, a node removed,
// a certificate revoked). One goroutine checks them all and lives while
// any is open: a goroutine per stream waiting for the same change was a
// fifth of the control plane's goroutines at 1,000 nodes (four streams an
// agent), each with a stack of its own.
type openStreams struct {
	mu      sync.Mutex
	streams map[*openStream]struct{}
	quit    chan struct{} // closed when the last stream leaves; nil: no checker running
}

type openStream struct {
	ctx    context.Context // the transport's stream context, whose credentials are checked
	cancel context.CancelFunc
	p      authz.Principal
	method string
}

// watch registers a stream until the returned func is called; cancel is
// called when its credentials stop authenticating.
func (s *Server) watch(o *openStream) (stop func()) {
	r := &s.open
	r.mu.Lock()
	if r.streams == nil {
		r.streams = map[*openStream]struct{}{}
	}
	r.streams[o] = struct{}{}
	if r.quit == nil {
		r.quit = make(chan struct{})
		changed, unsubscribe := s.cfg.Auth.Changed()
		go s.checkOnChange(changed, unsubscribe, r.quit)
	}
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		delete(r.streams, o)
		if len(r.streams) == 0 && r.quit != nil {
			close(r.quit)
			r.quit = nil
		}
	}
}

// checkOnChange authenticates every open stream again after each change
// and cuts those that no longer pass.
func (s *Server) checkOnChange(changed <-chan struct{}, unsubscribe func(), quit <-chan struct{}) {
	defer unsubscribe()
	for {
		select {
		case <-quit:
			return
		case <-changed:
		}
		s.open.mu.Lock()
		streams := make([]*openStream, 0, len(s.open.streams))
		for o := range s.open.streams {
			streams = append(streams, o)
		}
		s.open.mu.Unlock()
		for _, o := range streams {
			if _, err := s.authenticate(o.ctx); err != nil {
				s.logger.Warn("stream cut: credential revoked", "caller", o.p.String(), "method", o.method)
				o.cancel()
			}
		}
	}
}
