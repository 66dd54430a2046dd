package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// resolveInstance takes an instance id, or a service name whose first
// ready instance is used.
func resolveInstance(ctx context.Context, cli pb.BerthClient, namespace, name string) (string, error) {
	l, err := cli.ListInstances(ctx, &pb.ListInstancesRequest{Namespace: namespace})
	if err != nil {
		return "", err
	}
	var some string
	for _, iv := range l.Instances {
		in := iv.Instance
		if in.Id == name {
			return name, nil
		}
		if in.Service == name && in.Desired == api.DesiredRunning && !in.Draining {
			if iv.Status.GetReady() && some == "" {
				some = in.Id
			}
		}
	}
	if some == "" {
		return "", fmt.Errorf("no instance %q and no ready instance of a service %q in namespace %s (see berth get instances)", name, name, namespace)
	}
	return some, nil
}

// clientFor is an API client and the instance an exec or port-forward
// names (an instance, or a service's first ready one).
func (g *globalOptions) clientFor(cmd *cobra.Command, namespace, name string) (pb.BerthClient, func(), string, error) {
	cli, done, err := g.client()
	if err != nil {
		return nil, nil, "", err
	}
	ctx, cancel := callCtx(cmd)
	defer cancel()
	id, err := resolveInstance(ctx, cli, namespace, name)
	if err != nil {
		done()
		return nil, nil, "", g.rpcErr(err)
	}
	return cli, done, id, nil
}

func newLogsCmd(g *globalOptions) *cobra.Command {
	var namespace string
	var follow, previous, timestamps, prefix bool
	var since time.Duration
	var tail int32
	cmd := &cobra.Command{
		Use:   "logs SERVICE|INSTANCE",
		Short: "Print a service's or an instance's container output, running or stopped",
		Long: `Print container output (stdout and stderr) from the node that ran it.

A service prints every instance's logs the nodes still have, running or
stopped, one after the other (each line prefixed with its instance); an
instance prints its own. Agents keep an instance's last runs, rotated at a
size cap, for an hour after its container is gone: the logs of a crashed
container or a rolled-back canary stay readable.`,
		Args:              exactArgs(1, "logs SERVICE|INSTANCE"),
		ValidArgsFunction: completeKindArgs(g, "services"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cli, done, err := g.client()
			if err != nil {
				return err
			}
			defer done()
			ctx := cmd.Context()
			req := &pb.LogsRequest{Namespace: namespace, Follow: follow, Previous: previous, Tail: tail}
			if since > 0 {
				req.Since = timestamppb.New(time.Now().Add(-since))
			}
			// An instance id, or else a service.
			lctx, cancel := callCtx(cmd)
			l, err := cli.ListInstances(lctx, &pb.ListInstancesRequest{Namespace: namespace})
			cancel()
			if err != nil {
				return g.rpcErr(err)
			}
			req.Service = args[0]
			for _, iv := range l.Instances {
				if iv.Instance.Id == args[0] {
					req.Service, req.Instance = "", args[0]
				}
			}
			stream, err := cli.Logs(ctx, req)
			if err != nil {
				return g.rpcErr(err)
			}
			out := cmd.OutOrStdout()
			multi := req.Service != "" || prefix
			n := 0
			for {
				line, err := stream.Recv()
				if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
					break
				}
				if err != nil {
					if req.Service != "" && n == 0 && status.Code(err) == codes.NotFound {
						break
					}
					return g.rpcErr(err)
				}
				n++
				var b strings.Builder
				if multi {
					b.WriteString("[" + line.Instance + "] ")
				}
				if timestamps {
					b.WriteString(line.Time.AsTime().Format(time.RFC3339Nano) + " ")
				}
				b.Write(line.Text)
				if !line.Partial {
					b.WriteByte('\n')
				}
				io.WriteString(out, b.String())
			}
			if n == 0 && req.Service != "" {
				// Nothing for a service by that name: perhaps the id of an
				// instance that is gone.
				stream, err := cli.Logs(ctx, &pb.LogsRequest{Namespace: namespace, Instance: args[0], Follow: follow, Previous: previous, Tail: tail, Since: req.Since})
				if err != nil {
					return g.rpcErr(err)
				}
				for {
					line, err := stream.Recv()
					if errors.Is(err, io.EOF) {
						return nil
					}
					if status.Code(err) == codes.NotFound {
						return fmt.Errorf("logs: no service or instance %q with logs in namespace %s", args[0], namespace)
					}
					if err != nil {
						return g.rpcErr(err)
					}
					if timestamps {
						fmt.Fprint(out, line.Time.AsTime().Format(time.RFC3339Nano)+" ")
					}
					out.Write(line.Text)
					if !line.Partial {
						fmt.Fprintln(out)
					}
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", api.DefaultNamespace, "namespace")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "go on printing what the containers write")
	cmd.Flags().BoolVarP(&previous, "previous", "p", false, "the run before the current one (the container before its last restart)")
	cmd.Flags().DurationVar(&since, "since", 0, "only lines newer than this, e.g. 10m")
	cmd.Flags().Int32Var(&tail, "tail", 0, "only the last N lines of each instance (0: all)")
	cmd.Flags().BoolVar(&timestamps, "timestamps", false, "start each line with the time it was written")
	cmd.Flags().BoolVar(&prefix, "prefix", false, "start each line with its instance (always on for a service)")
	return cmd
}

// nArgs is cobra.ExactArgs with a message that says what the command
// takes: its usage line.
func nArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("%s takes %d argument(s), got %d: usage: %s", cmd.CommandPath(), n, len(args), cmd.UseLine())
		}
		return nil
	}
}

