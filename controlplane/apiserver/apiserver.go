// Package apiserver serves Berth's gRPC API: the Berth service that users
// and the CLI call, and the NodeAgent service that agents call. It owns
// the wire boundary: it converts between api/pb and api types, validates
// every request before anything is stored, and turns store errors into
// gRPC status codes. It makes no scheduling or lifecycle decisions; the
// controllers do.
package apiserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/controller"
	"github.com/berth-dev/berth/controlplane/publish"
	"github.com/berth-dev/berth/controlplane/secrets"
	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/internal/deltalog"
	"github.com/berth-dev/berth/manifests"
	"github.com/berth-dev/berth/pki"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Config configures the API server.
type Config struct {
	// ImageDir holds uploaded image tarballs.
	ImageDir string
	// MaxImageSize bounds one upload (default 4 GiB); ImageQuota the
	// uploads' total (default 20 GiB).
	MaxImageSize, ImageQuota int64
	// ClusterCIDR is divided into one pod subnet per node.
	ClusterCIDR string
	// NodeSubnetBits is the prefix length of a node's pod subnet.
	NodeSubnetBits int
	// HeartbeatInterval is what agents are told; a node's lease lives for
	// three intervals.
	HeartbeatInterval time.Duration
	// NodeTimeout is the lifetime of a node's heartbeat lease: a node
	// that misses heartbeats this long is NotReady and its endpoints leave
	// discovery. Default three heartbeat intervals.
	NodeTimeout time.Duration
	// CA signs the certificates of joining parts; Auth holds tokens and
	// identities. Without them only Join-free, anonymous use is possible
	// and every call that needs a credential is refused.
	CA   *pki.CA
	Auth *store.AuthCache
	// Secrets seals and opens Secret values; without it secrets are
	// refused.
	Secrets *secrets.Box
	// CertTTL is the lifetime of the certificates Join and renewals issue.
	CertTTL time.Duration
	// MaxNodes caps the nodes that may join (0: no cap).
	MaxNodes int
	// ReplicaTLS is the client configuration (this replica's certificate)
	// for fetching an upload from another replica.
	ReplicaTLS *tls.Config
	// Liveness is this replica's record of node heartbeats (in memory;
	// it writes only transitions to etcd). Nil: every heartbeat is
	// written to etcd (store.Heartbeat).
	Liveness Liveness
	// ReplicaCert is this replica's certificate, presented to node
	// agents' NodeShell (logs, exec, port-forward).
	ReplicaCert *pki.KeyPair
	// Gateways reports the xDS clients (nil: none known).
	Gateways func() []api.GatewayStatus
	// Loads reports per-revision traffic for `berth rollout status`.
	Loads controller.LoadReader
	// Members is the control plane's own membership (get servers, join,
	// snapshots); nil: those calls are Unimplemented.
	Members Members
	// DataDir is the embedded etcd's data directory: while its
	// filesystem has less than MinFreeDisk free (default
	// DefaultMinFreeDisk), writes are refused naming it. "": no guard
	// (an external etcd's disk is not this replica's to watch).
	DataDir     string
	MinFreeDisk uint64
	Logger      *slog.Logger
}

// Server implements pb.BerthServer and pb.NodeAgentServer.
type Server struct {
	pb.UnimplementedBerthServer
	pb.UnimplementedNodeAgentServer

	cfg       Config
	store     *store.Store
	cache     *store.Cache
	publisher *publish.Publisher
	logger    *slog.Logger
	disk      *diskGuard // nil: no guard
	// replica is this replica's API address (SetReplica); pulls
	// serialises image pulls.
	replica       atomic.Pointer[replicaIdentity]
	pulls         sync.Mutex
	shells        shellConns
	whole         atomic.Pointer[pb.DiscoverySnapshot]
	encodedDeltas encodedDeltas
	// nodeFeed is the node list WatchNodes serves (RunNodeFeed).
	nodeFeed *deltalog.Log[*pb.Node]
	// open are the streams to cut when their credentials are revoked.
	open openStreams
}

type replicaIdentity struct{ addr string }

// SetReplica tells the server the API address the other replicas reach it
// at.
func (s *Server) SetReplica(addr string) {
	s.replica.Store(&replicaIdentity{addr: addr})
}

// DefaultCertTTL is the lifetime of part certificates; parts renew them
// two thirds of the way through.
const DefaultCertTTL = 30 * 24 * time.Hour

// New returns an API server.
// DefaultConfig is the API server's defaults (a zero field of the Config
// New gets takes its value from here).
func DefaultConfig() Config {
	return Config{NodeSubnetBits: 24, HeartbeatInterval: time.Second, CertTTL: DefaultCertTTL,
		MaxImageSize: DefaultMaxImageSize, ImageQuota: DefaultImageQuota}
}

