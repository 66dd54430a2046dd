package xds

import (
	"testing"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// With room for one large response in flight, a second gateway's large
// response waits until the first gateway answers its own, though the
// first's answer arrives behind requests the handler has not read yet.
func TestLargeResponsesAreThrottled(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PushConcurrency, cfg.PushThrottleBytes = 1, 1 // every response is "large"
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, s)
	if err := s.Update(snapshotAt(1)); err != nil {
		t.Fatal(err)
	}
	first := dialDelta(t, s.Addr(), "gw-1", nil, TypeURLs...)
	held := first.recv() // unanswered: holds the one slot
	second := dialDelta(t, s.Addr(), "gw-2", nil, TypeURLs...)
	got := make(chan *discoverypb.DeltaDiscoveryResponse, 1)
	go func() {
		resp, err := second.stream.Recv()
		if err == nil {
			got <- resp
		}
	}()
	select {
	case <-got:
		t.Fatal("the second gateway got a large response while the first's was unanswered")
	case <-time.After(300 * time.Millisecond):
	}
	first.ack(held)
	go func() { // the first gateway answers the rest of its responses
		for {
			resp, err := first.stream.Recv()
			if err != nil {
				return
			}
			if first.stream.Send(&discoverypb.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce}) != nil {
				return
			}
		}
	}()
	select {
	case <-got:
	case <-time.After(3 * time.Second):
		t.Fatal("the second gateway got nothing after the first answered")
	}
}

// A gateway that never answers (stuck, or holding the slot on purpose)
// keeps it PushAnswerWait at most: the other gateways' large responses
// then go out without it.
func TestASilentGatewayHoldsTheThrottleBriefly(t *testing.T) {
	cfg := DefaultConfig()
	cfg.PushConcurrency, cfg.PushThrottleBytes, cfg.PushAnswerWait = 1, 1, 300*time.Millisecond
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runServer(t, s)
	if err := s.Update(snapshotAt(1)); err != nil {
		t.Fatal(err)
	}
	silent := dialDelta(t, s.Addr(), "gw-silent", nil, TypeURLs...)
	silent.recv() // never answered
	other := dialDelta(t, s.Addr(), "gw-other", nil, TypeURLs...)
	got := make(chan *discoverypb.DeltaDiscoveryResponse)
	go func() {
		for {
			resp, err := other.stream.Recv()
			if err != nil {
				return
			}
			got <- resp
		}
	}()
	// Each of the silent gateway's responses holds the slot once (four
	// types, 300 ms each): the other's four arrive within about that.
	for i := range TypeURLs {
		select {
		case resp := <-got:
			other.ack(resp)
		case <-time.After(10 * time.Second):
			t.Fatalf("the other gateway got %d of its %d responses: the silent one holds the throttle", i, len(TypeURLs))
		}
	}
}
