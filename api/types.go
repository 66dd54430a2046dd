// Package api holds Berth's resource types: the internal, JSON-serialisable
// form of Services, Revisions, Instances and Nodes as they are stored in etcd
// and passed between packages. It owns no behaviour beyond small pure helpers
// (defaults, resource quantity parsing). The protobuf wire types live in
// api/pb and are converted at the API boundary; nothing here imports them.
package api

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// APIVersion is the only manifest apiVersion Berth accepts today.
const APIVersion = "berth.dev/v1"

// Kinds understood by Berth.
const (
	KindService = "Service"
	KindVolume  = "Volume"
	KindSecret  = "Secret"
)

// DefaultNamespace is used when a manifest names none.
const DefaultNamespace = "default"

// ClusterDomain is the DNS zone Berth is authoritative for.
const ClusterDomain = "berth.internal"

// ObjectMeta names an object. Name and Namespace are DNS labels.
type ObjectMeta struct {
	// Name is the object's name in its namespace: a DNS label (lowercase
	// letters, digits, '-'), the service's DNS name too.
	Name string `json:"name"`
	// Namespace groups objects and scopes API tokens (default "default").
	Namespace string `json:"namespace,omitempty"`
	// Labels are key=value pairs for selecting objects (berth get -l).
	Labels map[string]string `json:"labels,omitempty"`
}

// Service is the user's desired state for one service.
type Service struct {
	APIVersion string      `json:"apiVersion"`
	Kind       string      `json:"kind"`
	Metadata   ObjectMeta  `json:"metadata"`
	Spec       ServiceSpec `json:"spec"`
	// Set by the control plane, never by a manifest.
	Status ServiceStatus `json:"status,omitzero"`
}

// Key is "<namespace>/<name>".
func (s *Service) Key() string { return s.Metadata.Namespace + "/" + s.Metadata.Name }

// ServiceStatus is what the control plane records about a service.
type ServiceStatus struct {
	// Revision is the number of the revision the service currently runs.
	Revision int64 `json:"revision,omitempty"`
	// RollbackTo is set when the current revision is `rollout undo`'s copy
	// of that earlier, known-good revision: its rollout skips the canary
	// steps (a rolling update within the policy's surge limits), as Argo
	// Rollouts does within its rollback window.
	RollbackTo int64     `json:"rollbackTo,omitempty"`
	CreatedAt  time.Time `json:"createdAt,omitzero"`
	UpdatedAt  time.Time `json:"updatedAt,omitzero"`
}