func New(cfg Config, st *store.Store, cache *store.Cache, pub *publish.Publisher) (*Server, error) {
	def := DefaultConfig()
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.NodeSubnetBits == 0 {
		cfg.NodeSubnetBits = def.NodeSubnetBits
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = def.HeartbeatInterval
	}
	if cfg.NodeTimeout <= 0 {
		cfg.NodeTimeout = 3 * cfg.HeartbeatInterval // a lease of three heartbeats
	}
	if cfg.CertTTL <= 0 {
		cfg.CertTTL = def.CertTTL
	}
	if cfg.MaxImageSize <= 0 {
		cfg.MaxImageSize = def.MaxImageSize
	}
	if cfg.ImageQuota <= 0 {
		cfg.ImageQuota = def.ImageQuota
	}
	if err := os.MkdirAll(cfg.ImageDir, 0o700); err != nil {
		return nil, fmt.Errorf("apiserver: image dir: %w", err)
	}
	if cfg.MinFreeDisk == 0 {
		cfg.MinFreeDisk = DefaultMinFreeDisk
	}
	return &Server{cfg: cfg, store: st, cache: cache, publisher: pub, logger: cfg.Logger.With("component", "apiserver"), disk: newDiskGuard(cfg.DataDir, cfg.MinFreeDisk),
		nodeFeed: deltalog.New(nodeFeedKeep, sameRoute)}, nil
}

func storeErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, store.ErrConflict):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, store.ErrTooLarge):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.Canceled, err.Error())
	default:
		return status.Error(codes.Internal, err.Error())
	}
}

func nsOrDefault(ns string) string {
	if ns == "" {
		return api.DefaultNamespace
	}
	return ns
}

// Apply validates every service and stores them all, or none.
func (s *Server) Apply(ctx context.Context, req *pb.ApplyRequest) (*pb.ApplyResponse, error) {
	if len(req.Services)+len(req.Volumes)+len(req.Secrets) == 0 {
		return nil, status.Error(codes.InvalidArgument, "apply: no services, volumes or secrets in the request")
	}
	svcs := make([]api.Service, 0, len(req.Services))
	var problems []string
	seen := map[string]int{}
	for i, p := range req.Services {
		svc := pb.ToService(p)
		svc.Status = api.ServiceStatus{}
		manifests.Defaults(svc)
		where := fmt.Sprintf("services[%d] (Service %s/%s)", i, svc.Metadata.Namespace, svc.Metadata.Name)
		for _, bad := range pb.BadDurations(p.GetSpec()) {
			problems = append(problems, where+": "+bad)
		}
		if err := manifests.Validate(svc); err != nil {
			problems = append(problems, where+": "+err.Error())
		}
		if j, dup := seen[svc.Key()]; dup {
			problems = append(problems, fmt.Sprintf("%s: same service as services[%d]", where, j))
		}
		seen[svc.Key()] = i
		svcs = append(svcs, *svc)
	}
	vols := make([]api.Volume, 0, len(req.Volumes))
	seenVol := map[string]int{}
	for i, p := range req.Volumes {
		vol := pb.ToVolume(p)
		manifests.DefaultsVolume(vol)
		where := fmt.Sprintf("volumes[%d] (Volume %s)", i, vol.Key())
		if err := manifests.ValidateVolume(vol); err != nil {
			problems = append(problems, where+": "+err.Error())
		}
		if j, dup := seenVol[vol.Key()]; dup {
			problems = append(problems, fmt.Sprintf("%s: same volume as volumes[%d]", where, j))
		}
		seenVol[vol.Key()] = i
		vols = append(vols, *vol)
	}
	problems = append(problems, checkVolumeRefs(s.cache.View(), svcs, vols)...)
	sealed, secretKeys, bad := s.sealSecrets(req.Secrets)
	problems = append(problems, bad...)
	bad, err := s.checkSecretRefs(ctx, svcs, secretKeys)
	if err != nil {
		return nil, storeErr(err)
	}
	problems = append(problems, bad...)
	if len(problems) > 0 {
		return nil, status.Error(codes.InvalidArgument, "apply rejected, nothing stored: "+strings.Join(problems, "; "))
	}
	// The revision pins the upload its image names now (the server's
	// word, never the client's): a tag re-pointed later changes nothing
	// that runs until the service is applied again.
	imageRefs, err := s.store.ImageReferences(ctx)
	if err != nil {
		return nil, storeErr(err)
	}
	for i := range svcs {
		svcs[i].Spec.ImageDigest = imageRefs[svcs[i].Spec.Image]
	}
	if req.DryRun {
		out := &pb.ApplyResponse{}
		for _, svc := range svcs {
			out.Results = append(out.Results, &pb.ApplyResult{Namespace: svc.Metadata.Namespace, Name: svc.Metadata.Name, Action: "validated"})
		}
		for _, sec := range sealed {
			out.Results = append(out.Results, &pb.ApplyResult{Kind: api.KindSecret, Namespace: sec.Namespace, Name: sec.Name, Action: "validated"})
		}
		return out, nil
	}
	results, err := s.store.Apply(ctx, svcs, vols, sealed...)
	if errors.Is(err, store.ErrInvalid) {
		return nil, status.Error(codes.InvalidArgument, "apply rejected, nothing stored: "+err.Error())
	}
	if err != nil {
		return nil, storeErr(err)
	}
	// Read your writes: a get right after this apply shows it.
	var written int64
	for _, r := range results {
		if r.Kind != api.KindSecret {
			written = max(written, r.Written)
		}
	}
	if written > 0 {
		s.cache.WaitFor(ctx, written, 2*time.Second)
	}
	out := &pb.ApplyResponse{}
	for _, r := range results {
		out.Results = append(out.Results, &pb.ApplyResult{Kind: r.Kind, Namespace: r.Namespace, Name: r.Name, Action: r.Action, Revision: r.Revision})
		if r.Action == "unchanged" {
			continue
		}
		if r.Kind == api.KindVolume {
			_ = s.store.RecordEvent(ctx, store.Event{Namespace: r.Namespace, Object: "volume/" + r.Name, Reason: "Applied", Message: "volume " + r.Action})
			continue
		}
		if r.Kind == api.KindSecret {
			// Names only: new containers of its users get the new values.
			_ = s.store.RecordEvent(ctx, store.Event{Namespace: r.Namespace, Object: "secret/" + r.Name, Reason: "Applied", Message: fmt.Sprintf("secret %s by %s", r.Action, principalOf(ctx))})
			continue
		}
		_ = s.store.RecordEvent(ctx, store.Event{Namespace: r.Namespace, Object: "service/" + r.Name, Reason: "Applied",
			Message: fmt.Sprintf("service %s (revision %d)", r.Action, r.Revision)})
		s.logger.Info("service applied", "service", r.Namespace+"/"+r.Name, "action", r.Action, "revision", r.Revision)
	}
	return out, nil
}

