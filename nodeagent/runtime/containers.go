package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/internal/atomicfile"
	"github.com/berth-dev/berth/nodeagent/logs"
	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// runcRuntime is the containerd shim Berth runs containers with.
const runcRuntime = "io.containerd.runc.v2"

// killTimeout bounds the wait for a task to die after SIGKILL.
const killTimeout = 10 * time.Second

// ContainerSpec is one container to run.
type ContainerSpec struct {
	// InstanceID is unique and a DNS label; it is the containerd container
	// id, the snapshot key, the CNI container id and the hostname.
	InstanceID string
	Namespace  string
	Service    string
	Revision   int64
	// Image is a reference already in the image store (ImportImage or
	// PullImage first).
	Image string
	// Command replaces the image entrypoint, Args the image cmd (as in
	// Kubernetes): Command+Args, or entrypoint+Args, or the image default.
	Command, Args []string
	Env           map[string]string
	// MilliCPU and MemoryBytes are limits; 0 means none.
	MilliCPU, MemoryBytes int64
	// PidsLimit caps processes and threads (pids.max); 0 means none.
	PidsLimit int64
	// SearchDomains overrides Config.SearchDomains when set.
	SearchDomains []string
	// Labels are extra container labels; the runtime always sets
	// berth.instance, berth.service, berth.namespace, berth.revision (and
	// berth.ip, berth.netns), which win over these.
	Labels map[string]string
	// PortMappings publish container ports on the host (CNI portmap).
	PortMappings []PortMapping
	// Mounts are volumes: host directories bound in, or tmpfs.
	Mounts []Mount
	// RunAsUser and RunAsGroup replace the image's user and group (and
	// its supplementary groups).
	RunAsUser, RunAsGroup *uint32
	// ReadOnlyRoot mounts the image's root filesystem read-only.
	ReadOnlyRoot bool
	// CapDrop is removed from the default capability set ("ALL": every
	// one), then CapAdd added; names are canonical ("CAP_NET_ADMIN").
	CapDrop, CapAdd []string
}

// Mount is a volume in the container: Source (a host directory) bound at
// Destination, or, with Tmpfs, a memory filesystem of at most SizeBytes.
type Mount struct {
	Source      string
	Destination string
	ReadOnly    bool
	Tmpfs       bool
	SizeBytes   int64
}

func volumeMounts(ms []Mount) []specs.Mount {
	out := make([]specs.Mount, 0, len(ms))
	for _, m := range ms {
		if m.Tmpfs {
			opts := []string{"nosuid", "nodev", "mode=1777"}
			if m.SizeBytes > 0 {
				opts = append(opts, "size="+strconv.FormatInt(m.SizeBytes, 10))
			}
			if m.ReadOnly {
				opts = append(opts, "ro")
			}
			out = append(out, specs.Mount{Destination: m.Destination, Type: "tmpfs", Source: "tmpfs", Options: opts})
			continue
		}
		// A volume never carries setuid binaries or device nodes in.
		opts := []string{"rbind", "rw", "nosuid", "nodev"}
		if m.ReadOnly {
			opts = []string{"rbind", "ro", "nosuid", "nodev"}
		}
		out = append(out, specs.Mount{Destination: m.Destination, Type: "bind", Source: m.Source, Options: opts})
	}
	return out
}

// Container is the observed state of one Berth container.
type Container struct {
	InstanceID  string
	ContainerID string
	IP          string
	Running     bool
	Pid         uint32
	ExitCode    uint32
	ExitedAt    time.Time
	Labels      map[string]string
}