// ServiceSpec is the desired state of a service. Everything except Replicas
// (and Route, which only steers traffic) is the template: a change to it
// makes a new Revision.
type ServiceSpec struct {
	// Image is the container image: a reference loaded with `berth image
	// load` (berth.local/...) or pulled from a registry.
	Image string `json:"image"`
	// Command replaces the image's entrypoint.
	Command []string `json:"command,omitempty"`
	// Args replace the image's default arguments (after Command).
	Args []string `json:"args,omitempty"`
	// Env sets environment variables in the container.
	Env map[string]string `json:"env,omitempty"`
	// Replicas is how many instances run (absent: 1; an apply without it
	// keeps a `berth scale`).
	Replicas *int32 `json:"replicas,omitempty"`
	// Ports are the ports the container listens on, by name: the DNS
	// SRV records, the gateway's route and probes (port: http) use them.
	Ports []Port `json:"ports,omitempty"`
	// Resources are what one replica reserves on its node, and its limits.
	Resources Resources `json:"resources,omitzero"`
	// Health is the readiness probe: a replica gets traffic while it
	// passes.
	Health *Health `json:"health,omitempty"`
	// Liveness restarts the container when it fails FailureThreshold
	// times in a row (default 3).
	Liveness *Health `json:"liveness,omitempty"`
	// Route exposes the service through the gateways.
	Route *Route `json:"route,omitempty"`
	// NodeSelector limits placement to nodes carrying all these labels.
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`
	// Volumes are mounted into every replica: named Volumes (shared by the
	// replicas, which therefore run on the volume's node) or scratch tmpfs.
	Volumes []VolumeMount `json:"volumes,omitempty"`
	// VolumeTemplates give each replica a volume of its own: replica i
	// mounts "<name>-<i>", the same one after every restart or rollout.
	VolumeTemplates []VolumeTemplate `json:"volumeTemplates,omitempty"`
	// Rollout says how a new revision replaces the old one. It steers
	// traffic and is not part of the template.
	Rollout *RolloutSpec `json:"rollout,omitempty"`
	// Secrets are Secrets of the service's namespace given to every
	// replica, as read-only files and/or environment variables. Their
	// values never appear here, only their names.
	Secrets []SecretMount `json:"secrets,omitempty"`
	// SecurityContext narrows the container's sandbox (another user, a
	// read-only root, fewer capabilities) or, for admins, adds
	// capabilities.
	SecurityContext *SecurityContext `json:"securityContext,omitempty"`
	// ImageDigest is set by the server at apply, never taken from a
	// client: the digest of the uploaded tarball Image named then (empty
	// for an image pulled from a registry). It is part of the template, so
	// a revision keeps its bytes when a tag is re-pointed later, and undo
	// brings the old bytes back.
	ImageDigest string `json:"imageDigest,omitempty"`
	// RestartedAt is set by `berth rollout restart` (server-set, kept by
	// later applies that leave it out): a new revision of the same
	// template, so every replica is replaced.
	RestartedAt time.Time `json:"restartedAt,omitzero"`
}

// SecurityContext is a container's user, root filesystem and capability
// set, on top of the sandbox every container gets (seccomp,
// no-new-privileges, Docker's capabilities minus NET_RAW and MKNOD).
type SecurityContext struct {
	// RunAsUser and RunAsGroup replace the image's user and group.
	RunAsUser  *int64 `json:"runAsUser,omitempty"`
	RunAsGroup *int64 `json:"runAsGroup,omitempty"`
	// ReadOnlyRootFilesystem mounts the image's filesystem read-only;
	// volumes and secrets stay as mounted.
	ReadOnlyRootFilesystem bool `json:"readOnlyRootFilesystem,omitempty"`
	// Capabilities changes the default set: Drop first (ALL drops every
	// one), then Add (admin only).
	Capabilities *Capabilities `json:"capabilities,omitempty"`
}

// Capabilities are names as in capabilities(7), with or without "CAP_".
type Capabilities struct {
	// Add grants Linux capabilities ("NET_ADMIN"; admins only).
	Add []string `json:"add,omitempty"`
	// Drop removes capabilities ("ALL" for every one).
	Drop []string `json:"drop,omitempty"`
}

// AddsCapabilities reports whether the spec asks for capabilities beyond
// the default set, which only admins may apply.
func (s *ServiceSpec) AddsCapabilities() bool {
	sc := s.SecurityContext
	return sc != nil && sc.Capabilities != nil && len(sc.Capabilities.Add) > 0
}

// SecretMount gives a container one Secret: each key as a file under
// MountPath (if set), and the keys Env names as environment variables
// (variable name -> key).
type SecretMount struct {
	// Name is the Secret (in the service's namespace).
	Name string `json:"name"`
	// MountPath, when set, shows each key as a file in this directory
	// (in memory, mode 0400).
	MountPath string `json:"mountPath,omitempty"`
	// Env sets environment variables from keys: VAR: key.
	Env map[string]string `json:"env,omitempty"`
}

// Secret is named sensitive data of a namespace: stored encrypted, sent
// only to the nodes that run a consumer, never printed. In a manifest,
// Data holds base64 values and StringData plain ones (a key in both takes
// StringData's, as in Kubernetes).
type Secret struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Metadata   ObjectMeta `json:"metadata"`
	// Data holds values in base64.
	Data map[string]string `json:"data,omitempty"`
	// StringData holds values as plain text.
	StringData map[string]string `json:"stringData,omitempty"`
}

// Key is "<namespace>/<name>".
func (s *Secret) Key() string { return s.Metadata.Namespace + "/" + s.Metadata.Name }

// Values decodes Data and merges StringData over it.
func (s *Secret) Values() (map[string][]byte, error) {
	out := make(map[string][]byte, len(s.Data)+len(s.StringData))
	for k, v := range s.Data {
		b, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("data.%s: not base64 (use stringData for plain text): %w", k, err)
		}
		out[k] = b
	}
	for k, v := range s.StringData {
		out[k] = []byte(v)
	}
	return out, nil
}

// Rollout strategies.
const (
	StrategyRolling = "rolling"
	StrategyCanary  = "canary"
)

// RolloutSpec configures how new revisions go out.
type RolloutSpec struct {
	// Strategy is "rolling" (default: the new revision's replicas start
	// beside the old ones, which drain once all new ones are ready) or
	// "canary" (traffic moves to the new revision by weight, in steps).
	Strategy string `json:"strategy,omitempty"`
	// Steps of a canary: the weight (percent of traffic) the new revision
	// gets, and how long to hold it. Pause "promote" waits for `berth
	// rollout promote`; no pause moves on once the weight is in effect.
	Steps []CanaryStep `json:"steps,omitempty"`
	// Analysis decides, at the end of each step, whether the canary is
	// healthy; a failure rolls back at once.
	Analysis *Analysis `json:"analysis,omitempty"`
	// Rolling parameters. MaxSurge: how many replicas above the desired
	// count may run during the update (a count or a percentage, default
	// all of them); MaxUnavailable: how many below it may be available
	// (default 0); MinReady: how long a new replica must have run and be
	// ready to count as available.
	MaxSurge *IntOrPercent `json:"maxSurge,omitempty"`
	// MaxUnavailable is how many replicas below the desired count may be
	// unavailable during a rolling update (a count or "25%"; default 0).
	MaxUnavailable *IntOrPercent `json:"maxUnavailable,omitempty"`
	// MinReady is how long a new replica must have run and been ready to
	// count as available.
	MinReady Duration `json:"minReady,omitzero"`
	// CanaryReplicas fixes the canary's size instead of scaling it with
	// the weight.
	CanaryReplicas *int32 `json:"canaryReplicas,omitempty"`
	// CanaryHeader: a request carrying this header with this value always
	// goes to the canary while one runs (through the gateways).
	CanaryHeader *HeaderMatch `json:"canaryHeader,omitempty"`
	// Sticky puts each user in a cohort by a hash of a header or cookie:
	// a user whose hash mod 100 is below the canary's weight goes to the
	// canary, so as the weight rises users move only from stable to
	// canary, never back (through the gateways; DNS has no user).
	Sticky *StickyCohort `json:"sticky,omitempty"`
	// ProgressDeadline is how long a rollout may go without progress (a
	// new replica becoming available, a canary step moving on) before it
	// fails and rolls back. Time spent in a pause or waiting for promote
	// does not count. Default 10m.
	ProgressDeadline Duration `json:"progressDeadline,omitzero"`
}