// ListServices lists services with their replica counts.
func (s *Server) ListServices(ctx context.Context, req *pb.ListServicesRequest) (*pb.ListServicesResponse, error) {
	v := s.cache.View()
	out := &pb.ListServicesResponse{}
	for i := range v.Services {
		svc := &v.Services[i]
		if req.Namespace != "" && svc.Metadata.Namespace != req.Namespace {
			continue
		}
		live, ready := v.ServiceReplicas(svc.Key())
		out.Services = append(out.Services, &pb.ServiceSummary{Service: pb.FromService(svc), Desired: svc.Spec.ReplicaCount(), Ready: ready, Instances: live})
	}
	return out, nil
}

// instanceViews are the instances with their statuses, and whether the
// latest discovery snapshot keeps their endpoint by panic routing.
func (s *Server) instanceViews(v *store.View, ns, service string) []*pb.InstanceView {
	var out []*pb.InstanceView
	kept := s.panicEndpoints(ns, service)
	for _, vi := range v.Instances {
		in := vi.Instance
		if (ns != "" && in.Namespace != ns) || (service != "" && in.Service != service) {
			continue
		}
		iv := &pb.InstanceView{Instance: pb.FromInstance(&in), PanicRouting: kept[in.ID]}
		if st, ok := v.Statuses[in.ID]; ok {
			iv.Status = pb.FromStatus(&st)
		}
		out = append(out, iv)
	}
	return out
}

// panicEndpoints returns the instances whose endpoints panic routing keeps
// in the latest snapshot, among the services of ns (all: "") named service
// (all: "").
func (s *Server) panicEndpoints(ns, service string) map[string]bool {
	snap := s.publisher.Latest()
	if snap == nil {
		return nil
	}
	var kept map[string]bool
	for i := range snap.Services {
		svc := &snap.Services[i]
		if (ns != "" && svc.Namespace != ns) || (service != "" && svc.Name != service) {
			continue
		}
		for _, r := range svc.Revisions {
			for _, e := range r.Endpoints {
				if e.Panic {
					if kept == nil {
						kept = map[string]bool{}
					}
					kept[e.Instance] = true
				}
			}
		}
	}
	return kept
}

