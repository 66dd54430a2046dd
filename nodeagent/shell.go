package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/nodeagent/logs"
	"github.com/berth-dev/berth/nodeagent/runtime"
	"github.com/berth-dev/berth/pki"
	"github.com/berth-dev/berth/pki/enroll"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// shellRuntime is what NodeShell needs of the container runtime.
type shellRuntime interface {
	Logs() *logs.Store
	Exec(ctx context.Context, instanceID string, o runtime.ExecOptions) (int, error)
	InstanceIP(ctx context.Context, instanceID string) (string, error)
}

var _ shellRuntime = (*runtime.Runtime)(nil)

// shellServer serves NodeShell (logs, exec, port-forward) to control
// plane replicas only: its listener takes nothing but a replica's
// certificate. What it serves is limited to the containers of this node.
type shellServer struct {
	pb.UnimplementedNodeShellServer
	mu sync.RWMutex
	rt shellRuntime // nil until the runtime is up
}

func (s *shellServer) runtime() (shellRuntime, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.rt == nil {
		return nil, status.Error(codes.Unavailable, "the node's runtime is not up yet")
	}
	return s.rt, nil
}

func (s *shellServer) setRuntime(rt shellRuntime) {
	s.mu.Lock()
	s.rt = rt
	s.mu.Unlock()
}

// listenShell opens the NodeShell listener: on addr, or on the node's
// address with a port of the kernel's choosing. The returned address is
// what the control plane is told (the node's address when addr names no
// host).
func listenShell(addr, nodeAddr string) (net.Listener, string, error) {
	if addr == "" {
		addr = net.JoinHostPort(nodeAddr, "0")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("agent: shell listener on %s: %w", addr, err)
	}
	host, _, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = nodeAddr
	}
	return ln, net.JoinHostPort(host, strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)), nil
}

func newShellGRPC(creds *enroll.Credentials, srv *shellServer) *grpc.Server {
	g := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(pki.ShellServerTLS(creds.KeyPair, creds.Pool))),
		grpc.MaxRecvMsgSize(1<<20),
		grpc.MaxConcurrentStreams(256),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	pb.RegisterNodeShellServer(g, srv)
	return g
}

