package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strings"

	"github.com/berth-dev/berth/internal/atomicfile"
	gocni "github.com/containerd/go-cni"
	"golang.org/x/sys/unix"
)

// PortMapping publishes a container port on the host through the CNI
// portmap plugin.
type PortMapping struct {
	HostPort      int32  `json:"hostPort"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol,omitempty"` // tcp (default) or udp
	HostIP        string `json:"hostIP,omitempty"`
}

// attachment is what CNI DEL needs to undo an ADD, persisted per container
// in StateDir so that a crashed agent can still clean up.
type attachment struct {
	ContainerID  string        `json:"containerID"`
	Network      string        `json:"network"`
	NetNS        string        `json:"netns"`
	IP           string        `json:"ip"`
	PortMappings []PortMapping `json:"portMappings,omitempty"`
}

// conflist is the CNI network: bridge with host-local IPAM (dataDir under
// StateDir) and portmap. cniVersion 1.0.0 is what plugins 1.1.1 speak.
func (r *Runtime) conflist() ([]byte, error) {
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       r.cfg.NetworkName,
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      r.cfg.BridgeName,
				"isGateway":   true,
				"ipMasq":      r.cfg.ClusterCIDR == "",
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"dataDir": r.ipamDir(),
					"ranges": [][]map[string]string{{{
						"subnet":  r.subnet.String(),
						"gateway": r.gateway.String(),
					}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{
				"type":         "portmap",
				"capabilities": map[string]bool{"portMappings": true},
				"snat":         true,
			},
		},
	}
	return json.Marshal(conf)
}

func (r *Runtime) newCNI() (gocni.CNI, error) {
	conf, err := r.conflist()
	if err != nil {
		return nil, err
	}
	// Our network is loaded first, so its interface is eth0; the loopback
	// network comes second ("lo").
	c, err := gocni.New(
		gocni.WithPluginDir(r.cfg.CNIPluginDirs),
		gocni.WithMinNetworkCount(2),
		gocni.WithConfListBytes(conf),
		gocni.WithLoNetwork,
	)
	if err != nil {
		return nil, fmt.Errorf("runtime: cni config: %w", err)
	}
	return c, nil
}

// netnsPath is the bind mount of the instance's network namespace.
func (r *Runtime) netnsPath(id string) string {
	return filepath.Join(r.cfg.NetNSDir, r.cfg.Namespace+"-"+id)
}

// ensureNetNSDir makes dir a shared mount point of its own, as iproute2
// and the CNI netns helpers do (mount --bind dir dir; mount --make-shared
// dir), once and idempotently. Namespace mounts then live on that mount
// and propagate to other mount namespaces; and a tool that later runs
// `ip netns add` finds dir already shared and does not bind it over itself,
// which (with a non-recursive bind, or from another mount namespace) would
// hide the mounts made before and leave plain files at their paths.
func ensureNetNSDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("netns dir: %w", err)
	}
	for bound := false; ; bound = true {
		err := unix.Mount("", dir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EINVAL) || bound {
			return fmt.Errorf("netns dir: mount --make-shared %s: %w", dir, err)
		}
		// Not a mount point: make it one, carrying over the namespace
		// mounts already there (MS_REC).
		if err := unix.Mount(dir, dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("netns dir: mount --rbind %s %s: %w", dir, dir, err)
		}
	}
}

// isNetNS tells whether path is a network namespace (an nsfs bind mount),
// not a plain file: what is left at the path when the mount went away (a
// crash between creating the file and mounting, or a mount hidden by
// another one over the directory). A missing path is not one either.
func isNetNS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.NSFS_MAGIC, nil
}

// createNetNS creates a new network namespace and bind-mounts it at path. A
// stale mount at path is removed first.
func createNetNS(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("netns dir: %w", err)
	}
	if err := removeNetNS(path); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("netns %s: %w", path, err)
	}
	f.Close()

	errc := make(chan error, 1)
	go func() {
		// The thread is left locked: when this goroutine returns, the Go
		// runtime destroys it along with its new network namespace
		// membership, so no other goroutine ever runs in it.
		goruntime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return fmt.Errorf("netns %s: %w", path, err)
	}
	return nil
}

// removeNetNS unmounts and removes a network namespace bind mount. A missing
// one is not an error.
func removeNetNS(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}

func cniPortMappings(pm []PortMapping) []gocni.PortMapping {
	out := make([]gocni.PortMapping, 0, len(pm))
	for _, p := range pm {
		proto := strings.ToLower(p.Protocol)
		if proto == "" {
			proto = "tcp"
		}
		out = append(out, gocni.PortMapping{HostPort: p.HostPort, ContainerPort: p.ContainerPort, Protocol: proto, HostIP: p.HostIP})
	}
	return out
}