// GetService describes one service: spec, instances, DNS and events.
func (s *Server) GetService(ctx context.Context, req *pb.GetServiceRequest) (*pb.ServiceDetail, error) {
	ns := nsOrDefault(req.Namespace)
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "get service: name is required")
	}
	// The service itself is read from etcd, so a describe right after an
	// apply shows what was applied; instances come from the cache.
	svc, err := s.store.GetService(ctx, ns, req.Name)
	if err != nil {
		return nil, storeErr(err)
	}
	v := s.cache.View()
	out := &pb.ServiceDetail{Service: pb.FromService(svc), Instances: s.instanceViews(v, ns, req.Name)}
	fqdn := fmt.Sprintf("%s.%s.svc.%s", req.Name, ns, api.ClusterDomain)
	out.DnsNames = []string{fqdn, req.Name + "." + ns, req.Name + " (from namespace " + ns + ")"}
	if snap := s.publisher.Latest(); snap != nil {
		if ds := snap.Lookup(ns, req.Name); ds != nil {
			// What the DNS server answers: discovery's one rule.
			for _, rev := range ds.Serving() {
				for _, e := range rev.Endpoints {
					out.DnsAnswers = append(out.DnsAnswers, fmt.Sprintf("%s A %s (%s, revision %d, weight %d)", fqdn, e.IP, e.Instance, rev.Number, rev.Weight))
				}
			}
			for _, p := range ds.Ports {
				proto := "tcp"
				if p.Protocol == "udp" {
					proto = "udp"
				}
				out.DnsNames = append(out.DnsNames, fmt.Sprintf("_%s._%s.%s (SRV, port %d)", p.Name, proto, fqdn, p.Port))
			}
		}
	}
	claims, err := s.store.RouteOwners(ctx, &svc.Spec)
	if err != nil {
		return nil, storeErr(err)
	}
	for _, c := range claims {
		owner := "unclaimed"
		if c.Service != "" {
			owner = fmt.Sprintf("%s (claimed %s)", c.Owner(), c.ClaimedAt.Format(time.RFC3339))
		}
		out.RouteOwners = append(out.RouteOwners, fmt.Sprintf("%s %s -> %s", c.Host, c.Path, owner))
	}
	events, err := s.store.ListEvents(ctx, ns, "service/"+req.Name, 50)
	if err != nil {
		return nil, storeErr(err)
	}
	for _, ev := range events {
		out.Events = append(out.Events, fromEvent(ev))
	}
	return out, nil
}

func fromEvent(ev store.Event) *pb.Event {
	return &pb.Event{At: tsOf(ev.At), Namespace: ev.Namespace, Object: ev.Object, Reason: ev.Reason, Message: ev.Message, Type: ev.Type}
}

// DeleteService removes a service; its instances drain, then stop.
func (s *Server) DeleteService(ctx context.Context, req *pb.DeleteServiceRequest) (*pb.DeleteServiceResponse, error) {
	ns := nsOrDefault(req.Namespace)
	if req.Name == "" {
		return nil, status.Error(codes.InvalidArgument, "delete service: name is required")
	}
	if err := s.store.DeleteService(ctx, ns, req.Name, req.KeepHistory); err != nil {
		return nil, storeErr(err)
	}
	n := 0 // the controllers drain them
	for _, vi := range s.cache.View().ServiceInstances(ns + "/" + req.Name) {
		if vi.Instance.Live() {
			n++
		}
	}
	_ = s.store.RecordEvent(ctx, store.Event{Namespace: ns, Object: "service/" + req.Name, Reason: "Deleted", Message: fmt.Sprintf("service deleted; %d instances draining", n)})
	s.logger.Info("service deleted", "service", ns+"/"+req.Name, "draining", n)
	return &pb.DeleteServiceResponse{InstancesDraining: int32(n)}, nil
}

// ListInstances lists instances with their observed status.
func (s *Server) ListInstances(ctx context.Context, req *pb.ListInstancesRequest) (*pb.ListInstancesResponse, error) {
	return &pb.ListInstancesResponse{Instances: s.instanceViews(s.cache.View(), req.Namespace, req.Service)}, nil
}

// ListNodes lists nodes with what is allocated on them.
func (s *Server) ListNodes(ctx context.Context, req *pb.ListNodesRequest) (*pb.ListNodesResponse, error) {
	v := s.cache.View()
	out := &pb.ListNodesResponse{}
	for i := range v.Nodes {
		n := pb.FromNode(&v.Nodes[i])
		alloc := &pb.Capacity{}
		for _, vi := range v.Instances {
			if vi.Instance.Node == n.Name && vi.Instance.Desired == api.DesiredRunning {
				r := vi.Instance.Template.Resources.Request()
				alloc.MilliCpu += r.MilliCPU
				alloc.MemoryBytes += r.MemoryBytes
				n.Instances++
			}
		}
		n.Allocated = alloc
		if s.cfg.Liveness != nil {
			// The lease key says when this node was claimed; the replica
			// that hears it knows its last heartbeat.
			if at, ok := s.cfg.Liveness.LastHeard(n.Name); ok {
				n.Heartbeat = timestamppb.New(at)
			}
		}
		out.Nodes = append(out.Nodes, n)
	}
	return out, nil
}