// Start creates and starts a container: a network namespace attached to the
// node bridge through CNI, resolv.conf and hosts files, a new snapshot of
// the image, an OCI spec with the Berth environment and limits, and a task
// logging to LogPath. A stale container with the same id is removed first.
// On failure everything created so far is removed again.
func (r *Runtime) Start(ctx context.Context, spec ContainerSpec) (_ Container, retErr error) {
	id := spec.InstanceID
	if !api.IsDNSLabel(id) {
		return Container{}, fmt.Errorf("runtime: start: instance id %q is not a DNS label", id)
	}
	unlock := r.lock(id)
	defer unlock()
	log := r.log.With("instance", id)

	imageName, err := normalizeRef(spec.Image)
	if err != nil {
		return Container{}, fmt.Errorf("runtime: start %s: %w", id, err)
	}
	image, err := r.client.GetImage(ctx, imageName)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return Container{}, fmt.Errorf("runtime: start %s: image %s is not present (import or pull it first): %w", id, spec.Image, err)
		}
		return Container{}, fmt.Errorf("runtime: start %s: image %s: %w", id, spec.Image, err)
	}
	imgSpec, err := image.Spec(ctx)
	if err != nil {
		return Container{}, fmt.Errorf("runtime: start %s: image config %s: %w", id, spec.Image, err)
	}
	args := processArgs(spec, imgSpec.Config.Entrypoint, imgSpec.Config.Cmd)
	if len(args) == 0 {
		return Container{}, fmt.Errorf("runtime: start %s: no command: image %s has no entrypoint or cmd and the spec sets none", id, spec.Image)
	}

	t0 := time.Now()
	if err := r.teardown(ctx, id, 0, true); err != nil {
		return Container{}, fmt.Errorf("runtime: start %s: remove stale container: %w", id, err)
	}

	// Undo on failure, in reverse order, even if ctx was cancelled.
	var undo []func(context.Context) error
	defer func() {
		if retErr == nil {
			return
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		for i := len(undo) - 1; i >= 0; i-- {
			if err := undo[i](cctx); err != nil {
				log.Warn("cleanup after failed start", "err", err)
			}
		}
	}()

	dir := r.containerDir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Container{}, fmt.Errorf("runtime: start %s: %w", id, err)
	}
	undo = append(undo, func(context.Context) error { return os.RemoveAll(dir) })

	netns := r.netnsPath(id)
	if err := createNetNS(netns); err != nil {
		return Container{}, fmt.Errorf("runtime: start %s: %w", id, err)
	}
	undo = append(undo, func(context.Context) error { return removeNetNS(netns) })

	att := &attachment{ContainerID: id, Network: r.cfg.NetworkName, NetNS: netns, PortMappings: spec.PortMappings}
	// Persist before ADD: a crash during ADD must still be cleanable.
	if err := r.saveAttachment(id, att); err != nil {
		return Container{}, fmt.Errorf("runtime: start %s: save attachment: %w", id, err)
	}
	undo = append(undo, func(ctx context.Context) error { return r.teardownNetwork(ctx, att) })
	t1 := time.Now()
	ip, err := r.setupNetwork(ctx, att)
	if err != nil {
		return Container{}, fmt.Errorf("runtime: start %s: %w", id, err)
	}
	att.IP = ip.String()
	if err := r.saveAttachment(id, att); err != nil {
		return Container{}, fmt.Errorf("runtime: start %s: save attachment: %w", id, err)
	}

	search := r.cfg.SearchDomains
	if len(spec.SearchDomains) > 0 {
		search = spec.SearchDomains
	}
	resolvPath := filepath.Join(dir, "resolv.conf")
	hostsPath := filepath.Join(dir, "hosts")
	if err := r.writeResolvConf(resolvPath, search); err != nil {
		return Container{}, fmt.Errorf("runtime: start %s: resolv.conf: %w", id, err)
	}
	if err := atomicfile.Replace(hostsPath, hostsFile(att.IP, id), 0o644); err != nil {
		return Container{}, fmt.Errorf("runtime: start %s: hosts: %w", id, err)
	}

	labels := map[string]string{}
	for k, v := range spec.Labels {
		labels[k] = v
	}
	labels[LabelInstance] = id
	labels[LabelService] = spec.Service
	labels[LabelNamespace] = spec.Namespace
	labels[LabelRevision] = strconv.FormatInt(spec.Revision, 10)
	labels[LabelIP] = att.IP
	labels[LabelNetNS] = netns

	specOpts := []oci.SpecOpts{
		oci.WithImageConfig(image),
		oci.WithProcessArgs(args...),
		oci.WithHostname(id),
		oci.WithEnv(envList(spec)),
		oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: netns}),
		// The sandbox: Docker's default seccomp profile, no privilege
		// gained through setuid binaries, and Docker's default
		// capabilities without raw sockets (ARP and ICMP spoofing on the
		// bridge) or device nodes. containerd's default spec already masks
		// and makes read-only the sensitive /proc and /sys paths.
		seccomp.WithDefaultProfile(),
		oci.WithNoNewPrivileges,
		oci.WithDroppedCapabilities([]string{"CAP_NET_RAW", "CAP_MKNOD"}),
		oci.WithMounts(append([]specs.Mount{
			{Destination: "/etc/resolv.conf", Type: "bind", Source: resolvPath, Options: []string{"rbind", "ro"}},
			{Destination: "/etc/hosts", Type: "bind", Source: hostsPath, Options: []string{"rbind", "ro"}},
		}, volumeMounts(spec.Mounts)...)),
	}
	specOpts = append(specOpts, securityOpts(spec)...)
	if spec.MemoryBytes > 0 {
		specOpts = append(specOpts, oci.WithMemoryLimit(uint64(spec.MemoryBytes)))
	}
	if spec.PidsLimit > 0 {
		specOpts = append(specOpts, oci.WithPidsLimit(spec.PidsLimit))
	}
	if spec.MilliCPU > 0 {
		const period = 100000 // µs
		specOpts = append(specOpts, oci.WithCPUCFS(spec.MilliCPU*period/1000, period))
	}

	t2 := time.Now()
	ctr, err := r.client.NewContainer(ctx, id,
		containerd.WithImage(image),
		containerd.WithSnapshotter(r.cfg.Snapshotter),
		containerd.WithNewSnapshot(id, image),
		containerd.WithRuntime(runcRuntime, nil),
		containerd.WithNewSpec(specOpts...),
		containerd.WithContainerLabels(labels),
	)
	if err != nil {
		return Container{}, fmt.Errorf("runtime: start %s: create container: %w", id, err)
	}
	undo = append(undo, func(ctx context.Context) error {
		return ctr.Delete(ctx, containerd.WithSnapshotCleanup)
	})

	t3 := time.Now()
	task, err := r.startTask(ctx, ctr)
	if err != nil {
		return Container{}, fmt.Errorf("runtime: start %s: %w", id, err)
	}
	t4 := time.Now()
	log.Debug("started", "ip", att.IP, "pid", task.Pid(),
		"prepare", t1.Sub(t0), "cni", t2.Sub(t1), "create", t3.Sub(t2), "task", t4.Sub(t3))
	return Container{
		InstanceID:  id,
		ContainerID: id,
		IP:          att.IP,
		Running:     true,
		Pid:         task.Pid(),
		Labels:      labels,
	}, nil
}