// minArgs is cobra.MinimumNArgs, saying what the command takes.
func minArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) < n {
			return fmt.Errorf("%s takes at least %d argument(s), got %d: usage: %s", cmd.CommandPath(), n, len(args), cmd.UseLine())
		}
		return nil
	}
}

// exactArgs is cobra.ExactArgs with a message that says what the command
// takes.
func exactArgs(n int, usage string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("%s takes %d argument(s), got %d: berth %s", cmd.Name(), n, len(args), usage)
		}
		return nil
	}
}

func newExecCmd(g *globalOptions) *cobra.Command {
	var namespace string
	var interactive, tty bool
	cmd := &cobra.Command{
		Use:   "exec INSTANCE|SERVICE [-it] -- COMMAND [ARG...]",
		Short: "Run a command in a container (a service: its first ready instance)",
		Long: `Run a command inside a running container, through the control plane and
the node's agent (containerd's exec), with the container's user,
environment and working directory. -i passes stdin, -t gives it a
terminal. The exit code is the command's.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return fmt.Errorf("exec takes an instance (or service) and a command: berth exec INSTANCE -- COMMAND [ARG...]")
			}
			return nil
		},
		ValidArgsFunction: completeKindArgs(g, "instances"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cli, done, id, err := g.clientFor(cmd, namespace, args[0])
			if err != nil {
				return err
			}
			defer done()
			ctx, stop := context.WithCancel(cmd.Context())
			defer stop()
			stream, err := cli.Exec(ctx)
			if err != nil {
				return g.rpcErr(err)
			}
			var sendMu sync.Mutex
			send := func(m *pb.ExecInput) error {
				sendMu.Lock()
				defer sendMu.Unlock()
				return stream.Send(m)
			}
			start := &pb.ExecStart{Namespace: namespace, Instance: id, Command: args[1:], Tty: tty, Stdin: interactive}
			stdinFd := int(os.Stdin.Fd())
			if tty && term.IsTerminal(stdinFd) {
				if w, h, err := term.GetSize(stdinFd); err == nil {
					start.Size = &pb.TerminalSize{Width: uint32(w), Height: uint32(h)}
				}
				old, err := term.MakeRaw(stdinFd)
				if err == nil {
					defer term.Restore(stdinFd, old)
				}
				winch := make(chan os.Signal, 1)
				signal.Notify(winch, syscall.SIGWINCH)
				defer signal.Stop(winch)
				go func() {
					for range winch {
						if w, h, err := term.GetSize(stdinFd); err == nil {
							send(&pb.ExecInput{Resize: &pb.TerminalSize{Width: uint32(w), Height: uint32(h)}})
						}
					}
				}()
			}
			if err := send(&pb.ExecInput{Start: start}); err != nil {
				return g.rpcErr(err)
			}
			if interactive {
				go func() {
					buf := make([]byte, 32<<10)
					for {
						n, err := cmd.InOrStdin().Read(buf)
						if n > 0 {
							if send(&pb.ExecInput{Stdin: append([]byte(nil), buf[:n]...)}) != nil {
								return
							}
						}
						if err != nil {
							send(&pb.ExecInput{StdinEof: true})
							return
						}
					}
				}()
			} else {
				sendMu.Lock()
				stream.CloseSend()
				sendMu.Unlock()
			}
			for {
				out, err := stream.Recv()
				if err != nil {
					if errors.Is(err, io.EOF) {
						return errors.New("exec: the stream ended without an exit code")
					}
					return g.rpcErr(err)
				}
				if len(out.Stdout) > 0 {
					cmd.OutOrStdout().Write(out.Stdout)
				}
				if len(out.Stderr) > 0 {
					cmd.ErrOrStderr().Write(out.Stderr)
				}
				if out.Exited {
					if out.ExitCode != 0 {
						return &exitError{code: int(out.ExitCode), err: fmt.Errorf("command exited with code %d", out.ExitCode), quiet: true}
					}
					return nil
				}
			}
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", api.DefaultNamespace, "namespace")
	cmd.Flags().BoolVarP(&interactive, "stdin", "i", false, "pass stdin to the command")
	cmd.Flags().BoolVarP(&tty, "tty", "t", false, "give the command a terminal")
	return cmd
}

func newPortForwardCmd(g *globalOptions) *cobra.Command {
	var namespace, address string
	cmd := &cobra.Command{
		Use:   "port-forward INSTANCE|SERVICE [LOCAL:]REMOTE...",
		Short: "Forward local ports to a container's ports, through the control plane",
		Long: `Listen on local ports and carry each connection to a port of a container
(a service: its first ready instance), through the control plane and the
node's agent: a container reachable from wherever the API is. LOCAL 0 (or
":REMOTE") picks a free port. Ctrl-C stops.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return fmt.Errorf("port-forward takes an instance (or service) and at least one LOCAL:REMOTE port pair: berth port-forward hello 8080:8080")
			}
			return nil
		},
		ValidArgsFunction: completeKindArgs(g, "instances"),
		RunE: func(cmd *cobra.Command, args []string) error {
			type pair struct{ local, remote int }
			var pairs []pair
			for _, a := range args[1:] {
				l, r, ok := strings.Cut(a, ":")
				if !ok {
					l, r = a, a
				}
				if l == "" {
					l = "0"
				}
				lp, err1 := strconv.Atoi(l)
				rp, err2 := strconv.Atoi(r)
				if err1 != nil || err2 != nil || lp < 0 || lp > 65535 || rp < 1 || rp > 65535 {
					return fmt.Errorf("port-forward: %q: want LOCAL:REMOTE ports, e.g. 8080:8080 or :8080", a)
				}
				pairs = append(pairs, pair{lp, rp})
			}
			cli, done, id, err := g.clientFor(cmd, namespace, args[0])
			if err != nil {
				return err
			}
			defer done()
			ctx := cmd.Context()
			var wg sync.WaitGroup
			for _, p := range pairs {
				ln, err := net.Listen("tcp", net.JoinHostPort(address, strconv.Itoa(p.local)))
				if err != nil {
					return fmt.Errorf("port-forward: %w", err)
				}
				defer ln.Close()
				fmt.Fprintf(cmd.OutOrStdout(), "Forwarding from %s -> %s:%d\n", ln.Addr(), id, p.remote)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						conn, err := ln.Accept()
						if err != nil {
							return
						}
						go forward(ctx, cmd, cli, conn, namespace, id, p.remote)
					}
				}()
			}
			<-ctx.Done()
			return nil
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", api.DefaultNamespace, "namespace")
	cmd.Flags().StringVar(&address, "address", "127.0.0.1", "local address to listen on")
	return cmd
}

// forward carries one local connection over a PortForward stream.
func forward(ctx context.Context, cmd *cobra.Command, cli pb.BerthClient, conn net.Conn, namespace, id string, port int) {
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := cli.PortForward(ctx)
	if err == nil {
		err = stream.Send(&pb.PortForwardData{Start: &pb.PortForwardStart{Namespace: namespace, Instance: id, Port: uint32(port)}})
	}
	if err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "port-forward: %s\n", status.Convert(err).Message())
		return
	}
	go func() {
		buf := make([]byte, 32<<10)
		for {
			n, err := conn.Read(buf)
			if n > 0 {
				if stream.Send(&pb.PortForwardData{Data: append([]byte(nil), buf[:n]...)}) != nil {
					return
				}
			}
			if err != nil {
				stream.CloseSend()
				return
			}
		}
	}()
	for {
		m, err := stream.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) && status.Code(err) != codes.Canceled {
				fmt.Fprintf(cmd.ErrOrStderr(), "port-forward: %s\n", status.Convert(err).Message())
			}
			if tc, ok := conn.(*net.TCPConn); ok {
				tc.CloseWrite()
			}
			return
		}
		if _, err := conn.Write(m.Data); err != nil {
			return
		}
	}
}
