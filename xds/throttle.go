package xds

import (
	"context"
	"fmt"
	"reflect"
	"sync"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// Large responses are throttled (Istio's push throttle is the model):
// at most Config.PushConcurrency responses of Config.PushThrottleBytes or
// more are in flight at once, each from its encoding until its gateway
// answers it (ACK or NACK) or Config.PushAnswerWait passes. A gateway needs every
// endpoint; encoded for 1,000 gateways at once (a deploy's merged changes,
// a control plane's restart) those responses sat in the server's
// transport buffers together, more than a gigabyte at 10,000 endpoints.
// Small responses (an endpoint changing) are never held.

func (s *Server) streamThrottle(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, &throttledStream{ServerStream: ss, s: s, awaited: map[string]*awaited{}})
}

// throttledStream reads the client's messages ahead of the handler (into
// a small queue): an answer must be seen while the handler waits for a
// slot in SendMsg, and go-control-plane reads the next request only after
// it sent.
type throttledStream struct {
	grpc.ServerStream
	s       *Server
	mu      sync.Mutex
	awaited map[string]*awaited // by type URL

	start sync.Once
	queue chan received
	end   error // the receive error that ended the read-ahead
}

// awaited is a throttled response sent and not yet answered.
type awaited struct {
	nonce    string
	answered chan struct{}
}

type received struct {
	m   proto.Message
	err error
}

func (t *throttledStream) SendMsg(m any) error {
	var typeURL, nonce string
	switch r := m.(type) {
	case *discoverypb.DeltaDiscoveryResponse:
		typeURL, nonce = r.GetTypeUrl(), r.GetNonce()
	case *discoverypb.DiscoveryResponse:
		typeURL, nonce = r.GetTypeUrl(), r.GetNonce()
	}
	pm, ok := m.(proto.Message)
	if nonce == "" || !ok || proto.Size(pm) < t.s.cfg.PushThrottleBytes {
		return t.ServerStream.SendMsg(m)
	}
	ctx := t.Context()
	select {
	case t.s.pushSlots <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	t.s.metrics.throttled.Inc()
	a := &awaited{nonce: nonce, answered: make(chan struct{})}
	// Registered before the send: the answer may come back at once.
	t.mu.Lock()
	t.awaited[typeURL] = a
	t.mu.Unlock()
	go func() {
		timer := time.NewTimer(t.s.cfg.PushAnswerWait)
		defer timer.Stop()
		select {
		case <-a.answered:
		case <-timer.C:
		case <-ctx.Done():
		}
		<-t.s.pushSlots
	}()
	return t.ServerStream.SendMsg(m)
}

func (t *throttledStream) RecvMsg(m any) error {
	pm, ok := m.(proto.Message)
	if !ok {
		return t.ServerStream.RecvMsg(m)
	}
	t.start.Do(func() {
		t.queue = make(chan received, 64)
		go t.readAhead(reflect.TypeOf(pm).Elem())
	})
	select {
	case r, ok := <-t.queue:
		if !ok {
			return t.end
		}
		if r.err != nil {
			return r.err
		}
		proto.Reset(pm)
		proto.Merge(pm, r.m)
		return nil
	case <-t.Context().Done():
		return context.Cause(t.Context())
	}
}

// readAhead receives until the stream ends, noting each answer to a
// throttled response as it arrives.
func (t *throttledStream) readAhead(typ reflect.Type) {
	defer close(t.queue)
	for {
		m, ok := reflect.New(typ).Interface().(proto.Message)
		if !ok {
			t.end = fmt.Errorf("xds: cannot receive a %v", typ)
			return
		}
		err := t.ServerStream.RecvMsg(m)
		if err == nil {
			t.answered(m)
		} else {
			t.end = err
		}
		select {
		case t.queue <- received{m, err}:
		case <-t.Context().Done():
			return
		}
		if err != nil {
			return
		}
	}
}

// answered releases the throttled response a request answers.
func (t *throttledStream) answered(m proto.Message) {
	var typeURL, nonce string
	switch r := m.(type) {
	case *discoverypb.DeltaDiscoveryRequest:
		typeURL, nonce = r.GetTypeUrl(), r.GetResponseNonce()
	case *discoverypb.DiscoveryRequest:
		typeURL, nonce = r.GetTypeUrl(), r.GetResponseNonce()
	}
	if nonce == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if a := t.awaited[typeURL]; a != nil && a.nonce == nonce {
		close(a.answered)
		delete(t.awaited, typeURL)
	}
}