// securityOpts applies a spec's securityContext after the image config
// and the default sandbox.
func securityOpts(spec ContainerSpec) []oci.SpecOpts {
	var opts []oci.SpecOpts
	switch {
	case spec.RunAsUser != nil && spec.RunAsGroup != nil:
		opts = append(opts, oci.WithUIDGID(*spec.RunAsUser, *spec.RunAsGroup))
	case spec.RunAsUser != nil:
		opts = append(opts, oci.WithUserID(*spec.RunAsUser)) // group from the image's /etc/passwd, else 0
	case spec.RunAsGroup != nil:
		gid := *spec.RunAsGroup
		opts = append(opts, func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
			s.Process.User.GID = gid
			return nil
		})
	}
	if spec.RunAsUser != nil || spec.RunAsGroup != nil {
		// The image user's supplementary groups are not another user's.
		opts = append(opts, func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
			s.Process.User.AdditionalGids = []uint32{s.Process.User.GID}
			return nil
		})
	}
	if spec.ReadOnlyRoot {
		opts = append(opts, oci.WithRootFSReadonly())
	}
	if slices.Contains(spec.CapDrop, "ALL") {
		opts = append(opts, oci.WithCapabilities(nil))
	} else if len(spec.CapDrop) > 0 {
		opts = append(opts, oci.WithDroppedCapabilities(spec.CapDrop))
	}
	if len(spec.CapAdd) > 0 {
		opts = append(opts, oci.WithAddedCapabilities(spec.CapAdd))
	}
	return opts
}