// setupNetwork runs CNI ADD on the netns and returns the container's IPv4
// address on the Berth network.
func (r *Runtime) setupNetwork(ctx context.Context, a *attachment) (netip.Addr, error) {
	res, err := r.cni.Setup(ctx, a.ContainerID, a.NetNS, gocni.WithCapabilityPortMap(cniPortMappings(a.PortMappings)))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("cni add: %w", err)
	}
	// Read the address from the result rather than assuming an interface
	// name: take the IPv4 address inside our subnet.
	for _, iface := range res.Interfaces {
		for _, ipc := range iface.IPConfigs {
			if ip, ok := netip.AddrFromSlice(ipc.IP); ok {
				ip = ip.Unmap()
				if ip.Is4() && r.subnet.Contains(ip) && ip != r.gateway {
					return ip, nil
				}
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("cni add: no IPv4 address in %s in the result", r.subnet)
}

// teardownNetwork runs CNI DEL with the persisted port mappings. If the
// netns is gone (e.g. after a reboot) or its path is no namespace (a plain
// file, see isNetNS: CNI would fail on it for ever with "unknown FS
// magic"), DEL runs without it, which still releases the IP and the
// portmap rules.
func (r *Runtime) teardownNetwork(ctx context.Context, a *attachment) error {
	path := a.NetNS
	if path != "" {
		if ok, err := isNetNS(path); err != nil || !ok {
			if err == nil && r.log != nil {
				if _, serr := os.Stat(path); serr == nil {
					r.log.Warn("netns path is not a network namespace; treating it as gone", "path", path)
				}
			}
			path = ""
		}
	}
	if err := r.cni.Remove(ctx, a.ContainerID, path, gocni.WithCapabilityPortMap(cniPortMappings(a.PortMappings))); err != nil {
		return fmt.Errorf("cni del: %w", err)
	}
	return nil
}

func (r *Runtime) attachmentPath(id string) string {
	return filepath.Join(r.containerDir(id), "attachment.json")
}

func (r *Runtime) saveAttachment(id string, a *attachment) error {
	b, err := json.MarshalIndent(a, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(r.attachmentPath(id), b, 0o644)
}

func (r *Runtime) loadAttachment(id string) (*attachment, error) {
	b, err := os.ReadFile(r.attachmentPath(id))
	if err != nil {
		return nil, err
	}
	var a attachment
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("attachment %s: %w", id, err)
	}
	return &a, nil
}

// dnsServers are the nameservers of a container started now: this
// node's DNS, then the fallback.
func (r *Runtime) dnsServers() []string {
	r.dnsMu.Lock()
	defer r.dnsMu.Unlock()
	return r.dnsServersLocked()
}

func (r *Runtime) dnsServersLocked() []string {
	servers := slices.Clone(r.cfg.DNSServers)
	if r.dnsFallback != "" && !slices.Contains(servers, r.dnsFallback) {
		servers = append(servers, r.dnsFallback)
	}
	return servers
}

// writeResolvConf writes a new container's resolv.conf under dnsMu, so
// that a SetDNSFallback meanwhile either sees the file or is seen by it.
func (r *Runtime) writeResolvConf(path string, search []string) error {
	r.dnsMu.Lock()
	defer r.dnsMu.Unlock()
	return atomicfile.Replace(path, resolvConf(r.dnsServersLocked(), search, r.cfg.DNSOptions), 0o644)
}

// SetDNSFallback makes addr (another node's DNS; "" for none) the second
// nameserver of containers: those started from now on, and the running
// ones, whose resolv.conf is rewritten in place (it is bind-mounted: a
// renamed file would not reach them). While this node's DNS is down (its
// agent restarting), their lookups go there. It returns how many files
// it rewrote.
func (r *Runtime) SetDNSFallback(addr string) (int, error) {
	r.dnsMu.Lock()
	defer r.dnsMu.Unlock()
	if r.dnsFallback == addr {
		return 0, nil
	}
	r.dnsFallback = addr
	servers := r.dnsServersLocked()
	files, err := filepath.Glob(filepath.Join(r.containersDir(), "*", "resolv.conf"))
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, f := range files {
		old, err := os.ReadFile(f)
		if err != nil {
			continue // the container went
		}
		updated := withNameservers(old, servers)
		if bytes.Equal(old, updated) {
			continue
		}
		if err := rewriteInPlace(f, updated); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}

// withNameservers is a resolv.conf with its nameserver lines replaced by
// servers (the rest kept as it is).
func withNameservers(conf []byte, servers []string) []byte {
	var b strings.Builder
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	for _, line := range strings.SplitAfter(string(conf), "\n") {
		if line == "" || strings.HasPrefix(strings.TrimSpace(line), "nameserver") {
			continue
		}
		b.WriteString(line)
	}
	return []byte(b.String())
}

// rewriteInPlace replaces a file's content keeping its inode.
func rewriteInPlace(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// resolvConf renders /etc/resolv.conf for a container.
func resolvConf(servers, search, options []string) []byte {
	var b strings.Builder
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	if len(options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(options, " "))
	}
	return []byte(b.String())
}

// hostsFile renders /etc/hosts for a container.
func hostsFile(ip, hostname string) []byte {
	return []byte("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" + ip + "\t" + hostname + "\n")
}