// StickyCohort names the request attribute hashed into a user's cohort:
// exactly one of Header and Cookie.
type StickyCohort struct {
	// Header names the request header a user's cohort is hashed from.
	Header string `json:"header,omitempty"`
	// Cookie names the cookie it is hashed from (one of the two).
	Cookie string `json:"cookie,omitempty"`
}

// CohortHeader is the request header carrying a request's cohort, a number
// whose value mod 100 is compared with the canary's weight. The gateway
// sets it from the sticky hash; it is also the WeightedCluster header_name
// in the route configuration, so a real Envoy behind a proxy that sets it
// picks the same revision.
const CohortHeader = "x-berth-cohort"

// DefaultProgressDeadline applies when spec.rollout.progressDeadline is 0.
const DefaultProgressDeadline = 10 * time.Minute

// HeaderMatch is an exact header match.
type HeaderMatch struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// IntOrPercent is a count ("2", 2) or a percentage of the replicas ("25%").
type IntOrPercent struct {
	Value   int
	Percent bool
}

// Resolve turns it into a count of n replicas, rounding percentages up or
// down.
func (v *IntOrPercent) Resolve(n int, roundUp bool) int {
	if v == nil {
		return 0
	}
	if !v.Percent {
		return v.Value
	}
	if roundUp {
		return (n*v.Value + 99) / 100
	}
	return n * v.Value / 100
}

func (v IntOrPercent) MarshalJSON() ([]byte, error) {
	if v.Percent {
		return json.Marshal(fmt.Sprintf("%d%%", v.Value))
	}
	return json.Marshal(v.Value)
}

func (v *IntOrPercent) UnmarshalJSON(b []byte) error {
	var n int
	if err := json.Unmarshal(b, &n); err == nil {
		if n < 0 {
			return fmt.Errorf("must not be negative")
		}
		*v = IntOrPercent{Value: n}
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("must be a count or a percentage like \"25%%\"")
	}
	pct := strings.HasSuffix(s, "%")
	num, err := strconv.Atoi(strings.TrimSuffix(s, "%"))
	if err != nil || num < 0 || (pct && num > 100) {
		return fmt.Errorf("invalid count or percentage %q", s)
	}
	*v = IntOrPercent{Value: num, Percent: pct}
	return nil
}