// startTask creates and starts the container's task, its output going
// to a new run in the logs store; on a failed start the task is deleted
// again.
func (r *Runtime) startTask(ctx context.Context, ctr containerd.Container) (containerd.Task, error) {
	run, err := r.logs.NewRun(ctr.ID(), r.logMeta(ctx, ctr))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(r.ioDir(ctr.ID()), 0o700); err != nil {
		return nil, err
	}
	task, err := ctr.NewTask(ctx, cio.NewCreator(cio.WithStreams(nil, run.Stdout(), run.Stderr()), cio.WithFIFODir(r.ioDir(ctr.ID()))))
	if err != nil {
		r.logs.EndRun(run)
		return nil, fmt.Errorf("create task: %w", err)
	}
	if err := task.Start(ctx); err != nil {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), killTimeout)
		defer cancel()
		task.Delete(dctx, containerd.WithProcessKill)
		r.logs.EndRun(run)
		return nil, fmt.Errorf("start task: %w", err)
	}
	r.endRunWithIO(task, run)
	return task, nil
}

// endRunWithIO ends the log run once the task's output is all copied
// (its process exited and the shim closed the FIFOs), and removes the
// FIFOs.
func (r *Runtime) endRunWithIO(task containerd.Task, run *logs.Run) {
	go func() {
		if tio := task.IO(); tio != nil {
			tio.Wait()
			tio.Close()
		}
		r.logs.EndRun(run)
	}()
}

// attachLogs copies a running task's output into the instance's latest
// run again after an agent restart (the shim kept it in the FIFOs
// meanwhile). A task started with its output in a file (before logs were
// kept this way) is left as it is.
func (r *Runtime) attachLogs(ctx context.Context, ctr containerd.Container) {
	if r.logs.Writing(ctr.ID()) {
		return
	}
	run, err := r.logs.Resume(ctr.ID(), r.logMeta(ctx, ctr))
	if err != nil {
		r.log.Warn("logs: resume", "instance", ctr.ID(), "err", err)
		return
	}
	attach := cio.NewAttach(cio.WithStreams(nil, run.Stdout(), run.Stderr()))
	task, err := ctr.Task(ctx, func(f *cio.FIFOSet) (cio.IO, error) {
		if f == nil || strings.Contains(f.Stdout, "://") {
			return nil, errNotFIFO
		}
		return attach(f)
	})
	if err != nil {
		r.logs.EndRun(run)
		if !errors.Is(err, errNotFIFO) && !errdefs.IsNotFound(err) {
			r.log.Warn("logs: attach", "instance", ctr.ID(), "err", err)
		}
		return
	}
	r.endRunWithIO(task, run)
}

var errNotFIFO = errors.New("task output does not go to FIFOs")

// logMeta is whose a container's logs are, from its labels.
func (r *Runtime) logMeta(ctx context.Context, ctr containerd.Container) logs.Meta {
	labels, err := ctr.Labels(ctx)
	if err != nil {
		return logs.Meta{}
	}
	return logs.Meta{Namespace: labels[LabelNamespace], Service: labels[LabelService]}
}

// processArgs applies Kubernetes semantics: Command replaces the
// entrypoint, Args replaces the cmd.
func processArgs(spec ContainerSpec, entrypoint, cmd []string) []string {
	switch {
	case len(spec.Command) > 0:
		return slices.Concat(spec.Command, spec.Args)
	case len(spec.Args) > 0:
		return slices.Concat(entrypoint, spec.Args)
	default:
		return slices.Concat(entrypoint, cmd)
	}
}

