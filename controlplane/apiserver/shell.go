package apiserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/pki"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// shellConns keeps one connection per node to its agent's NodeShell.
type shellConns struct {
	mu    sync.Mutex
	conns map[string]shellConn // by node name
}

type shellConn struct {
	addr string
	conn *grpc.ClientConn
}

// shell returns a NodeShell client for a node: its agent's certificate
// must name that node.
func (s *Server) shell(node *api.Node) (pb.NodeShellClient, error) {
	if node.ShellAddr == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "node %s: its agent serves no logs, exec or port-forward (an agent older than this control plane?)", node.Name)
	}
	if s.cfg.ReplicaCert == nil || s.cfg.CA == nil {
		return nil, status.Error(codes.FailedPrecondition, "this control plane has no certificate to reach node agents with")
	}
	s.shells.mu.Lock()
	defer s.shells.mu.Unlock()
	if s.shells.conns == nil {
		s.shells.conns = map[string]shellConn{}
	}
	if c, ok := s.shells.conns[node.Name]; ok {
		if c.addr == node.ShellAddr {
			return pb.NewNodeShellClient(c.conn), nil
		}
		c.conn.Close()
	}
	conn, err := grpc.NewClient(node.ShellAddr, grpc.WithTransportCredentials(credentials.NewTLS(pki.ShellClientTLS(s.cfg.ReplicaCert, s.cfg.CA.Pool(), node.Name))))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "node %s shell %s: %v", node.Name, node.ShellAddr, err)
	}
	s.shells.conns[node.Name] = shellConn{addr: node.ShellAddr, conn: conn}
	return pb.NewNodeShellClient(conn), nil
}

// nodeErr says which node a NodeShell call failed on.
func nodeErr(node string, err error) error {
	st := status.Convert(err)
	if st.Code() == codes.Unavailable {
		return status.Errorf(codes.Unavailable, "node %s: its agent cannot be reached for this: %s", node, st.Message())
	}
	return status.Error(st.Code(), st.Message())
}

// instanceIn finds a live or stopped instance of namespace ns in the
// cache, and its node.
func (s *Server) instanceIn(ns, id string) (*api.Instance, *api.Node, error) {
	v := s.cache.View()
	for _, vi := range v.Instances {
		if vi.Instance.ID != id {
			continue
		}
		if vi.Instance.Namespace != ns {
			break // another namespace's: not found, as for a missing one
		}
		if vi.Instance.Node == "" {
			return nil, nil, status.Errorf(codes.FailedPrecondition, "instance %s is not placed on a node yet", id)
		}
		node := v.Node(vi.Instance.Node)
		if node == nil {
			return nil, nil, status.Errorf(codes.Unavailable, "instance %s: node %s is gone", id, vi.Instance.Node)
		}
		in := vi.Instance
		return &in, node, nil
	}
	return nil, nil, status.Errorf(codes.NotFound, "instance %s/%s: not found", ns, id)
}

// liveShellNodes are the nodes with a live heartbeat and a shell, by name.
func (s *Server) liveShellNodes() []api.Node {
	v := s.cache.View()
	var out []api.Node
	for _, n := range v.Nodes {
		if v.LiveNodes[n.Name] && n.ShellAddr != "" {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Logs streams logs from the node that runs or ran the instance; for a
// service, from every node that has logs of its instances (running,
// stopped, or gone within the agents' retention). An instance no longer
// known here (its instance record was removed) is looked for on every
// node.
func (s *Server) Logs(req *pb.LogsRequest, stream grpc.ServerStreamingServer[pb.LogLine]) error {
	ns := nsOrDefault(req.Namespace)
	ctx := stream.Context()
	q := &pb.LogsRequest{Namespace: ns, Service: req.Service, Instance: req.Instance, Follow: req.Follow, Previous: req.Previous, Since: req.Since, Tail: req.Tail}
	relay := func(node string, c grpc.ServerStreamingClient[pb.LogLine]) error {
		for {
			l, err := c.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return nodeErr(node, err)
			}
			if err := stream.Send(l); err != nil {
				return err
			}
		}
	}
	switch {
	case req.Instance != "":
		q.Service = ""
		_, node, err := s.instanceIn(ns, req.Instance)
		if status.Code(err) == codes.NotFound {
			return s.logsOfGone(ctx, q, stream)
		}
		if err != nil {
			return err
		}
		sh, err := s.shell(node)
		if err != nil {
			return err
		}
		c, err := sh.Logs(ctx, q)
		if err != nil {
			return nodeErr(node.Name, err)
		}
		return relay(node.Name, c)
	case req.Service != "":
		nodes := s.liveShellNodes()
		if !req.Follow {
			for i := range nodes {
				sh, err := s.shell(&nodes[i])
				if err != nil {
					return err
				}
				c, err := sh.Logs(ctx, q)
				if err == nil {
					err = relay(nodes[i].Name, c)
				}
				if err != nil && status.Code(err) != codes.Unavailable {
					return err
				}
			}
			return nil
		}
		var mu sync.Mutex
		g, gctx := errgroup.WithContext(ctx)
		for i := range nodes {
			g.Go(func() error {
				sh, err := s.shell(&nodes[i])
				if err != nil {
					return err
				}
				c, err := sh.Logs(gctx, q)
				if err != nil {
					return nodeErr(nodes[i].Name, err)
				}
				for {
					l, err := c.Recv()
					if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
						return nil
					}
					if err != nil {
						return nodeErr(nodes[i].Name, err)
					}
					mu.Lock()
					err = stream.Send(l)
					mu.Unlock()
					if err != nil {
						return err
					}
				}
			})
		}
		return g.Wait()
	}
	return status.Error(codes.InvalidArgument, "logs: a service or an instance is required")
}

// logsOfGone finds an instance that is no longer known on every live
// node, 16 at a time, and relays the logs of the one that has them.
func (s *Server) logsOfGone(ctx context.Context, q *pb.LogsRequest, stream grpc.ServerStreamingServer[pb.LogLine]) error {
	nodes := s.liveShellNodes()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type found struct {
		node  string
		c     grpc.ServerStreamingClient[pb.LogLine]
		first *pb.LogLine
		err   error
	}
	results := make(chan found, len(nodes))
	sem := make(chan struct{}, 16)
	for i := range nodes {
		go func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			sh, err := s.shell(&nodes[i])
			if err != nil {
				results <- found{node: nodes[i].Name, err: err}
				return
			}
			c, err := sh.Logs(ctx, q)
			if err != nil {
				results <- found{node: nodes[i].Name, err: err}
				return
			}
			l, err := c.Recv()
			results <- found{node: nodes[i].Name, c: c, first: l, err: err}
		}()
	}
	for range nodes {
		f := <-results
		if f.err != nil && !errors.Is(f.err, io.EOF) {
			continue // not there (NotFound), or unreachable
		}
		if f.first != nil {
			if err := stream.Send(f.first); err != nil {
				return err
			}
		}
		if errors.Is(f.err, io.EOF) {
			return nil // there, and empty
		}
		for {
			l, err := f.c.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return nodeErr(f.node, err)
			}
			if err := stream.Send(l); err != nil {
				return err
			}
		}
	}
	return status.Errorf(codes.NotFound, "instance %s/%s: not found, and no node has its logs (they are kept an hour after an instance is gone)", q.Namespace, q.Instance)
}