// CanaryStep is one step of a canary.
type CanaryStep struct {
	// Weight is the canary's share of traffic at this step, 0-100.
	Weight uint32 `json:"weight"`
	// Pause holds the step: a duration ("1m"), "promote" (until `berth
	// rollout promote`), or absent (on as soon as the weight is in effect).
	Pause Pause `json:"pause,omitempty"`
}

// Pause is how long a canary step holds its weight: a duration ("1m"), or
// PauseUntilPromoted to wait for `berth rollout promote`; "" moves on as
// soon as the weight is in effect. In a manifest it may also be written
// `pause: {duration: 1m}`, and a pause with no duration (`pause: {}` or an
// empty `pause:`) waits for promote.
type Pause string

// PauseUntilPromoted is the Pause that waits for promote.
const PauseUntilPromoted Pause = "promote"

// Duration returns a timed pause's length; ok is false for none, for
// "promote" and for an invalid duration.
func (p Pause) Duration() (d time.Duration, ok bool) {
	if p == "" || p == PauseUntilPromoted {
		return 0, false
	}
	d, err := time.ParseDuration(string(p))
	return d, err == nil
}

func (p *Pause) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*p = PauseUntilPromoted // a pause with no duration
		return nil
	}
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*p = Pause(s)
		return nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("must be a duration like \"1m\", %q, or {duration: 1m}", PauseUntilPromoted)
	}
	for k := range m {
		if k != "duration" {
			return fmt.Errorf("unknown field %q in pause (want duration)", k)
		}
	}
	raw, ok := m["duration"]
	if !ok || string(raw) == "null" {
		*p = PauseUntilPromoted
		return nil
	}
	if err := json.Unmarshal(raw, &s); err != nil || s == "" {
		return fmt.Errorf("pause duration must be a duration like \"1m\"")
	}
	*p = Pause(s)
	return nil
}

// Analysis compares the canary's error rate (5xx and upstream failures,
// from the gateways' load reports) with a threshold.
type Analysis struct {
	// MaxErrorRate is the highest acceptable share of failed requests
	// (0.05 = 5%).
	MaxErrorRate float64 `json:"maxErrorRate,omitempty"`
	// MinRequests below which a step is not judged: no traffic means wait,
	// not pass.
	MinRequests int64 `json:"minRequests,omitempty"`
	// MaxLatency fails the canary when its p99 latency (estimated from
	// the gateways' latency buckets in their load reports) is above it;
	// 0 leaves latency out of the analysis.
	MaxLatency Duration `json:"maxLatency,omitzero"`
	// MaxErrorRateIncrease fails the canary when its error rate exceeds
	// the stable revision's over the same window by more than this much
	// (0.02 = two points); 0 leaves the comparison out.
	MaxErrorRateIncrease float64 `json:"maxErrorRateIncrease,omitempty"`
}

// Rollout phases.
const (
	RolloutProgressing = "Progressing"
	RolloutPaused      = "Paused"
	RolloutSucceeded   = "Succeeded"
	RolloutRolledBack  = "RolledBack"
	RolloutAborted     = "Aborted"
)

// Rollout is the state of a service's canary, kept in etcd so a control
// plane restarted mid-rollout resumes at the same step.
type Rollout struct {
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	// Strategy is the spec's at the start: "canary" (also when empty, as
	// earlier versions wrote it) or "rolling".
	Strategy string `json:"strategy,omitempty"`
	// Revision is the canary; Stable the revision it replaces.
	Revision int64  `json:"revision"`
	Stable   int64  `json:"stable"`
	Phase    string `json:"phase"`
	// Step indexes spec.rollout.steps; Weight is the canary's share now.
	Step          int       `json:"step"`
	Weight        uint32    `json:"weight"`
	StepStartedAt time.Time `json:"stepStartedAt,omitzero"`
	// WeightRevision is the etcd revision of the write that set Weight:
	// every discovery snapshot from then on carries it, so the step waits
	// until every gateway has ACKed that version.
	WeightRevision int64 `json:"weightRevision,omitempty"`
	// ProgressAt is when the rollout last made progress (started, moved a
	// step, got a replica available, was resumed or promoted): the
	// progress deadline counts from it, or from the end of a timed pause.
	ProgressAt time.Time `json:"progressAt,omitzero"`
	// Available counts a rolling update's new replicas that are available.
	Available int `json:"available,omitempty"`
	// Promote asks to leave a "promote" pause (or, with Full, to finish).
	Promote     bool `json:"promote,omitempty"`
	PromoteFull bool `json:"promoteFull,omitempty"`
	// Abort asks to roll back at once (`berth rollout abort`), Pause to
	// hold the canary where it is, Resume to go on: the API records the
	// request, the controller acts on it.
	Abort     bool      `json:"abort,omitempty"`
	Pause     bool      `json:"pause,omitempty"`
	Resume    bool      `json:"resume,omitempty"`
	Message   string    `json:"message,omitempty"`
	UpdatedAt time.Time `json:"updatedAt,omitzero"`
}

