package apiserver

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/store"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// JoinTokenHeader is the gRPC metadata key agents send their token in.
const JoinTokenHeader = pb.JoinTokenHeader

// tokenCache remembers recently checked tokens so heartbeats do not read
// etcd each time.
type tokenCache struct {
	mu   sync.Mutex
	good map[string]time.Time
}

func (t *tokenCache) ok(token string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	until, ok := t.good[token]
	return ok && time.Now().Before(until)
}

func (t *tokenCache) add(token string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.good == nil {
		t.good = map[string]time.Time{}
	}
	t.good[token] = time.Now().Add(time.Minute)
}

func (s *Server) checkJoinToken(ctx context.Context, method string) error {
	if !s.cfg.RequireJoinToken || !strings.HasPrefix(method, "/berth.v1.NodeAgent/") {
		return nil
	}
	var token string
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(JoinTokenHeader); len(v) > 0 {
			token = v[0]
		}
	}
	if token != "" && s.tokens.ok(token) {
		return nil
	}
	valid, err := s.store.CheckJoinToken(ctx, token)
	if err != nil {
		return storeErr(err)
	}
	if !valid {
		from := "unknown"
		if p, ok := peer.FromContext(ctx); ok {
			from = p.Addr.String()
		}
		// The token itself is never logged.
		s.logger.Warn("agent refused: bad or missing join token", "from", from, "method", method, "tokenPresent", token != "")
		if token == "" {
			return status.Error(codes.Unauthenticated, "join token missing: create one on the server with `berth token create` and start the agent with --join-token")
		}
		return status.Error(codes.Unauthenticated, "join token rejected: it is not one the cluster issued (create one with `berth token create`)")
	}
	s.tokens.add(token)
	return nil
}

// UnaryInterceptor checks join tokens on NodeAgent calls.
func (s *Server) UnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := s.checkJoinToken(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// StreamInterceptor checks join tokens on NodeAgent streams.
func (s *Server) StreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := s.checkJoinToken(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// CreateJoinToken issues a join token. The API listens on loopback unless
// configured otherwise, so only the machine's operator can call it.
func (s *Server) CreateJoinToken(ctx context.Context, req *pb.CreateJoinTokenRequest) (*pb.CreateJoinTokenResponse, error) {
	token, err := s.store.CreateJoinToken(ctx, req.Description)
	if err != nil {
		return nil, storeErr(err)
	}
	_ = s.store.RecordEvent(ctx, store.Event{Object: "cluster", Reason: "JoinTokenCreated", Message: "join token created: " + req.Description})
	return &pb.CreateJoinTokenResponse{Token: token}, nil
}

// CordonNode marks a node (un)schedulable.
func (s *Server) CordonNode(ctx context.Context, req *pb.CordonNodeRequest) (*pb.CordonNodeResponse, error) {
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "cordon: node name is required")
	}
	if _, err := s.store.UpdateNode(ctx, req.Name, func(n *api.Node) bool {
		if n.Cordoned == req.Cordon {
			return false
		}
		n.Cordoned = req.Cordon
		return true
	}); err != nil {
		return nil, storeErr(err)
	}
	reason, msg := "NodeCordoned", "no new instances will be placed on node "+req.Name
	if !req.Cordon {
		reason, msg = "NodeUncordoned", "node "+req.Name+" accepts new instances again"
	}
	_ = s.store.RecordEvent(ctx, store.Event{Object: "node/" + req.Name, Reason: reason, Message: msg})
	return &pb.CordonNodeResponse{}, nil
}

// DrainNode cordons a node and drains its instances: each leaves
// discovery, a replacement is placed elsewhere, and the container stops
// through the one stop path.
func (s *Server) DrainNode(ctx context.Context, req *pb.DrainNodeRequest) (*pb.DrainNodeResponse, error) {
	if _, err := s.CordonNode(ctx, &pb.CordonNodeRequest{Name: req.Name, Cordon: true}); err != nil {
		return nil, err
	}
	for attempt := 0; attempt < 10; attempt++ {
		v := s.cache.View()
		var changes []store.InstanceChange
		now := time.Now().UTC()
		for _, vi := range v.Instances {
			in := vi.Instance
			if in.Node != req.Name || in.Draining || in.Desired != api.DesiredRunning {
				continue
			}
			in.Draining, in.DrainSince = true, now
			changes = append(changes, store.InstanceChange{Instance: in, ModRevision: vi.ModRevision})
		}
		err := s.store.CommitInstances(ctx, changes)
		if err == nil {
			_ = s.store.RecordEvent(ctx, store.Event{Object: "node/" + req.Name, Reason: "NodeDrained", Message: fmt.Sprintf("%d instances draining off node %s", len(changes), req.Name)})
			return &pb.DrainNodeResponse{InstancesDraining: int32(len(changes))}, nil
		}
		if err != store.ErrConflict {
			return nil, storeErr(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, status.Errorf(codes.Aborted, "drain %s: instances kept changing; try again", req.Name)
}

// WatchNodes streams the node list when addresses, subnets or readiness
// change.
func (s *Server) WatchNodes(req *pb.WatchNodesRequest, stream pb.NodeAgent_WatchNodesServer) error {
	changes, unsubscribe := s.cache.Subscribe()
	defer unsubscribe()
	var last string
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-s.cache.Ready():
		}
		v := s.cache.View()
		msg := &pb.NodeList{}
		var keys []string
		for i := range v.Nodes {
			n := v.Nodes[i]
			msg.Nodes = append(msg.Nodes, &pb.Node{Name: n.Name, Address: n.Address, PodCidr: n.PodCIDR, Ready: n.Ready, State: n.State})
			keys = append(keys, fmt.Sprintf("%s/%s/%s/%t", n.Name, n.Address, n.PodCIDR, n.Ready))
		}
		sort.Strings(keys)
		if key := strings.Join(keys, ","); key != last || last == "" {
			last = key + " "
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changes:
		}
	}
}