// ListEvents lists recent events.
func (s *Server) ListEvents(ctx context.Context, req *pb.ListEventsRequest) (*pb.ListEventsResponse, error) {
	events, err := s.store.ListEvents(ctx, req.Namespace, req.Object, int(req.Limit))
	if err != nil {
		return nil, storeErr(err)
	}
	out := &pb.ListEventsResponse{}
	for _, ev := range events {
		out.Events = append(out.Events, fromEvent(ev))
	}
	return out, nil
}

// ---- NodeAgent ----

// Register joins a node and returns its pod subnet.
func (s *Server) Register(ctx context.Context, req *pb.RegisterRequest) (*pb.RegisterResponse, error) {
	if err := validNodeName(req.Name); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if req.Address != "" && net.ParseIP(req.Address) == nil {
		return nil, status.Errorf(codes.InvalidArgument, "register: address %q is not an IP address", req.Address)
	}
	if req.ShellAddr != "" {
		// The shell must be on the node's own address: a node cannot point
		// the control plane's connections anywhere else.
		host, port, err := net.SplitHostPort(req.ShellAddr)
		if err != nil || host != req.Address || port == "0" {
			return nil, status.Errorf(codes.InvalidArgument, "register: shell address %q must be the node's address %q with a port", req.ShellAddr, req.Address)
		}
	}
	n := api.Node{Name: req.Name, Address: req.Address, Labels: req.Labels, ShellAddr: req.ShellAddr}
	if c := req.Capacity; c != nil {
		n.Capacity = api.Capacity{MilliCPU: c.MilliCpu, MemoryBytes: c.MemoryBytes}
	}
	node, err := s.store.RegisterNode(ctx, n, s.cfg.ClusterCIDR, s.cfg.NodeSubnetBits)
	if err != nil {
		return nil, storeErr(err)
	}
	if s.cfg.Liveness != nil {
		// Live when Register returns (waiting a second at most: a join
		// storm does not queue on etcd here).
		s.cfg.Liveness.HeardAndClaimed(ctx, req.Name, 0)
	} else if err := s.store.Heartbeat(ctx, req.Name, s.cfg.NodeTimeout, 0); err != nil {
		return nil, storeErr(err)
	}
	_ = s.store.RecordEvent(ctx, store.Event{Object: "node/" + req.Name, Reason: "Registered", Message: fmt.Sprintf("node %s joined with pod subnet %s", req.Name, node.PodCIDR)})
	s.logger.Info("node registered", "node", req.Name, "podCIDR", node.PodCIDR, "address", req.Address)
	return &pb.RegisterResponse{PodCidr: node.PodCIDR, HeartbeatIntervalMs: s.cfg.HeartbeatInterval.Milliseconds(), ClusterCidr: s.cfg.ClusterCIDR}, nil
}

func validNodeName(name string) error {
	return validPartName("node", name)
}

// Liveness records heartbeats.
type Liveness interface {
	Heard(node string, dnsVersion uint64)
	HeardAndClaimed(ctx context.Context, node string, dnsVersion uint64)
	LastHeard(node string) (time.Time, bool)
}

// Heartbeat renews a node's lease.
func (s *Server) Heartbeat(ctx context.Context, req *pb.HeartbeatRequest) (*pb.HeartbeatResponse, error) {
	if s.cfg.Liveness != nil {
		s.cfg.Liveness.Heard(req.Name, req.DnsVersion)
		return &pb.HeartbeatResponse{}, nil
	}
	if err := s.store.Heartbeat(ctx, req.Name, s.cfg.NodeTimeout, req.DnsVersion); err != nil {
		return nil, storeErr(err)
	}
	return &pb.HeartbeatResponse{}, nil
}

// Heartbeats takes a node's heartbeats on one stream: the caller was
// authorised for the node its first message names, and every message must
// name the same node.
func (s *Server) Heartbeats(stream grpc.ClientStreamingServer[pb.HeartbeatRequest, pb.HeartbeatResponse]) error {
	node := ""
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&pb.HeartbeatResponse{})
		}
		if err != nil {
			return err
		}
		if node == "" {
			node = req.Name
		} else if req.Name != node {
			return errNotYours("heartbeat stream of node %s named node %q", node, req.Name)
		}
		if s.cfg.Liveness != nil {
			s.cfg.Liveness.Heard(node, req.DnsVersion)
		} else if err := s.store.Heartbeat(stream.Context(), node, s.cfg.NodeTimeout, req.DnsVersion); err != nil {
			return storeErr(err)
		}
	}
}