// Active reports whether the rollout is in progress.
func (r *Rollout) Active() bool {
	return r != nil && (r.Phase == RolloutProgressing || r.Phase == RolloutPaused)
}

// Canary reports whether the rollout moves traffic by weight (a rolling
// update instead replaces replicas and leaves weights alone).
func (r *Rollout) Canary() bool { return r != nil && r.Strategy != StrategyRolling }

// DeadlineAt is when the rollout fails unless it progresses: the progress
// deadline after its last progress or after the end of the current step's
// timed pause, whichever is later. Zero for a rollout that is not
// progressing (paused or done).
func (r *Rollout) DeadlineAt(spec *RolloutSpec) time.Time {
	if r.Phase != RolloutProgressing || r.ProgressAt.IsZero() {
		return time.Time{}
	}
	since := r.ProgressAt
	if r.Canary() && spec != nil && r.Step < len(spec.Steps) && r.Weight == spec.Steps[r.Step].Weight && !r.StepStartedAt.IsZero() {
		if pause, ok := spec.Steps[r.Step].Pause.Duration(); ok {
			if end := r.StepStartedAt.Add(pause); end.After(since) {
				since = end
			}
		}
	}
	return since.Add(spec.Deadline())
}

// Deadline returns the spec's progress deadline or the default.
func (s *RolloutSpec) Deadline() time.Duration {
	if s == nil || s.ProgressDeadline.Duration <= 0 {
		return DefaultProgressDeadline
	}
	return s.ProgressDeadline.Duration
}

// VolumeMount mounts a volume into the container.
type VolumeMount struct {
	// Name is the Volume mounted (or the tmpfs's name).
	Name string `json:"name"`
	// MountPath is where it appears in the container.
	MountPath string `json:"mountPath"`
	// ReadOnly mounts it read-only.
	ReadOnly bool `json:"readOnly,omitempty"`
	// Tmpfs makes a scratch volume in memory, gone with the container; no
	// Volume object is needed. Size limits it ("64Mi").
	Tmpfs bool   `json:"tmpfs,omitempty"`
	Size  string `json:"size,omitempty"`
}

// VolumeTemplate is a per-replica volume.
type VolumeTemplate struct {
	// Name makes each replica's volume "<name>-<service>-<ordinal>".
	Name string `json:"name"`
	// MountPath is where it appears in the container.
	MountPath string `json:"mountPath"`
	// Size is the volume's intended size ("1Gi").
	Size string `json:"size,omitempty"`
}

// VolumeNames lists the named volumes an instance of this template with
// the given ordinal mounts (tmpfs mounts excluded), "<ns>/<name>" keys.
func (s *ServiceSpec) VolumeNames(namespace string, ordinal int32) []string {
	var out []string
	for _, m := range s.Volumes {
		if !m.Tmpfs {
			out = append(out, namespace+"/"+m.Name)
		}
	}
	for _, t := range s.VolumeTemplates {
		out = append(out, namespace+"/"+TemplateVolumeName(t.Name, ordinal))
	}
	return out
}

// TemplateVolumeName is the volume replica ordinal gets from template name.
func TemplateVolumeName(name string, ordinal int32) string {
	return fmt.Sprintf("%s-%d", name, ordinal)
}

