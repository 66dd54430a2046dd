// Package pb holds Berth's generated protobuf/gRPC wire types (berth.proto)
// and their conversions to and from the internal types in api and
// discovery. Conversions live here, at the boundary, so no other package
// handles wire types except the API server, the agent client and the CLI.
package pb

import (
	"fmt"
	"maps"
	"sort"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/discovery"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func fromTS(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}

func durString(d api.Duration) string {
	if d.Duration == 0 {
		return ""
	}
	return d.Duration.String()
}

func parseDur(s string) api.Duration {
	d, _ := time.ParseDuration(s)
	return api.Duration{Duration: d}
}

// FromService converts a service to the wire.
func FromService(s *api.Service) *Service {
	return &Service{
		Metadata: &ObjectMeta{Name: s.Metadata.Name, Namespace: s.Metadata.Namespace, Labels: s.Metadata.Labels},
		Spec:     FromSpec(&s.Spec),
		Status: &ServiceStatus{
			Revision:   s.Status.Revision,
			RollbackTo: s.Status.RollbackTo,
			CreatedAt:  ts(s.Status.CreatedAt),
			UpdatedAt:  ts(s.Status.UpdatedAt),
		},
	}
}

// ToService converts a wire service. Durations that do not parse become
// zero; callers validate after converting. (Health durations are checked
// by ToServiceChecked.)
func ToService(p *Service) *api.Service {
	s := &api.Service{APIVersion: api.APIVersion, Kind: api.KindService}
	if m := p.GetMetadata(); m != nil {
		s.Metadata = api.ObjectMeta{Name: m.Name, Namespace: m.Namespace, Labels: m.Labels}
	}
	if p.GetSpec() != nil {
		s.Spec = ToSpec(p.Spec)
	}
	if st := p.GetStatus(); st != nil {
		s.Status = api.ServiceStatus{Revision: st.Revision, RollbackTo: st.RollbackTo, CreatedAt: fromTS(st.CreatedAt), UpdatedAt: fromTS(st.UpdatedAt)}
	}
	return s
}

// BadDurations lists the probe durations of a wire spec that do not
// parse, as "field: value" pairs, so the API server can reject them by
// name.
func BadDurations(p *ServiceSpec) []string {
	var bad []string
	for name, h := range map[string]*Health{"health": p.GetHealth(), "liveness": p.GetLiveness()} {
		if h == nil {
			continue
		}
		for field, v := range map[string]string{"interval": h.Interval, "period": h.Period, "timeout": h.Timeout, "initialDelay": h.InitialDelay} {
			if _, err := time.ParseDuration(v); v != "" && err != nil {
				bad = append(bad, "spec."+name+"."+field+": invalid duration "+v)
			}
		}
	}
	sort.Strings(bad)
	return bad
}

func fromHealth(h *api.Health) *Health {
	if h == nil {
		return nil
	}
	ph := &Health{Interval: durString(h.Interval), Period: durString(h.Period), Timeout: durString(h.Timeout), InitialDelay: durString(h.InitialDelay), FailureThreshold: h.FailureThreshold}
	if h.HTTP != nil {
		ph.Http = &HTTPProbe{Path: h.HTTP.Path, Port: h.HTTP.Port}
	}
	if h.TCP != nil {
		ph.Tcp = &TCPProbe{Port: h.TCP.Port}
	}
	return ph
}

func toHealth(h *Health) *api.Health {
	if h == nil {
		return nil
	}
	ah := &api.Health{Interval: parseDur(h.Interval), Period: parseDur(h.Period), Timeout: parseDur(h.Timeout), InitialDelay: parseDur(h.InitialDelay), FailureThreshold: h.FailureThreshold}
	if h.Http != nil {
		ah.HTTP = &api.HTTPProbe{Path: h.Http.Path, Port: h.Http.Port}
	}
	if h.Tcp != nil {
		ah.TCP = &api.TCPProbe{Port: h.Tcp.Port}
	}
	return ah
}

// FromSpec converts a spec to the wire.
func FromSpec(s *api.ServiceSpec) *ServiceSpec {
	p := &ServiceSpec{
		Image:        s.Image,
		Command:      s.Command,
		Args:         s.Args,
		Env:          s.Env,
		Replicas:     s.Replicas,
		Resources:    &Resources{Cpu: s.Resources.CPU, Memory: s.Resources.Memory, Pids: s.Resources.Pids},
		NodeSelector: s.NodeSelector,
	}
	for _, port := range s.Ports {
		p.Ports = append(p.Ports, &Port{Name: port.Name, Port: port.Port, Protocol: port.Protocol})
	}
	for _, m := range s.Volumes {
		p.Volumes = append(p.Volumes, &VolumeMount{Name: m.Name, MountPath: m.MountPath, ReadOnly: m.ReadOnly, Tmpfs: m.Tmpfs, Size: m.Size})
	}
	for _, m := range s.Secrets {
		p.Secrets = append(p.Secrets, &SecretMount{Name: m.Name, MountPath: m.MountPath, Env: maps.Clone(m.Env)})
	}
	for _, t := range s.VolumeTemplates {
		p.VolumeTemplates = append(p.VolumeTemplates, &VolumeTemplate{Name: t.Name, MountPath: t.MountPath, Size: t.Size})
	}
	p.ImageDigest = s.ImageDigest
	if sc := s.SecurityContext; sc != nil {
		p.SecurityContext = &SecurityContext{RunAsUser: sc.RunAsUser, RunAsGroup: sc.RunAsGroup, ReadOnlyRootFilesystem: sc.ReadOnlyRootFilesystem}
		if c := sc.Capabilities; c != nil {
			p.SecurityContext.CapabilitiesAdd, p.SecurityContext.CapabilitiesDrop = c.Add, c.Drop
		}
	}
	if r := s.Rollout; r != nil {
		pr := &RolloutSpec{Strategy: r.Strategy}
		for _, st := range r.Steps {
			pr.Steps = append(pr.Steps, &CanaryStep{Weight: st.Weight, Pause: string(st.Pause)})
		}
		if a := r.Analysis; a != nil {
			pr.Analysis = &Analysis{MaxErrorRate: a.MaxErrorRate, MinRequests: a.MinRequests, MaxLatency: durString(a.MaxLatency), MaxErrorRateIncrease: a.MaxErrorRateIncrease}
		}
		pr.MaxSurge, pr.MaxUnavailable, pr.MinReady = intOrPercent(r.MaxSurge), intOrPercent(r.MaxUnavailable), durString(r.MinReady)
		pr.CanaryReplicas = r.CanaryReplicas
		if h := r.CanaryHeader; h != nil {
			pr.CanaryHeader, pr.CanaryHeaderValue = h.Name, h.Value
		}
		if st := r.Sticky; st != nil {
			pr.StickyHeader, pr.StickyCookie = st.Header, st.Cookie
		}
		pr.ProgressDeadline = durString(r.ProgressDeadline)
		p.Rollout = pr
	}
	p.Health, p.Liveness = fromHealth(s.Health), fromHealth(s.Liveness)
	p.RestartedAt = ts(s.RestartedAt)
	if r := s.Route; r != nil {
		p.Route = &Route{Hosts: r.Hosts, Paths: r.Paths}
	}
	return p
}

// ToSpec converts a wire spec.
func ToSpec(p *ServiceSpec) api.ServiceSpec {
	s := api.ServiceSpec{
		Image:        p.Image,
		Command:      p.Command,
		Args:         p.Args,
		Env:          p.Env,
		Replicas:     p.Replicas,
		NodeSelector: p.NodeSelector,
	}
	if r := p.GetResources(); r != nil {
		s.Resources = api.Resources{CPU: r.Cpu, Memory: r.Memory, Pids: r.Pids}
	}
	for _, port := range p.Ports {
		s.Ports = append(s.Ports, api.Port{Name: port.Name, Port: port.Port, Protocol: port.Protocol})
	}
	for _, m := range p.Volumes {
		s.Volumes = append(s.Volumes, api.VolumeMount{Name: m.Name, MountPath: m.MountPath, ReadOnly: m.ReadOnly, Tmpfs: m.Tmpfs, Size: m.Size})
	}
	for _, m := range p.Secrets {
		s.Secrets = append(s.Secrets, api.SecretMount{Name: m.Name, MountPath: m.MountPath, Env: maps.Clone(m.Env)})
	}
	for _, t := range p.VolumeTemplates {
		s.VolumeTemplates = append(s.VolumeTemplates, api.VolumeTemplate{Name: t.Name, MountPath: t.MountPath, Size: t.Size})
	}
	s.ImageDigest = p.ImageDigest
	if sc := p.GetSecurityContext(); sc != nil {
		s.SecurityContext = &api.SecurityContext{RunAsUser: sc.RunAsUser, RunAsGroup: sc.RunAsGroup, ReadOnlyRootFilesystem: sc.ReadOnlyRootFilesystem}
		if len(sc.CapabilitiesAdd)+len(sc.CapabilitiesDrop) > 0 {
			s.SecurityContext.Capabilities = &api.Capabilities{Add: sc.CapabilitiesAdd, Drop: sc.CapabilitiesDrop}
		}
	}
	if r := p.GetRollout(); r != nil {
		ar := &api.RolloutSpec{Strategy: r.Strategy}
		for _, st := range r.Steps {
			ar.Steps = append(ar.Steps, api.CanaryStep{Weight: st.Weight, Pause: api.Pause(st.Pause)})
		}
		if a := r.Analysis; a != nil {
			ar.Analysis = &api.Analysis{MaxErrorRate: a.MaxErrorRate, MinRequests: a.MinRequests, MaxLatency: parseDur(a.MaxLatency), MaxErrorRateIncrease: a.MaxErrorRateIncrease}
		}
		ar.MaxSurge, ar.MaxUnavailable, ar.MinReady = parseIntOrPercent(r.MaxSurge), parseIntOrPercent(r.MaxUnavailable), parseDur(r.MinReady)
		ar.CanaryReplicas = r.CanaryReplicas
		if r.CanaryHeader != "" || r.CanaryHeaderValue != "" {
			ar.CanaryHeader = &api.HeaderMatch{Name: r.CanaryHeader, Value: r.CanaryHeaderValue}
		}
		if r.StickyHeader != "" || r.StickyCookie != "" {
			ar.Sticky = &api.StickyCohort{Header: r.StickyHeader, Cookie: r.StickyCookie}
		}
		ar.ProgressDeadline = parseDur(r.ProgressDeadline)
		s.Rollout = ar
	}
	s.Health, s.Liveness = toHealth(p.GetHealth()), toHealth(p.GetLiveness())
	s.RestartedAt = fromTS(p.GetRestartedAt())
	if r := p.GetRoute(); r != nil {
		s.Route = &api.Route{Hosts: r.Hosts, Paths: r.Paths}
	}
	return s
}

// FromInstance converts an instance to the wire.
func FromInstance(i *api.Instance) *Instance {
	return &Instance{
		Id: i.ID, Namespace: i.Namespace, Service: i.Service, Revision: i.Revision,
		Template: FromSpec(&i.Template), Node: i.Node, Desired: i.Desired,
		Draining: i.Draining, DrainSince: ts(i.DrainSince), CreatedAt: ts(i.CreatedAt), Ordinal: i.Ordinal,
	}
}

// ToInstance converts a wire instance.
func ToInstance(p *Instance) api.Instance {
	i := api.Instance{
		ID: p.Id, Namespace: p.Namespace, Service: p.Service, Revision: p.Revision,
		Node: p.Node, Desired: p.Desired, Draining: p.Draining,
		DrainSince: fromTS(p.DrainSince), CreatedAt: fromTS(p.CreatedAt), Ordinal: p.Ordinal,
	}
	if p.Template != nil {
		i.Template = ToSpec(p.Template)
	}
	return i
}

// FromStatus converts an instance status to the wire.
func FromStatus(s *api.InstanceStatus) *InstanceStatus {
	p := &InstanceStatus{
		Id: s.ID, Node: s.Node, Phase: s.Phase, ContainerId: s.ContainerID, Ip: s.IP,
		Ready: s.Ready, Restarts: s.Restarts, LastError: s.LastError,
		StartedAt: ts(s.StartedAt), UpdatedAt: ts(s.UpdatedAt),
	}
	if s.LastExit != nil {
		p.LastExit = &Exit{Code: s.LastExit.Code, At: ts(s.LastExit.At)}
	}
	return p
}

// ToStatus converts a wire instance status.
func ToStatus(p *InstanceStatus) api.InstanceStatus {
	s := api.InstanceStatus{
		ID: p.Id, Node: p.Node, Phase: p.Phase, ContainerID: p.ContainerId, IP: p.Ip,
		Ready: p.Ready, Restarts: p.Restarts, LastError: p.LastError,
		StartedAt: fromTS(p.StartedAt), UpdatedAt: fromTS(p.UpdatedAt),
	}
	if p.LastExit != nil {
		s.LastExit = &api.Exit{Code: p.LastExit.Code, At: fromTS(p.LastExit.At)}
	}
	return s
}

// FromNode converts a node to the wire.
func FromNode(n *api.Node) *Node {
	return &Node{
		Name: n.Name, Address: n.Address, PodCidr: n.PodCIDR, Labels: n.Labels,
		Capacity: &Capacity{MilliCpu: n.Capacity.MilliCPU, MemoryBytes: n.Capacity.MemoryBytes},
		Ready:    n.Ready, Heartbeat: ts(n.Heartbeat), JoinedAt: ts(n.JoinedAt),
		Cordoned: n.Cordoned, State: n.State, StateSince: ts(n.StateSince), DnsVersion: n.DNSVersion,
	}
}

// ToNode converts a wire node.
func ToNode(p *Node) api.Node {
	n := api.Node{
		Name: p.Name, Address: p.Address, PodCIDR: p.PodCidr, Labels: p.Labels,
		Ready: p.Ready, Heartbeat: fromTS(p.Heartbeat), JoinedAt: fromTS(p.JoinedAt),
		Cordoned: p.Cordoned, State: p.State, StateSince: fromTS(p.StateSince), DNSVersion: p.DnsVersion,
	}
	if c := p.Capacity; c != nil {
		n.Capacity = api.Capacity{MilliCPU: c.MilliCpu, MemoryBytes: c.MemoryBytes}
	}
	return n
}

// FromSnapshot converts a discovery snapshot to the wire.
func FromSnapshot(s *discovery.Snapshot) *DiscoverySnapshot {
	p := &DiscoverySnapshot{Version: s.Version}
	for _, svc := range s.Services {
		ps := &DiscoveryService{Namespace: svc.Namespace, Name: svc.Name}
		for _, port := range svc.Ports {
			ps.Ports = append(ps.Ports, &Port{Name: port.Name, Port: int32(port.Port), Protocol: port.Protocol})
		}
		if svc.Route != nil {
			ps.Route = &Route{Hosts: svc.Route.Hosts, Paths: svc.Route.Paths}
		}
		for _, rev := range svc.Revisions {
			pr := &DiscoveryRevision{Number: rev.Number, Weight: rev.Weight}
			for _, e := range rev.Endpoints {
				pr.Endpoints = append(pr.Endpoints, &Endpoint{Instance: e.Instance, Node: e.Node, Ip: e.IP, Ready: e.Ready, Draining: e.Draining, Panic: e.Panic})
			}
			ps.Revisions = append(ps.Revisions, pr)
		}
		p.Services = append(p.Services, ps)
	}
	return p
}

// ToSnapshot converts a wire discovery snapshot.
func ToSnapshot(p *DiscoverySnapshot) *discovery.Snapshot {
	s := &discovery.Snapshot{Version: p.Version, Services: make([]discovery.Service, 0, len(p.Services))}
	for _, ps := range p.Services {
		svc := discovery.Service{Namespace: ps.Namespace, Name: ps.Name}
		for _, port := range ps.Ports {
			svc.Ports = append(svc.Ports, discovery.Port{Name: port.Name, Port: uint32(port.Port), Protocol: port.Protocol})
		}
		if ps.Route != nil {
			svc.Route = &discovery.Route{Hosts: ps.Route.Hosts, Paths: ps.Route.Paths}
		}
		for _, pr := range ps.Revisions {
			rev := discovery.Revision{Number: pr.Number, Weight: pr.Weight}
			for _, e := range pr.Endpoints {
				rev.Endpoints = append(rev.Endpoints, discovery.Endpoint{Instance: e.Instance, Node: e.Node, IP: e.Ip, Ready: e.Ready, Draining: e.Draining, Panic: e.Panic})
			}
			svc.Revisions = append(svc.Revisions, rev)
		}
		s.Services = append(s.Services, svc)
	}
	return s
}

// FromVolume converts a volume to the wire.
func FromVolume(v *api.Volume) *Volume {
	return &Volume{
		Metadata: &ObjectMeta{Name: v.Metadata.Name, Namespace: v.Metadata.Namespace, Labels: v.Metadata.Labels},
		Size:     v.Spec.Size, PinnedNode: v.Spec.Node, Node: v.Status.Node,
		BoundAt: ts(v.Status.BoundAt), CreatedAt: ts(v.Status.CreatedAt), Deleting: v.Status.Deleting, Template: v.Status.Template,
	}
}

// ToVolume converts a wire volume (spec only: status is the control
// plane's).
func ToVolume(p *Volume) *api.Volume {
	v := &api.Volume{APIVersion: api.APIVersion, Kind: api.KindVolume, Spec: api.VolumeSpec{Size: p.Size, Node: p.PinnedNode}}
	if m := p.GetMetadata(); m != nil {
		v.Metadata = api.ObjectMeta{Name: m.Name, Namespace: m.Namespace, Labels: m.Labels}
	}
	return v
}

// FromRollout converts a rollout's state to the wire.
func FromRollout(r *api.Rollout) *Rollout {
	out := &Rollout{Namespace: r.Namespace, Service: r.Service, Revision: r.Revision, Stable: r.Stable, Phase: r.Phase,
		Step: int32(r.Step), Weight: r.Weight, StepStartedAt: ts(r.StepStartedAt), Message: r.Message, UpdatedAt: ts(r.UpdatedAt),
		Strategy: r.Strategy, Available: int32(r.Available)}
	if out.Strategy == "" {
		out.Strategy = api.StrategyCanary
	}
	return out
}

func intOrPercent(v *api.IntOrPercent) string {
	if v == nil {
		return ""
	}
	if v.Percent {
		return fmt.Sprintf("%d%%", v.Value)
	}
	return fmt.Sprint(v.Value)
}

// parseIntOrPercent reads "2" or "25%"; "" and bad values are nil (the
// API server validates before converting back).
func parseIntOrPercent(s string) *api.IntOrPercent {
	if s == "" {
		return nil
	}
	var v api.IntOrPercent
	if err := v.UnmarshalJSON([]byte(fmt.Sprintf("%q", s))); err != nil {
		return nil
	}
	return &v
}
