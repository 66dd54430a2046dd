package manifests

import (
	"time"

	"github.com/berth-dev/berth/api"
)

// Default probe timing, used when a health check leaves it unset.
const (
	DefaultHealthInterval = 10 * time.Second
	DefaultHealthTimeout  = time.Second
)

// Defaults fills in what a manifest may leave out: apiVersion and kind, the
// namespace, port protocols, route paths and health timing. It leaves
// spec.replicas unset (nil means 1, see api.ServiceSpec.ReplicaCount) so
// that applying a manifest without replicas need not undo a scale.
// Defaults is idempotent.
func Defaults(s *api.Service) {
	if s == nil {
		return
	}
	defaultTypeMeta(&s.APIVersion, &s.Kind, api.KindService, &s.Metadata)
	for i := range s.Spec.Ports {
		if s.Spec.Ports[i].Protocol == "" {
			s.Spec.Ports[i].Protocol = api.ProtocolHTTP
		}
	}
	if r := s.Spec.Route; r != nil && len(r.Paths) == 0 {
		r.Paths = []string{"/"}
	}
	// Readiness keeps FailureThreshold 0 (one failure counts), so specs
	// stored before it existed hash the same.
	defaultProbe(s.Spec.Health, 0)
	defaultProbe(s.Spec.Liveness, DefaultLivenessFailures)
}

// DefaultLivenessFailures is how many failed liveness probes in a row
// restart a container unless the spec says.
const DefaultLivenessFailures = 3

func defaultProbe(h *api.Health, failures int32) {
	if h == nil {
		return
	}
	// period is interval's other name (both, differing: Validate says so).
	if h.Interval.Duration == 0 && h.Period.Duration > 0 {
		h.Interval = h.Period
	}
	if h.Period == h.Interval {
		h.Period = api.Duration{}
	}
	// An unset value never makes the pair invalid: a short interval gets
	// a timeout no longer than itself, a long timeout an interval at
	// least as long.
	if h.Interval.Duration == 0 {
		h.Interval.Duration = max(DefaultHealthInterval, h.Timeout.Duration)
	}
	if h.Timeout.Duration == 0 {
		h.Timeout.Duration = min(DefaultHealthTimeout, h.Interval.Duration)
	}
	if h.FailureThreshold == 0 && failures > 0 {
		h.FailureThreshold = failures
	}
}

// DefaultsVolume fills in what a Volume manifest may leave out.
func DefaultsVolume(v *api.Volume) {
	if v == nil {
		return
	}
	defaultTypeMeta(&v.APIVersion, &v.Kind, api.KindVolume, &v.Metadata)
}

// DefaultsSecret fills in what a Secret manifest may leave out.
func DefaultsSecret(v *api.Secret) {
	defaultTypeMeta(&v.APIVersion, &v.Kind, api.KindSecret, &v.Metadata)
}

// defaultTypeMeta fills in an object's apiVersion, kind and namespace.
func defaultTypeMeta(apiVersion, kind *string, wantKind string, meta *api.ObjectMeta) {
	if *apiVersion == "" {
		*apiVersion = api.APIVersion
	}
	if *kind == "" {
		*kind = wantKind
	}
	if meta.Namespace == "" {
		meta.Namespace = api.DefaultNamespace
	}
}