// Volume is named storage managed by Berth: a directory on the node where
// its first consumer runs, kept through restarts, rollouts and deletes of
// the services that use it, and removed only by `berth volume rm`.
type Volume struct {
	APIVersion string       `json:"apiVersion"`
	Kind       string       `json:"kind"`
	Metadata   ObjectMeta   `json:"metadata"`
	Spec       VolumeSpec   `json:"spec,omitzero"`
	Status     VolumeStatus `json:"status,omitzero"`
}

// Key is "<namespace>/<name>".
func (v *Volume) Key() string { return v.Metadata.Namespace + "/" + v.Metadata.Name }

// VolumeSpec is what the user asks of a volume.
type VolumeSpec struct {
	// Size is the intended size limit ("1Gi"); the local driver records it
	// but does not enforce it on a plain directory.
	Size string `json:"size,omitempty"`
	// Node pins the volume to a node; empty means wherever its first
	// consumer is placed.
	Node string `json:"node,omitempty"`
}

// VolumeStatus is what the control plane records about a volume.
type VolumeStatus struct {
	// Node holds the data once a consumer was placed; consumers then run
	// only there.
	Node      string    `json:"node,omitempty"`
	BoundAt   time.Time `json:"boundAt,omitzero"`
	CreatedAt time.Time `json:"createdAt,omitzero"`
	// Deleting: `berth volume rm` asked for removal; the node deletes the
	// data, then the object goes.
	Deleting bool `json:"deleting,omitempty"`
	// Template names the service volume template that made it, if any.
	Template string `json:"template,omitempty"`
}

// ReplicaCount returns the desired replicas, defaulting to 1.
func (s *ServiceSpec) ReplicaCount() int32 {
	if s.Replicas == nil {
		return 1
	}
	return *s.Replicas
}

// Template returns the part of the spec that defines a revision: everything
// but replicas and route.
func (s ServiceSpec) Template() ServiceSpec {
	t := s
	t.Replicas = nil
	t.Route = nil
	t.Rollout = nil
	return t
}

// Protocols a port may speak.
const (
	ProtocolHTTP  = "http"
	ProtocolHTTP2 = "http2"
	ProtocolGRPC  = "grpc"
	ProtocolTCP   = "tcp"
)

// Port is a named port the container listens on.
type Port struct {
	// Name is the port's name (a DNS label): SRV records _name._tcp.
	Name string `json:"name"`
	// Port is the container's port number.
	Port int32 `json:"port"`
	// Protocol is http (default), http2, grpc or tcp.
	Protocol string `json:"protocol,omitempty"`
}

// Resources are requests, as the user wrote them: cpu "250m" or "0.5",
// memory "128Mi" or "1G". Use MilliCPU and MemoryBytes to read them.
type Resources struct {
	// CPU is cores ("0.5") or millicores ("250m").
	CPU string `json:"cpu,omitempty"`
	// Memory is bytes with a unit ("128Mi", "1G").
	Memory string `json:"memory,omitempty"`
	// Pids caps the container's processes and threads (pids.max); 0 takes
	// the node's default. CPU and Memory are also the container's limits;
	// absent, the node's defaults apply: no container runs unlimited.
	Pids int64 `json:"pids,omitempty"`
}

// Health is a readiness probe. Exactly one of HTTP or TCP is set.
type Health struct {
	// HTTP probes with a GET: 2xx and 3xx pass.
	HTTP *HTTPProbe `json:"http,omitempty"`
	// TCP probes by connecting.
	TCP *TCPProbe `json:"tcp,omitempty"`
	// Interval is the time between probes (period is accepted for it,
	// as Kubernetes names it).
	Interval Duration `json:"interval,omitzero"`
	Period   Duration `json:"period,omitzero"`
	Timeout  Duration `json:"timeout,omitzero"`
	// InitialDelay is the time after a start before the first probe.
	InitialDelay Duration `json:"initialDelay,omitzero"`
	// FailureThreshold is how many failures in a row count: for
	// readiness (default 1) the replica then leaves the endpoints, for
	// liveness (default 3) the container is restarted.
	FailureThreshold int32 `json:"failureThreshold,omitempty"`
}

// HTTPProbe is ready when GET path on port answers 2xx or 3xx.
type HTTPProbe struct {
	// Path is the URL path asked for ("/healthz").
	Path string `json:"path"`
	// Port is a number or the name of one of spec.ports.
	Port int32 `json:"port"`
}

// TCPProbe is ready when port accepts a connection.
type TCPProbe struct {
	// Port is a number or the name of one of spec.ports.
	Port int32 `json:"port"`
}