// envList is the spec's environment plus the BERTH_* variables, sorted;
// oci.WithEnv merges it over the image's environment.
func envList(spec ContainerSpec) []string {
	env := make([]string, 0, len(spec.Env)+3)
	for k, v := range spec.Env {
		switch k {
		case "BERTH_INSTANCE", "BERTH_SERVICE", "BERTH_NAMESPACE":
			continue // set by the runtime below
		}
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return append(env,
		"BERTH_INSTANCE="+spec.InstanceID,
		"BERTH_SERVICE="+spec.Service,
		"BERTH_NAMESPACE="+spec.Namespace,
	)
}

// Restart starts a new task in the existing container after its task
// exited. It keeps the container, its snapshot (the writable layer
// survives), its network namespace and so its IP. If the namespace is gone
// (e.g. after a reboot) it is re-created and attached again, which may
// change the IP. A running task is left alone and reported as is.
func (r *Runtime) Restart(ctx context.Context, instanceID string) (Container, error) {
	unlock := r.lock(instanceID)
	defer unlock()

	ctr, err := r.client.LoadContainer(ctx, instanceID)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return Container{}, fmt.Errorf("runtime: restart %s: %w", instanceID, ErrNotFound)
		}
		return Container{}, fmt.Errorf("runtime: restart %s: %w", instanceID, err)
	}
	if task, err := ctr.Task(ctx, nil); err == nil {
		st, err := task.Status(ctx)
		if err != nil {
			return Container{}, fmt.Errorf("runtime: restart %s: task status: %w", instanceID, err)
		}
		if st.Status == containerd.Running {
			return r.describe(ctx, ctr)
		}
		if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
			return Container{}, fmt.Errorf("runtime: restart %s: delete old task: %w", instanceID, err)
		}
	} else if !errdefs.IsNotFound(err) {
		return Container{}, fmt.Errorf("runtime: restart %s: load task: %w", instanceID, err)
	}

	if err := r.ensureNetwork(ctx, ctr); err != nil {
		return Container{}, fmt.Errorf("runtime: restart %s: %w", instanceID, err)
	}
	if _, err := r.startTask(ctx, ctr); err != nil {
		return Container{}, fmt.Errorf("runtime: restart %s: %w", instanceID, err)
	}
	return r.describe(ctx, ctr)
}

// ensureNetwork re-creates and re-attaches the container's network
// namespace if it is gone.
func (r *Runtime) ensureNetwork(ctx context.Context, ctr containerd.Container) error {
	id := ctr.ID()
	att, err := r.loadAttachment(id)
	if err != nil {
		labels, lerr := ctr.Labels(ctx)
		if lerr != nil {
			return fmt.Errorf("container labels: %w", lerr)
		}
		att = &attachment{ContainerID: id, Network: r.cfg.NetworkName, NetNS: labels[LabelNetNS], IP: labels[LabelIP]}
		if att.NetNS == "" {
			att.NetNS = r.netnsPath(id)
		}
	}
	if _, err := os.Stat(att.NetNS); err == nil {
		return nil
	}
	// The namespace is gone: release the old allocation, attach anew.
	if err := r.teardownNetwork(ctx, att); err != nil {
		return err
	}
	if err := createNetNS(att.NetNS); err != nil {
		return err
	}
	if err := r.saveAttachment(id, att); err != nil {
		return err
	}
	ip, err := r.setupNetwork(ctx, att)
	if err != nil {
		removeNetNS(att.NetNS)
		return err
	}
	att.IP = ip.String()
	if err := r.saveAttachment(id, att); err != nil {
		return err
	}
	if err := atomicfile.Replace(filepath.Join(r.containerDir(id), "hosts"), hostsFile(att.IP, id), 0o644); err != nil {
		return err
	}
	if _, err := ctr.SetLabels(ctx, map[string]string{LabelIP: att.IP}); err != nil {
		return fmt.Errorf("update ip label: %w", err)
	}
	return nil
}

// Stop sends SIGTERM, waits up to grace, sends SIGKILL, and removes the task,
// the CNI attachment (DEL with the persisted port mappings), the network
// namespace, the container, its snapshot and its state files. A missing
// container is not an error.
func (r *Runtime) Stop(ctx context.Context, instanceID string, grace time.Duration) error {
	unlock := r.lock(instanceID)
	defer unlock()
	if err := r.teardown(ctx, instanceID, grace, false); err != nil {
		return fmt.Errorf("runtime: stop %s: %w", instanceID, err)
	}
	return nil
}

