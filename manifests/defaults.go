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
	if h := s.Spec.Health; h != nil {
		// An unset value never makes the pair invalid: a short interval
		// gets a timeout no longer than itself, a long timeout an interval
		// at least as long.
		if h.Interval.Duration == 0 {
			h.Interval.Duration = max(DefaultHealthInterval, h.Timeout.Duration)
		}
		if h.Timeout.Duration == 0 {
			h.Timeout.Duration = min(DefaultHealthTimeout, h.Interval.Duration)
		}
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