// Route exposes a service through the gateways.
type Route struct {
	// Hosts are the Host headers routed here ("hello.example.test",
	// "*.example.test"); a host and path belong to one service (the
	// first to claim them).
	Hosts []string `json:"hosts,omitempty"`
	// Paths are path prefixes (default "/").
	Paths []string `json:"paths,omitempty"`
}

// Duration is a time.Duration that reads and writes Go duration strings
// ("5s", "1m30s") in JSON and YAML.
type Duration struct{ time.Duration }

func (d Duration) MarshalJSON() ([]byte, error) {
	if d.Duration == 0 {
		return []byte(`""`), nil
	}
	return json.Marshal(d.Duration.String())
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"5s\"")
	}
	if s == "" {
		d.Duration = 0
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("invalid duration %q", s)
	}
	if v < 0 {
		return fmt.Errorf("duration %q must not be negative", s)
	}
	d.Duration = v
	return nil
}

// Revision is an immutable snapshot of a service's template.
type Revision struct {
	Namespace string      `json:"namespace"`
	Service   string      `json:"service"`
	Number    int64       `json:"number"`
	Template  ServiceSpec `json:"template"`
	Hash      string      `json:"hash"`
	CreatedAt time.Time   `json:"createdAt"`
	// Change says what differs from the revision before ("image a -> b"),
	// or that it rolled back to an earlier one.
	Change string `json:"change,omitempty"`
	// RolledBack says why a rollout of this revision was rolled back or
	// aborted (the template stays as it was); `rollout undo` without
	// --to-revision skips such revisions.
	RolledBack string `json:"rolledBack,omitempty"`
}

// Instance desired states.
const (
	// DesiredRunning: the agent keeps a container running.
	DesiredRunning = "running"
	// DesiredStopped: the endpoint has been drained; the agent stops the
	// container and reports phase Stopped, after which the control plane
	// deletes the instance.
	DesiredStopped = "stopped"
)

// Instance is one desired container: a replica of a service revision.
type Instance struct {
	ID        string      `json:"id"`
	Namespace string      `json:"namespace"`
	Service   string      `json:"service"`
	Revision  int64       `json:"revision"`
	Template  ServiceSpec `json:"template"`
	// Ordinal is the replica's stable index in its service (0, 1, ...):
	// a replacement takes over the ordinal, and with it the per-replica
	// volumes.
	Ordinal int32 `json:"ordinal"`
	// Node is empty until the scheduler places the instance.
	Node string `json:"node,omitempty"`
	// Desired is DesiredRunning or DesiredStopped.
	Desired string `json:"desired"`
	// Draining is set when the instance must leave discovery; DrainSince
	// says when, so the stop can wait for gateways and DNS caches.
	Draining   bool      `json:"draining,omitempty"`
	DrainSince time.Time `json:"drainSince,omitzero"`
	CreatedAt  time.Time `json:"createdAt"`
}

// Instance phases reported by agents.
const (
	PhasePending  = "Pending"  // placed, not yet acted on
	PhasePulling  = "Pulling"  // getting the image
	PhaseStarting = "Starting" // container created, not yet ready
	PhaseRunning  = "Running"  // task running
	PhaseBackoff  = "Backoff"  // exited or failed, waiting to retry
	PhaseStopped  = "Stopped"  // stopped on request; container removed
)

// InstanceStatus is what an agent observed of an instance.
type InstanceStatus struct {
	ID          string    `json:"id"`
	Node        string    `json:"node"`
	Phase       string    `json:"phase"`
	ContainerID string    `json:"containerID,omitempty"`
	IP          string    `json:"ip,omitempty"`
	Ready       bool      `json:"ready"`
	Restarts    int32     `json:"restarts"`
	LastExit    *Exit     `json:"lastExit,omitempty"`
	LastError   string    `json:"lastError,omitempty"`
	StartedAt   time.Time `json:"startedAt,omitzero"`
	UpdatedAt   time.Time `json:"updatedAt"`
}

// Exit records how a container ended.
type Exit struct {
	Code int32     `json:"code"`
	At   time.Time `json:"at"`
}

// Node states, written by the node controller on transitions.
const (
	NodeReady    = "Ready"    // heartbeat lease alive
	NodeNotReady = "NotReady" // lease lapsed: endpoints out of discovery
	NodeLost     = "Lost"     // lapsed past the grace period: instances replaced
)