// teardown removes everything Start created for id, in reverse order;
// stale says it is clearing leftovers before a Start (only for the log).
func (r *Runtime) teardown(ctx context.Context, id string, grace time.Duration, stale bool) error {
	var errs []error
	ctr, err := r.client.LoadContainer(ctx, id)
	switch {
	case errdefs.IsNotFound(err):
		ctr = nil
	case err != nil:
		return fmt.Errorf("load container: %w", err)
	}
	if ctr != nil {
		if stale {
			r.log.Info("removing stale container", "instance", id)
		}
		if err := r.stopTask(ctx, ctr, grace); err != nil {
			errs = append(errs, err)
		}
	}

	att, err := r.loadAttachment(id)
	if err != nil && ctr != nil {
		if labels, lerr := ctr.Labels(ctx); lerr == nil && labels[LabelNetNS] != "" {
			att = &attachment{ContainerID: id, Network: r.cfg.NetworkName, NetNS: labels[LabelNetNS], IP: labels[LabelIP]}
		}
	}
	netns := r.netnsPath(id)
	_, nsErr := os.Stat(netns)
	if att == nil && (ctr != nil || nsErr == nil) {
		att = &attachment{ContainerID: id, Network: r.cfg.NetworkName, NetNS: netns}
	}
	if att != nil {
		if err := r.teardownNetwork(ctx, att); err != nil {
			errs = append(errs, err)
		} else {
			if att.NetNS != "" && att.NetNS != netns {
				if err := removeNetNS(att.NetNS); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	// The netns is removed only after a successful DEL: the bridge
	// plugin needs it to find the address whose masquerade rules it
	// deletes.
	if len(errs) == 0 {
		if err := removeNetNS(netns); err != nil {
			errs = append(errs, err)
		}
	}

	if ctr != nil {
		if err := ctr.Delete(ctx, containerd.WithSnapshotCleanup); err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete container: %w", err))
		}
	}
	// A snapshot can outlive its container after a crash between the two.
	if err := r.client.SnapshotService(r.cfg.Snapshotter).Remove(ctx, id); err != nil && !errdefs.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("remove snapshot: %w", err))
	}
	if len(errs) == 0 {
		if err := os.RemoveAll(r.containerDir(id)); err != nil {
			errs = append(errs, err)
		}
	}
	// Its logs stay readable for the retention.
	r.logs.Removed(id)
	return errors.Join(errs...)
}

// Kill stops the instance's task (SIGTERM, SIGKILL after grace) and
// deletes it, keeping the container, its network and its writable layer:
// Restart starts it again (a failed liveness probe).
func (r *Runtime) Kill(ctx context.Context, instanceID string, grace time.Duration) error {
	unlock := r.lock(instanceID)
	defer unlock()
	ctr, err := r.client.LoadContainer(ctx, instanceID)
	if errdefs.IsNotFound(err) {
		return fmt.Errorf("runtime: kill %s: %w", instanceID, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("runtime: kill %s: %w", instanceID, err)
	}
	if err := r.stopTask(ctx, ctr, grace); err != nil {
		return fmt.Errorf("runtime: kill %s: %w", instanceID, err)
	}
	return nil
}

// stopTask stops and deletes the container's task, if it has one.
func (r *Runtime) stopTask(ctx context.Context, ctr containerd.Container, grace time.Duration) error {
	task, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load task: %w", err)
	}
	st, err := task.Status(ctx)
	if err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("task status: %w", err)
	}
	if err == nil && st.Status != containerd.Stopped {
		exited, err := task.Wait(ctx)
		if err != nil {
			return fmt.Errorf("wait task: %w", err)
		}
		done := false
		if grace > 0 && st.Status == containerd.Running {
			if err := task.Kill(ctx, syscall.SIGTERM); err != nil && !errdefs.IsNotFound(err) {
				return fmt.Errorf("sigterm: %w", err)
			}
			timer := time.NewTimer(grace)
			select {
			case <-exited:
				done = true
			case <-timer.C:
			case <-ctx.Done():
				timer.Stop()
				return ctx.Err()
			}
			timer.Stop()
		}
		if !done {
			if err := task.Kill(ctx, syscall.SIGKILL, containerd.WithKillAll); err != nil && !errdefs.IsNotFound(err) {
				return fmt.Errorf("sigkill: %w", err)
			}
			select {
			case <-exited:
			case <-time.After(killTimeout):
				return fmt.Errorf("task did not exit %s after SIGKILL", killTimeout)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	if _, err := task.Delete(ctx, containerd.WithProcessKill); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("delete task: %w", err)
	}
	return nil
}

// List returns every Berth container in the namespace with its task state:
// what an agent adopts after a restart.
func (r *Runtime) List(ctx context.Context) ([]Container, error) {
	ctrs, err := r.client.Containers(ctx, `labels."`+LabelInstance+`"`)
	if err != nil {
		return nil, fmt.Errorf("runtime: list containers: %w", err)
	}
	out := make([]Container, 0, len(ctrs))
	for _, ctr := range ctrs {
		c, err := r.describe(ctx, ctr)
		if errdefs.IsNotFound(err) {
			continue // deleted while we listed
		}
		if err != nil {
			return nil, fmt.Errorf("runtime: list: %w", err)
		}
		if c.Running {
			r.attachLogs(ctx, ctr)
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].InstanceID < out[j].InstanceID })
	return out, nil
}