func shellErr(err error) error {
	switch {
	case errors.Is(err, runtime.ErrNotFound), errors.Is(err, logs.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, runtime.ErrNotRunning):
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(codes.Internal, err.Error())
}

// Logs streams one instance's logs, or those of every instance of a
// service this node has (running, stopped or gone within the retention):
// one instance after the other, or all at once when following.
func (s *shellServer) Logs(req *pb.LogsRequest, stream grpc.ServerStreamingServer[pb.LogLine]) error {
	rt, err := s.runtime()
	if err != nil {
		return err
	}
	instances := []string{req.Instance}
	if req.Instance != "" && req.Namespace != "" {
		// The control plane authorised the caller for this namespace
		// only: another namespace's instance is not found.
		if m := rt.Logs().MetaOf(req.Instance); m.Namespace != req.Namespace {
			return status.Errorf(codes.NotFound, "instance %s: no logs in namespace %s", req.Instance, req.Namespace)
		}
	}
	if req.Instance == "" {
		if req.Service == "" || req.Namespace == "" {
			return status.Error(codes.InvalidArgument, "logs: an instance, or a namespace and a service, is required")
		}
		instances = rt.Logs().Instances(req.Namespace, req.Service)
		sort.Strings(instances)
	}
	o := logs.ReadOptions{Previous: req.Previous, Tail: int(req.Tail), Follow: req.Follow}
	if req.Since != nil {
		o.Since = req.Since.AsTime()
	}
	var mu sync.Mutex
	read := func(id string) error {
		err := rt.Logs().Read(stream.Context(), id, o, func(l logs.Line) error {
			mu.Lock()
			defer mu.Unlock()
			return stream.Send(&pb.LogLine{Instance: id, Time: timestamppb.New(l.Time), Stream: l.Stream, Text: l.Text, Partial: l.Partial})
		})
		if req.Instance == "" && errors.Is(err, logs.ErrNotFound) {
			return nil // a service's instance without that run (--previous)
		}
		return err
	}
	if !req.Follow || len(instances) == 1 {
		for _, id := range instances {
			if err := read(id); err != nil {
				return shellErr(err)
			}
		}
		return nil
	}
	var g errgroup.Group
	for _, id := range instances {
		g.Go(func() error { return read(id) })
	}
	if err := g.Wait(); err != nil {
		return shellErr(err)
	}
	return nil
}

// streamWriter sends what is written as stdout or stderr messages.
type streamWriter struct {
	mu     *sync.Mutex
	stream grpc.BidiStreamingServer[pb.ExecInput, pb.ExecOutput]
	stderr bool
}

func (w *streamWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	total := len(p)
	for len(p) > 0 {
		n := min(len(p), 32<<10)
		out := &pb.ExecOutput{Stdout: p[:n]}
		if w.stderr {
			out = &pb.ExecOutput{Stderr: p[:n]}
		}
		if err := w.stream.Send(out); err != nil {
			return 0, err
		}
		p = p[n:]
	}
	return total, nil
}

// Exec runs a process in one of this node's containers.
func (s *shellServer) Exec(stream grpc.BidiStreamingServer[pb.ExecInput, pb.ExecOutput]) error {
	rt, err := s.runtime()
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil || start.Instance == "" || len(start.Command) == 0 {
		return status.Error(codes.InvalidArgument, "exec: the first message must name the instance and the command")
	}
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	resize := make(chan runtime.TerminalSize, 4)
	var stdin io.Reader
	var stdinW *io.PipeWriter
	if start.Stdin {
		var r *io.PipeReader
		r, stdinW = io.Pipe()
		stdin = r
	}
	go func() {
		// Input until the caller is done; a broken stream ends the process.
		defer func() {
			if stdinW != nil {
				stdinW.Close()
			}
		}()
		for {
			in, err := stream.Recv()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					cancel()
				}
				return
			}
			if len(in.Stdin) > 0 && stdinW != nil {
				if _, err := stdinW.Write(in.Stdin); err != nil {
					return
				}
			}
			if in.StdinEof && stdinW != nil {
				stdinW.Close()
				stdinW = nil
			}
			if sz := in.GetResize(); sz != nil {
				select {
				case resize <- runtime.TerminalSize{Width: sz.Width, Height: sz.Height}:
				default:
				}
			}
		}
	}()
	var mu sync.Mutex
	o := runtime.ExecOptions{Command: start.Command, TTY: start.Tty, Stdin: stdin, Resize: resize,
		Stdout: &streamWriter{mu: &mu, stream: stream}, Stderr: &streamWriter{mu: &mu, stream: stream, stderr: true}}
	if sz := start.GetSize(); sz != nil {
		o.Size = runtime.TerminalSize{Width: sz.Width, Height: sz.Height}
	}
	code, err := rt.Exec(ctx, start.Instance, o)
	if err != nil {
		return shellErr(err)
	}
	mu.Lock()
	defer mu.Unlock()
	return stream.Send(&pb.ExecOutput{Exited: true, ExitCode: int32(code)})
}

// PortForward carries one connection to a port of one of this node's
// containers.
func (s *shellServer) PortForward(stream grpc.BidiStreamingServer[pb.PortForwardData, pb.PortForwardData]) error {
	rt, err := s.runtime()
	if err != nil {
		return err
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil || start.Instance == "" || start.Port == 0 || start.Port > 65535 {
		return status.Error(codes.InvalidArgument, "port-forward: the first message must name the instance and a port (1-65535)")
	}
	ip, err := rt.InstanceIP(stream.Context(), start.Instance)
	if err != nil {
		return shellErr(err)
	}
	var d net.Dialer
	dctx, cancel := context.WithTimeout(stream.Context(), 5*time.Second)
	conn, err := d.DialContext(dctx, "tcp", net.JoinHostPort(ip, strconv.Itoa(int(start.Port))))
	cancel()
	if err != nil {
		return status.Errorf(codes.Unavailable, "port-forward: %s port %d: %v", start.Instance, start.Port, err)
	}
	defer conn.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			in, err := stream.Recv()
			if err != nil {
				conn.(*net.TCPConn).CloseWrite()
				return
			}
			if _, err := conn.Write(in.Data); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := conn.Read(buf)
		if n > 0 {
			if serr := stream.Send(&pb.PortForwardData{Data: buf[:n]}); serr != nil {
				return serr
			}
		}
		if err != nil {
			break
		}
	}
	select {
	case <-done:
	case <-stream.Context().Done():
	case <-time.After(time.Second):
	}
	return nil
}