// WatchAssignments streams the node's instances whenever they change.
func (s *Server) WatchAssignments(req *pb.WatchAssignmentsRequest, stream pb.NodeAgent_WatchAssignmentsServer) error {
	if req.Node == "" {
		return status.Error(codes.InvalidArgument, "watch assignments: node is required")
	}
	// Woken only when what is placed on this node changes.
	changes, unsubscribe := s.cache.SubscribeNode(req.Node)
	defer unsubscribe()
	select {
	case <-stream.Context().Done():
		return nil
	case <-s.cache.Ready():
	}
	var last string
	sent := false
	for {
		if key, build := nodeAssignments(s.cache.View(), req.Node); !sent || key != last {
			if err := stream.Send(build()); err != nil {
				return err
			}
			last, sent = key, true
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-changes:
		}
	}
}

// nodeAssignments returns what a node's agent acts on, as a key to compare
// with the last one sent (most changes leave a node's set alone), and a
// function building the message, run only when it changed.
func nodeAssignments(v *store.View, node string) (key string, build func() *pb.Assignments) {
	mine := v.NodeInstances(node)
	var ids []string
	for _, vi := range mine {
		ids = append(ids, vi.Instance.ID+":"+vi.Instance.Desired+":"+strconv.FormatBool(vi.Instance.Draining))
	}
	var deleteVolumes []string
	for key, vv := range v.Volumes {
		if vv.Volume.Status.Deleting && vv.Volume.Status.Node == node {
			deleteVolumes = append(deleteVolumes, key)
			ids = append(ids, "rmvol:"+key)
		}
	}
	sort.Strings(ids)
	return strings.Join(ids, ","), func() *pb.Assignments {
		msg := &pb.Assignments{Revision: v.Revision}
		for i := range mine {
			in := &mine[i].Instance
			msg.Instances = append(msg.Instances, pb.FromInstance(in))
			if st, ok := v.Statuses[in.ID]; ok {
				msg.Statuses = append(msg.Statuses, pb.FromStatus(&st))
			}
		}
		for _, in := range msg.Instances {
			for _, m := range in.Template.GetVolumes() {
				key := in.Namespace + "/" + m.Name
				if vv, ok := v.Volumes[key]; ok && !m.Tmpfs {
					if size, err := api.ParseMemory(vv.Volume.Spec.Size); err == nil && size > 0 {
						if msg.VolumeSizes == nil {
							msg.VolumeSizes = map[string]int64{}
						}
						msg.VolumeSizes[key] = size
					}
				}
			}
		}
		sort.Strings(deleteVolumes)
		msg.DeleteVolumes = deleteVolumes
		return msg
	}
}

// ReportStatus stores what an agent observed and turns changes a user
// cares about (restarts, errors, readiness) into events.
func (s *Server) ReportStatus(ctx context.Context, req *pb.ReportStatusRequest) (*pb.ReportStatusResponse, error) {
	v := s.cache.View()
	statuses := make([]api.InstanceStatus, 0, len(req.Statuses))
	var events []store.Event
	var podNet netip.Prefix
	if n := v.Node(req.Node); n != nil {
		podNet, _ = netip.ParsePrefix(n.PodCIDR)
	}
	for _, p := range req.Statuses {
		st := pb.ToStatus(p)
		if st.Node != req.Node {
			return nil, status.Errorf(codes.InvalidArgument, "report status: instance %s reported for node %q by node %q", st.ID, st.Node, req.Node)
		}
		vi, ok := v.Instance(st.ID)
		if !ok {
			continue
		}
		in := vi.Instance
		// A node reports only its own instances, at addresses of its own
		// pod subnet: DNS and the gateways follow what it reports.
		if in.Node != req.Node {
			return nil, errNotYours("node %s reported instance %s, which is assigned to node %q", req.Node, st.ID, in.Node)
		}
		if st.IP != "" {
			ip, err := netip.ParseAddr(st.IP)
			if err != nil || !podNet.IsValid() || !podNet.Contains(ip) {
				return nil, errNotYours("node %s reported address %q for instance %s, outside its pod subnet %s", req.Node, st.IP, st.ID, podNet)
			}
		}
		statuses = append(statuses, st)
		old, had := v.Statuses[st.ID]
		obj := "service/" + in.Service
		switch {
		case had && st.Restarts > old.Restarts:
			msg := fmt.Sprintf("instance %s restarted (restart %d)", st.ID, st.Restarts)
			if st.LastExit != nil {
				msg += fmt.Sprintf(": last exit code %d", st.LastExit.Code)
			}
			events = append(events, store.Event{Namespace: in.Namespace, Object: obj, Reason: "Restarted", Type: "Warning", Message: msg})
		case had && old.Ready && !st.Ready:
			msg := fmt.Sprintf("instance %s not ready", st.ID)
			if st.LastError != "" {
				msg += ": " + st.LastError
			}
			events = append(events, store.Event{Namespace: in.Namespace, Object: obj, Reason: "NotReady", Type: "Warning", Message: msg})
		case st.LastError != "" && st.LastError != old.LastError && strings.HasPrefix(st.LastError, "readiness probe failed: ") && strings.HasPrefix(old.LastError, "readiness probe failed: "):
			// A probe failing another way: no event for each variation.
		case st.LastError != "" && st.LastError != old.LastError && strings.HasPrefix(st.LastError, "readiness probe failed: "):
			events = append(events, store.Event{Namespace: in.Namespace, Object: obj, Reason: "Unhealthy", Type: "Warning", Message: fmt.Sprintf("instance %s: %s", st.ID, st.LastError)})
		case st.LastError != "" && st.LastError != old.LastError:
			events = append(events, store.Event{Namespace: in.Namespace, Object: obj, Reason: "Failed", Type: "Warning", Message: fmt.Sprintf("instance %s: %s", st.ID, st.LastError)})
		case st.Ready && !old.Ready:
			events = append(events, store.Event{Namespace: in.Namespace, Object: obj, Reason: "Ready", Message: fmt.Sprintf("instance %s ready at %s on %s", st.ID, st.IP, st.Node)})
		}
	}
	if err := s.store.PutStatuses(ctx, statuses); err != nil {
		return nil, storeErr(err)
	}
	// A report's events go together, after its statuses: a node reporting
	// a hundred instances ready writes one transaction of events, not one
	// each.
	_ = s.store.RecordEvents(ctx, events)
	return &pb.ReportStatusResponse{}, nil
}