// Exec runs a process in an instance's container, through its node's
// agent.
func (s *Server) Exec(stream grpc.BidiStreamingServer[pb.ExecInput, pb.ExecOutput]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil || start.Instance == "" || len(start.Command) == 0 {
		return status.Error(codes.InvalidArgument, "exec: the first message must name the instance and the command")
	}
	ns := nsOrDefault(start.Namespace)
	in, node, err := s.instanceIn(ns, start.Instance)
	if err != nil {
		return err
	}
	if !in.Live() {
		return status.Errorf(codes.FailedPrecondition, "exec: instance %s is stopping or stopped", in.ID)
	}
	sh, err := s.shell(node)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	c, err := sh.Exec(ctx)
	if err != nil {
		return nodeErr(node.Name, err)
	}
	start.Namespace = ns
	if err := c.Send(&pb.ExecInput{Start: start}); err != nil {
		return nodeErr(node.Name, err)
	}
	s.logger.Info("exec", "instance", in.ID, "node", node.Name, "caller", principalOf(stream.Context()).String(), "command", fmt.Sprint(start.Command))
	return relay(stream, c, node.Name, cancel, func(m *pb.ExecInput) { m.Start = nil })
}

// PortForward carries one connection to a port of an instance, through
// its node's agent.
func (s *Server) PortForward(stream grpc.BidiStreamingServer[pb.PortForwardData, pb.PortForwardData]) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil || start.Instance == "" || start.Port == 0 || start.Port > 65535 {
		return status.Error(codes.InvalidArgument, "port-forward: the first message must name the instance and a port (1-65535)")
	}
	ns := nsOrDefault(start.Namespace)
	in, node, err := s.instanceIn(ns, start.Instance)
	if err != nil {
		return err
	}
	if !in.Live() {
		return status.Errorf(codes.FailedPrecondition, "port-forward: instance %s is stopping or stopped", in.ID)
	}
	sh, err := s.shell(node)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	c, err := sh.PortForward(ctx)
	if err != nil {
		return nodeErr(node.Name, err)
	}
	start.Namespace = ns
	if err := c.Send(&pb.PortForwardData{Start: start}); err != nil {
		return nodeErr(node.Name, err)
	}
	return relay(stream, c, node.Name, cancel, func(m *pb.PortForwardData) { m.Start = nil })
}

// relay carries a stream between the caller and the node's agent once the
// first message went: the caller's messages (clean drops what only the
// first may carry) to the node, the node's back; the caller's end of
// input half-closes the node's side, a broken caller cancels it.
func relay[I, O any](caller grpc.BidiStreamingServer[I, O], node grpc.BidiStreamingClient[I, O], name string, cancel context.CancelFunc, clean func(*I)) error {
	go func() {
		for {
			m, err := caller.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					node.CloseSend()
				} else {
					cancel()
				}
				return
			}
			clean(m)
			if err := node.Send(m); err != nil {
				return
			}
		}
	}()
	for {
		out, err := node.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return nodeErr(name, err)
		}
		if err := caller.Send(out); err != nil {
			return err
		}
	}
}
