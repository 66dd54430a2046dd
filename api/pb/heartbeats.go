package pb

import (
	"context"

	"google.golang.org/grpc"
)

// HeartbeatStream is an agent's open Heartbeats stream and what cancels
// it: the real agent's and the scale bench's simulated agents' one way
// of keeping it.
type HeartbeatStream struct {
	s      grpc.ClientStreamingClient[HeartbeatRequest, HeartbeatResponse]
	cancel context.CancelFunc
}

// Send sends one heartbeat, opening the stream first when none is open.
// After an error the stream is closed; the next Send opens another.
func (h *HeartbeatStream) Send(ctx context.Context, c NodeAgentClient, req *HeartbeatRequest) error {
	if h.s == nil {
		sctx, cancel := context.WithCancel(ctx)
		s, err := c.Heartbeats(sctx)
		if err != nil {
			cancel()
			return err
		}
		h.s, h.cancel = s, cancel
	}
	err := h.s.Send(req)
	if err != nil {
		if _, rerr := h.s.CloseAndRecv(); rerr != nil {
			err = rerr // the server's reason
		}
		h.Close()
	}
	return err
}

// Close ends the stream.
func (h *HeartbeatStream) Close() {
	if h.cancel != nil {
		h.cancel()
	}
	h.s, h.cancel = nil, nil
}
