package runtime

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/errdefs"
)

// TerminalSize is a TTY's size in characters.
type TerminalSize struct{ Width, Height uint32 }

// ExecOptions describe a process to run in a container.
type ExecOptions struct {
	Command []string
	// TTY gives the process a terminal (stderr then goes to Stdout).
	TTY  bool
	Size TerminalSize
	// Resize delivers the terminal's new sizes.
	Resize <-chan TerminalSize
	// Stdin, when not nil, is the process's input; its EOF closes it.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// ErrNotRunning says an instance's container has no running task.
var ErrNotRunning = errors.New("container is not running")

// Exec runs a process in the instance's running container, with the
// container's user, environment and working directory, and returns its
// exit code. Ending ctx kills it.
func (r *Runtime) Exec(ctx context.Context, instanceID string, o ExecOptions) (int, error) {
	if len(o.Command) == 0 {
		return -1, errors.New("runtime: exec: no command")
	}
	ctr, err := r.client.LoadContainer(ctx, instanceID)
	if errdefs.IsNotFound(err) {
		return -1, fmt.Errorf("runtime: exec in %s: %w", instanceID, ErrNotFound)
	}
	if err != nil {
		return -1, fmt.Errorf("runtime: exec in %s: %w", instanceID, err)
	}
	task, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return -1, fmt.Errorf("runtime: exec in %s: %w", instanceID, ErrNotRunning)
	}
	if err != nil {
		return -1, fmt.Errorf("runtime: exec in %s: %w", instanceID, err)
	}
	if st, err := task.Status(ctx); err != nil || st.Status != containerd.Running {
		return -1, fmt.Errorf("runtime: exec in %s: %w", instanceID, ErrNotRunning)
	}
	spec, err := ctr.Spec(ctx)
	if err != nil {
		return -1, fmt.Errorf("runtime: exec in %s: spec: %w", instanceID, err)
	}
	pspec := *spec.Process
	pspec.Args = o.Command
	pspec.Terminal = o.TTY
	pspec.Env = slices.Clone(pspec.Env)
	if o.TTY && !slices.ContainsFunc(pspec.Env, func(e string) bool { return strings.HasPrefix(e, "TERM=") }) {
		pspec.Env = append(pspec.Env, "TERM=xterm")
	}
	var idb [6]byte
	rand.Read(idb[:])
	execID := "exec-" + hex.EncodeToString(idb[:])

	stdout, stderr := o.Stdout, o.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	stdinEOF := make(chan struct{})
	var stdin io.Reader
	if o.Stdin != nil {
		stdin = &eofReader{r: o.Stdin, eof: stdinEOF}
	}
	if err := os.MkdirAll(r.ioDir(instanceID), 0o700); err != nil {
		return -1, err
	}
	opts := []cio.Opt{cio.WithStreams(stdin, stdout, stderr), cio.WithFIFODir(r.ioDir(instanceID))}
	if o.TTY {
		opts = append(opts, cio.WithTerminal)
	}
	proc, err := task.Exec(ctx, execID, &pspec, cio.NewCreator(opts...))
	if err != nil {
		return -1, fmt.Errorf("runtime: exec in %s: %w", instanceID, err)
	}
	cleanup := context.WithoutCancel(ctx)
	defer func() {
		dctx, cancel := context.WithTimeout(cleanup, killTimeout)
		defer cancel()
		proc.Delete(dctx, containerd.WithProcessKill)
	}()
	exited, err := proc.Wait(ctx)
	if err != nil {
		return -1, fmt.Errorf("runtime: exec in %s: wait: %w", instanceID, err)
	}
	if err := proc.Start(ctx); err != nil {
		return -1, fmt.Errorf("runtime: exec in %s: %w", instanceID, err)
	}
	if o.TTY && o.Size.Width > 0 && o.Size.Height > 0 {
		_ = proc.Resize(ctx, o.Size.Width, o.Size.Height)
	}
	if o.Stdin != nil {
		go func() {
			select {
			case <-stdinEOF:
				// Everything read went into the FIFO already: the shim
				// passes it on, then closes the process's stdin.
				_ = proc.CloseIO(cleanup, containerd.WithStdinCloser)
			case <-ctx.Done():
			}
		}()
	}
	for {
		select {
		case sz := <-o.Resize:
			if o.TTY && sz.Width > 0 && sz.Height > 0 {
				_ = proc.Resize(ctx, sz.Width, sz.Height)
			}
		case st := <-exited:
			// The output copied to the end before the exit is told.
			if pio := proc.IO(); pio != nil {
				done := make(chan struct{})
				go func() { pio.Wait(); close(done) }()
				select {
				case <-done:
				case <-time.After(5 * time.Second):
				}
			}
			code, _, err := st.Result()
			if err != nil {
				return -1, fmt.Errorf("runtime: exec in %s: %w", instanceID, err)
			}
			return int(code), nil
		case <-ctx.Done():
			_ = proc.Kill(cleanup, syscall.SIGKILL)
			return -1, ctx.Err()
		}
	}
}

// eofReader closes eof when the reader ends.
type eofReader struct {
	r   io.Reader
	eof chan struct{}
	one bool
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && !e.one {
		e.one = true
		close(e.eof)
	}
	return n, err
}

// InstanceIP is the address of the instance's container.
func (r *Runtime) InstanceIP(ctx context.Context, instanceID string) (string, error) {
	ctr, err := r.client.LoadContainer(ctx, instanceID)
	if errdefs.IsNotFound(err) {
		return "", fmt.Errorf("runtime: %s: %w", instanceID, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("runtime: %s: %w", instanceID, err)
	}
	labels, err := ctr.Labels(ctx)
	if err != nil {
		return "", fmt.Errorf("runtime: %s: %w", instanceID, err)
	}
	if labels[LabelIP] == "" {
		return "", fmt.Errorf("runtime: %s has no address", instanceID)
	}
	return labels[LabelIP], nil
}