// Node is a machine running an agent.
type Node struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	// ShellAddr is where its agent serves NodeShell (logs, exec,
	// port-forward) to control plane replicas.
	ShellAddr string            `json:"shellAddr,omitempty"`
	PodCIDR   string            `json:"podCIDR"`
	Labels    map[string]string `json:"labels,omitempty"`
	Capacity  Capacity          `json:"capacity"`
	// Ready is whether the heartbeat lease is alive (filled from the cache).
	Ready bool `json:"ready"`
	// State and StateSince are written by the node controller.
	State      string    `json:"state,omitempty"`
	StateSince time.Time `json:"stateSince,omitzero"`
	// Heartbeat is the time of the last heartbeat seen.
	Heartbeat time.Time `json:"heartbeat"`
	JoinedAt  time.Time `json:"joinedAt"`
	// Cordoned nodes get no new instances.
	Cordoned bool `json:"cordoned,omitempty"`
	// Drain asks the controllers to drain the node's instances (`berth
	// node drain`; the node is cordoned too). Uncordoning clears it.
	Drain bool `json:"drain,omitempty"`
	// Removed is an admin's intent (`berth node remove`): the node's
	// certificates are revoked; the node controller replaces its instances
	// at once and deletes the node when none is left.
	Removed bool `json:"removed,omitempty"`
	// DNSVersion is the discovery snapshot version the node's DNS answers
	// from, as of its last heartbeat (filled from the cache; 0: none).
	DNSVersion uint64 `json:"-"`
}

// GatewayStatus is one xDS client (a gateway, an Envoy or a proxyless gRPC
// client) as the control plane replica it is connected to sees it. Each
// replica keeps the list of its own clients in etcd, so the leader waits
// for every gateway of the cluster, not only those of its own replica.
type GatewayStatus struct {
	NodeID  string `json:"nodeID"`
	Replica string `json:"replica"`
	Address string `json:"address,omitempty"`
	// Version is the discovery snapshot version it runs for every type it
	// subscribed to (0: none yet).
	Version   uint64    `json:"version"`
	State     string    `json:"state"` // SYNCED, STALE or NACKED
	Delta     bool      `json:"delta,omitempty"`
	Proxyless bool      `json:"proxyless,omitempty"`
	LastNack  string    `json:"lastNack,omitempty"`
	Connected time.Time `json:"connected,omitzero"`
	// Lag is how long ago the oldest version it does not run was published
	// (0 when synced): live in the replica that serves it, never stored
	// (it changes with the clock).
	Lag time.Duration `json:"-"`
}

// Gateway states.
const (
	GatewaySynced = "SYNCED"
	// GatewaySyncing is behind for less than the xDS server's deadline.
	GatewaySyncing = "SYNCING"
	// GatewayStale has been behind past the deadline: shown, and no
	// longer waited for by drains and canary steps.
	GatewayStale  = "STALE"
	GatewayNacked = "NACKED"
)

// Capacity is what a node offers (or what instances request), in
// milli-CPUs and bytes.
type Capacity struct {
	MilliCPU    int64 `json:"milliCPU"`
	MemoryBytes int64 `json:"memoryBytes"`
}

// ServiceKey is "<namespace>/<service>".
func (i *Instance) ServiceKey() string { return i.Namespace + "/" + i.Service }

// Live reports whether the instance is still wanted: not draining and not
// told to stop.
func (i *Instance) Live() bool { return !i.Draining && i.Desired == DesiredRunning }

// ReadyWith reports whether the instance serves, given its status (the
// zero value when it has none): the status says ready and comes from the
// node the instance is placed on (a report from a node it left says
// nothing). Whether it is still wanted is Live's question. This is the
// one definition of ready: controllers, discovery and the API use it.
func (i *Instance) ReadyWith(st InstanceStatus) bool {
	return st.Ready && i.Node != "" && st.Node == i.Node
}

// AvailableWith reports whether the instance is ready and has run for
// minReady since its container started (rolling updates count these).
func (i *Instance) AvailableWith(st InstanceStatus, minReady time.Duration, now time.Time) bool {
	return i.ReadyWith(st) && (minReady <= 0 || (!st.StartedAt.IsZero() && now.Sub(st.StartedAt) >= minReady))
}