// WatchDiscovery streams every published discovery snapshot.
func (s *Server) WatchDiscovery(req *pb.WatchDiscoveryRequest, stream pb.NodeAgent_WatchDiscoveryServer) error {
	ch, stop := s.publisher.Watch()
	defer stop()
	var sent uint64
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-ch:
		}
		snap := s.publisher.Latest()
		if snap == nil || (sent != 0 && snap.Version == sent) {
			continue
		}
		if err := stream.Send(pb.FromSnapshot(snap)); err != nil {
			return err
		}
		sent = snap.Version
	}
}

// WatchDiscoveryDeltas streams the discovery snapshot as changes: the
// services changed since the version the agent has and those removed, or
// the whole snapshot when it has none or fell too far behind. Between
// two messages the agent may skip versions: each delta is from the one it
// has to the latest.
func (s *Server) WatchDiscoveryDeltas(req *pb.WatchDiscoveryRequest, stream grpc.ServerStreamingServer[pb.DiscoveryDelta]) error {
	ch, stop := s.publisher.Watch()
	defer stop()
	// gRPC answers in the compression the request came in (agents ask in
	// gzip: a service's endpoints are alike and compress about tenfold);
	// messages encoded once are shared only between streams of the same.
	compressor, shared := streamCompressor(stream.Context())
	have := req.HaveVersion
	for first := true; ; first = false {
		if !first {
			select {
			case <-stream.Context().Done():
				return nil
			case <-ch:
			}
		}
		latest := s.publisher.Latest()
		if latest == nil || latest.Version == have {
			continue
		}
		// Agents holding the same version get the same message: the
		// difference is computed, converted and encoded once, and the
		// same bytes go to each (1,000 agents: once, not a thousand
		// times). A version the publisher cannot delta from counts as 0
		// (the whole snapshot): made-up versions cannot make it encode
		// the whole snapshot once each.
		have = s.publisher.DeltaBase(have)
		msg, err := s.encodedDeltas.get(latest.Version, deltaKey{have, compressor, req.EndpointDeltas, shared}, func() (*encodedDelta, error) {
			return s.discoveryDelta(stream, have, req.EndpointDeltas, shared)
		})
		if err != nil {
			return status.Errorf(codes.Internal, "discovery delta from %d: %v", have, err)
		}
		if shared {
			err = stream.SendMsg(msg.pm)
		} else {
			err = stream.Send(msg.msg)
		}
		if err != nil {
			return err
		}
		have = msg.version
	}
}

// discoveryDelta builds the message that brings an agent holding version
// have to the latest snapshot, encoded on stream when shared.
func (s *Server) discoveryDelta(stream grpc.ServerStream, have uint64, endpoints, shared bool) (*encodedDelta, error) {
	var snap *discovery.Snapshot
	var changed []discovery.Service
	var deltas []discovery.ServiceDelta
	var removed []string
	var whole bool
	if endpoints {
		snap, deltas, removed, whole = s.publisher.SinceEndpoints(have)
	} else {
		snap, changed, removed, whole = s.publisher.Since(have)
	}
	msg := &pb.DiscoveryDelta{Version: snap.Version}
	switch {
	case whole:
		msg.Services = s.wholeSnapshot(snap).Services
	case endpoints:
		msg.BaseVersion, msg.Removed = have, removed
		msg.ServiceDeltas = pb.FromServiceDeltas(deltas)
	default:
		msg.BaseVersion, msg.Removed = have, removed
		msg.Services = pb.FromSnapshot(&discovery.Snapshot{Services: changed}).Services
	}
	d := &encodedDelta{version: snap.Version, msg: msg}
	if shared {
		d.pm = &grpc.PreparedMsg{}
		if err := d.pm.Encode(stream, msg); err != nil {
			return nil, err
		}
		d.msg = nil
	}
	return d, nil
}