// describe reads a container's labels and task state.
func (r *Runtime) describe(ctx context.Context, ctr containerd.Container) (Container, error) {
	labels, err := ctr.Labels(ctx)
	if err != nil {
		return Container{}, err
	}
	c := Container{
		InstanceID:  labels[LabelInstance],
		ContainerID: ctr.ID(),
		IP:          labels[LabelIP],
		Labels:      labels,
	}
	if c.InstanceID == "" {
		c.InstanceID = ctr.ID()
	}
	task, err := ctr.Task(ctx, nil)
	if errdefs.IsNotFound(err) {
		return c, nil
	}
	if err != nil {
		return Container{}, fmt.Errorf("task of %s: %w", ctr.ID(), err)
	}
	st, err := task.Status(ctx)
	if err != nil {
		if errdefs.IsNotFound(err) {
			return c, nil
		}
		return Container{}, fmt.Errorf("task status of %s: %w", ctr.ID(), err)
	}
	c.Pid = task.Pid()
	c.Running = st.Status == containerd.Running || st.Status == containerd.Paused || st.Status == containerd.Pausing
	if st.Status == containerd.Stopped {
		c.ExitCode = st.ExitStatus
		c.ExitedAt = st.ExitTime
	}
	return c, nil
}

// RemoveLeftovers tears down what an interrupted run left without a
// container: network namespaces named for this runtime's containerd
// namespace and per-container state directories whose container is gone.
// It returns the instance ids it cleaned.
func (r *Runtime) RemoveLeftovers(ctx context.Context) ([]string, error) {
	live := map[string]bool{}
	ctrs, err := r.client.Containers(ctx)
	if err != nil {
		return nil, fmt.Errorf("runtime: list containers: %w", err)
	}
	for _, c := range ctrs {
		live[c.ID()] = true
	}
	candidates := map[string]bool{}
	prefix := r.cfg.Namespace + "-"
	if entries, err := os.ReadDir(r.cfg.NetNSDir); err == nil {
		for _, e := range entries {
			if id, ok := strings.CutPrefix(e.Name(), prefix); ok && api.IsDNSLabel(id) {
				candidates[id] = true
			}
		}
	}
	if entries, err := os.ReadDir(r.containersDir()); err == nil {
		for _, e := range entries {
			candidates[e.Name()] = true
		}
	}
	var cleaned []string
	var errs []error
	for id := range candidates {
		if live[id] || !api.IsDNSLabel(id) {
			continue
		}
		unlock := r.lock(id)
		if _, lerr := r.client.LoadContainer(ctx, id); lerr == nil {
			unlock() // started meanwhile: not a leftover
			continue
		}
		err := r.teardown(ctx, id, 0, true)
		unlock()
		if err != nil {
			errs = append(errs, fmt.Errorf("leftover %s: %w", id, err))
			continue
		}
		cleaned = append(cleaned, id)
	}
	sort.Strings(cleaned)
	return cleaned, errors.Join(errs...)
}