// encodedDeltas holds the discovery messages to the latest version, by
// the version they start from and how they are sent.
type encodedDeltas struct {
	mu      sync.Mutex
	version uint64
	byBase  map[deltaKey]*encodedDeltaOnce
}

type deltaKey struct {
	have       uint64
	compressor string
	endpoints  bool // endpoint-level deltas
	shared     bool // encoded (else the message)
}

type encodedDeltaOnce struct {
	once sync.Once
	d    *encodedDelta
	err  error
}

// encodedDelta is one message, encoded (pm) or not (msg), and the version
// it brings the agent to (the latest when it was built: possibly newer
// than the version it is filed under).
type encodedDelta struct {
	version uint64
	pm      *grpc.PreparedMsg
	msg     *pb.DiscoveryDelta
}

// get returns the message from key.have to version, building it with
// build the first time it is asked for; a newer version forgets the older
// ones.
func (e *encodedDeltas) get(version uint64, key deltaKey, build func() (*encodedDelta, error)) (*encodedDelta, error) {
	e.mu.Lock()
	if version > e.version || e.byBase == nil {
		e.version, e.byBase = version, map[deltaKey]*encodedDeltaOnce{}
	}
	var o *encodedDeltaOnce
	if version == e.version {
		o = e.byBase[key]
		if o == nil {
			o = &encodedDeltaOnce{}
			e.byBase[key] = o
		}
	} else {
		o = &encodedDeltaOnce{} // an older version (a slow reader): not kept
	}
	e.mu.Unlock()
	o.once.Do(func() { o.d, o.err = build() })
	return o.d, o.err
}

// streamCompressor returns the compression gRPC uses for a server
// stream's messages: that of the client's request ("" for none). ok is
// false when gRPC does not say (its transport stream's RecvCompress is
// not a public API): then nothing encoded is shared.
func streamCompressor(ctx context.Context) (name string, ok bool) {
	rc, ok := grpc.ServerTransportStreamFromContext(ctx).(interface{ RecvCompress() string })
	if !ok {
		return "", false
	}
	if name = rc.RecvCompress(); name == "identity" {
		name = ""
	}
	return name, true
}

// wholeSnapshot is snap on the wire, converted once per version for every
// agent that needs it whole.
func (s *Server) wholeSnapshot(snap *discovery.Snapshot) *pb.DiscoverySnapshot {
	if w := s.whole.Load(); w != nil && w.Version == snap.Version {
		return w
	}
	w := pb.FromSnapshot(snap)
	s.whole.Store(w)
	return w
}

// ListGateways reports the xDS clients of every control plane replica (as
// the replicas record them in etcd); those of this replica come with their
// live lag.
func (s *Server) ListGateways(ctx context.Context, req *pb.ListGatewaysRequest) (*pb.ListGatewaysResponse, error) {
	return s.gateways(), nil
}

func (s *Server) gateways() *pb.ListGatewaysResponse {
	out := &pb.ListGatewaysResponse{}
	if snap := s.publisher.Latest(); snap != nil {
		out.PublishedVersion = snap.Version
	}
	local := map[string]api.GatewayStatus{}
	if s.cfg.Gateways != nil {
		for _, g := range s.cfg.Gateways() {
			local[g.NodeID] = g
		}
	}
	add := func(g api.GatewayStatus, replica string) {
		out.Gateways = append(out.Gateways, &pb.Gateway{NodeId: g.NodeID, Address: g.Address, Version: g.Version, State: g.State,
			LagMs: g.Lag.Milliseconds(), Delta: g.Delta, Proxyless: g.Proxyless, LastNack: g.LastNack, ConnectedAt: tsOf(g.Connected),
			Published: out.PublishedVersion, Replica: replica})
	}
	for _, g := range s.cache.View().Gateways {
		if live, ok := local[g.NodeID]; ok { // fresher than etcd's copy
			delete(local, g.NodeID)
			live.Replica = g.Replica
			g = live
		}
		add(g, g.Replica)
	}
	// Clients that connected here since this replica last wrote to etcd.
	for _, id := range slices.Sorted(maps.Keys(local)) {
		add(local[id], "")
	}
	return out
}
