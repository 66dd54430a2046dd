package manifests

import (
	"encoding/base64"
	"fmt"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"unicode"

	"github.com/berth-dev/berth/api"
	"github.com/distribution/reference"
)

// Limits enforced by Validate.
const (
	MaxReplicas     = 10000
	maxLabelLen     = 63  // DNS label, RFC 1123
	maxPortNameLen  = 15  // IANA service name, RFC 6335
	maxDNSNameLen   = 253 // full host name
	maxLabelKeyLen  = 253
	maxLabelValLen  = 63
	maxProbePathLen = 1024
)

var (
	envKeyRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	labelKeyRE = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?$`)
	labelValRE = regexp.MustCompile(`^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$`)
)

// Validate checks a Service on its own (not against other objects) and
// returns nil or a FieldErrors listing every problem. It does not assume
// Defaults ran: an empty apiVersion, kind, namespace or port protocol is
// read as its default.
func Validate(s *api.Service) error {
	if errs := validateService(s); len(errs) > 0 {
		return errs
	}
	return nil
}

func validateService(s *api.Service) FieldErrors {
	var errs FieldErrors
	if s == nil {
		errs.add("", "service is nil")
		return errs
	}
	validateTypeMeta(&errs, s.APIVersion, s.Kind, api.KindService)
	validateMeta(&errs, "metadata", &s.Metadata)
	validateSpec(&errs, "spec", &s.Spec)
	sortFieldErrors(errs, reflect.TypeFor[api.Service]())
	return errs
}

func validateMeta(errs *FieldErrors, path string, m *api.ObjectMeta) {
	if m.Name == "" {
		errs.add(path+".name", "required")
	} else {
		checkDNSLabel(errs, path+".name", m.Name, maxLabelLen)
	}
	if m.Namespace != "" {
		checkDNSLabel(errs, path+".namespace", m.Namespace, maxLabelLen)
	}
	for _, k := range sortedKeys(m.Labels) {
		p := joinKey(path+".labels", k)
		switch {
		case len(k) > maxLabelKeyLen:
			errs.add(p, "label key must be at most %d characters", maxLabelKeyLen)
		case !labelKeyRE.MatchString(k):
			errs.add(p, "label key must be letters, digits, '-', '_', '.' and '/', starting and ending with a letter or digit")
		}
		v := m.Labels[k]
		switch {
		case len(v) > maxLabelValLen:
			errs.add(p, "label value must be at most %d characters", maxLabelValLen)
		case !labelValRE.MatchString(v):
			errs.add(p, "label value must be letters, digits, '-', '_' and '.', starting and ending with a letter or digit")
		}
	}
}

func validateSpec(errs *FieldErrors, path string, s *api.ServiceSpec) {
	switch {
	case s.Image == "":
		errs.add(path+".image", "required")
	case strings.IndexFunc(s.Image, unicode.IsSpace) >= 0:
		errs.add(path+".image", "must not contain whitespace")
	default:
		if _, err := reference.ParseNormalizedNamed(s.Image); err != nil {
			errs.add(path+".image", "%q is not an image reference like registry.example/team/app:v1 (%v)", s.Image, err)
		}
	}
	if len(s.Command) > 0 && s.Command[0] == "" {
		errs.add(path+".command[0]", "must not be empty")
	}
	for _, k := range sortedKeys(s.Env) {
		if !envKeyRE.MatchString(k) {
			errs.add(joinKey(path+".env", k), "environment variable name must match [A-Za-z_][A-Za-z0-9_]*")
		}
	}
	if s.Replicas != nil && (*s.Replicas < 0 || *s.Replicas > MaxReplicas) {
		errs.add(path+".replicas", "must be between 0 and %d", MaxReplicas)
	}
	routable := validatePorts(errs, path+".ports", s.Ports)
	if _, err := api.ParseCPU(s.Resources.CPU); err != nil {
		errs.add(path+".resources.cpu", "%s", err)
	}
	if p := s.Resources.Pids; p < 0 || p > 1<<22 {
		errs.add(path+".resources.pids", "must be between 1 and %d (0 or absent: the node's default)", 1<<22)
	}
	if _, err := api.ParseMemory(s.Resources.Memory); err != nil {
		errs.add(path+".resources.memory", "%s", err)
	}
	if s.Health != nil {
		validateHealth(errs, path+".health", s.Health)
	}
	if s.Liveness != nil {
		validateHealth(errs, path+".liveness", s.Liveness)
	}
	if s.Route != nil {
		validateRoute(errs, path+".route", s.Route, routable)
	}
	for _, k := range sortedKeys(s.NodeSelector) {
		if k == "" || len(k) > maxLabelKeyLen {
			errs.add(joinKey(path+".nodeSelector", k), "label key must be 1-%d characters", maxLabelKeyLen)
		}
	}
	validateVolumeMounts(errs, path, s)
	if s.SecurityContext != nil {
		validateSecurityContext(errs, path+".securityContext", s.SecurityContext)
	}
	if s.Rollout != nil {
		validateRollout(errs, path+".rollout", s.Rollout)
	}
}

// maxID is the largest user or group id a container may run as (2^32-1
// is the kernel's "no id").
const maxID = 1<<32 - 2

func validateSecurityContext(errs *FieldErrors, path string, sc *api.SecurityContext) {
	if u := sc.RunAsUser; u != nil && (*u < 0 || *u > maxID) {
		errs.add(path+".runAsUser", "must be between 0 and %d", maxID)
	}
	if g := sc.RunAsGroup; g != nil && (*g < 0 || *g > maxID) {
		errs.add(path+".runAsGroup", "must be between 0 and %d", maxID)
	}
	c := sc.Capabilities
	if c == nil {
		return
	}
	for _, list := range []struct {
		field string
		names []string
	}{{"add", c.Add}, {"drop", c.Drop}} {
		field := list.field
		for i, n := range list.names {
			canon, ok := api.NormalizeCapability(n)
			switch {
			case !ok:
				errs.add(fmt.Sprintf("%s.capabilities.%s[%d]", path, field, i), "unknown capability %q (names as in capabilities(7), like NET_BIND_SERVICE)", n)
			case canon == api.CapabilityAll && field == "add":
				errs.add(fmt.Sprintf("%s.capabilities.add[%d]", path, i), "ALL cannot be added: name the capabilities the container needs")
			}
		}
	}
}

func validateRollout(errs *FieldErrors, path string, r *api.RolloutSpec) {
	switch r.Strategy {
	case "", api.StrategyRolling:
		if len(r.Steps) > 0 {
			errs.add(path+".steps", "steps need strategy: canary")
		}
		if r.Sticky != nil || r.CanaryHeader != nil || r.CanaryReplicas != nil {
			errs.add(path+".strategy", "sticky, canaryHeader and canaryReplicas need strategy: canary")
		}
		if r.MaxSurge != nil && r.MaxUnavailable != nil && r.MaxSurge.Value == 0 && r.MaxUnavailable.Value == 0 {
			errs.add(path+".maxUnavailable", "maxSurge and maxUnavailable cannot both be 0")
		}
	case api.StrategyCanary:
		if len(r.Steps) == 0 {
			errs.add(path+".steps", "a canary needs at least one step")
		}
		if r.MaxSurge != nil || r.MaxUnavailable != nil || r.MinReady.Duration > 0 {
			errs.add(path+".strategy", "maxSurge, maxUnavailable and minReady need strategy: rolling")
		}
		if n := r.CanaryReplicas; n != nil && (*n < 1 || *n > MaxReplicas) {
			errs.add(path+".canaryReplicas", "must be between 1 and %d", MaxReplicas)
		}
		if st := r.Sticky; st != nil {
			switch {
			case (st.Header == "") == (st.Cookie == ""):
				errs.add(path+".sticky", "set exactly one of header and cookie")
			case st.Header != "" && !headerNameRE.MatchString(st.Header):
				errs.add(path+".sticky.header", "must be an HTTP header name")
			case st.Header != "" && strings.EqualFold(st.Header, api.CohortHeader):
				errs.add(path+".sticky.header", "%s is what the gateway derives from the hash; name the header that identifies a user", api.CohortHeader)
			case st.Cookie != "" && !headerNameRE.MatchString(st.Cookie):
				errs.add(path+".sticky.cookie", "must be a cookie name (an HTTP token)")
			}
		}
		if h := r.CanaryHeader; h != nil {
			if !headerNameRE.MatchString(h.Name) {
				errs.add(path+".canaryHeader.name", "must be an HTTP header name")
			}
			if h.Value == "" {
				errs.add(path+".canaryHeader.value", "required")
			}
		}
	default:
		errs.add(path+".strategy", "must be %q or %q", api.StrategyRolling, api.StrategyCanary)
	}
	prev := uint32(0)
	for i, st := range r.Steps {
		p := fmt.Sprintf("%s.steps[%d]", path, i)
		switch {
		case st.Weight < 1 || st.Weight > 100:
			errs.add(p+".weight", "must be between 1 and 100")
		case st.Weight < prev:
			errs.add(p+".weight", "must not be below the previous step's (%d)", prev)
		}
		prev = st.Weight
		if st.Pause != "" && st.Pause != api.PauseUntilPromoted {
			if d, ok := st.Pause.Duration(); !ok || d < 0 {
				errs.add(p+".pause", "must be a duration like \"1m\" or %q", api.PauseUntilPromoted)
			}
		}
	}
	if a := r.Analysis; a != nil {
		if a.MaxErrorRate < 0 || a.MaxErrorRate > 1 {
			errs.add(path+".analysis.maxErrorRate", "must be between 0 and 1")
		}
		if a.MinRequests < 0 {
			errs.add(path+".analysis.minRequests", "must not be negative")
		}
		if a.MaxLatency.Duration < 0 {
			errs.add(path+".analysis.maxLatency", "must not be negative")
		}
		if a.MaxErrorRateIncrease < 0 || a.MaxErrorRateIncrease > 1 {
			errs.add(path+".analysis.maxErrorRateIncrease", "must be between 0 and 1")
		}
	}
	if r.ProgressDeadline.Duration < 0 {
		errs.add(path+".progressDeadline", "must not be negative")
	}
}

// validateVolumeMounts checks spec.volumes and spec.volumeTemplates: names,
// absolute mount paths, no two mounts at one path, sizes. Whether a named
// volume exists is checked by the API server, which knows the stored ones.
func validateVolumeMounts(errs *FieldErrors, path string, s *api.ServiceSpec) {
	paths := map[string]string{}
	names := map[string]string{}
	checkPath := func(p, mountPath string) {
		switch {
		case mountPath == "":
			errs.add(p+".mountPath", "required")
		case !strings.HasPrefix(mountPath, "/"):
			errs.add(p+".mountPath", "must be an absolute path, got %q", mountPath)
		case filepath.Clean(mountPath) != mountPath:
			errs.add(p+".mountPath", "must be a clean path (%q)", filepath.Clean(mountPath))
		case mountPath == "/":
			errs.add(p+".mountPath", "must not be /")
		default:
			if other, dup := paths[mountPath]; dup {
				errs.add(p+".mountPath", "%s is already mounted by %s", mountPath, other)
			} else {
				paths[mountPath] = p
			}
		}
	}
	for i, m := range s.Volumes {
		p := fmt.Sprintf("%s.volumes[%d]", path, i)
		if checkDNSLabel(errs, p+".name", m.Name, maxLabelLen) {
			if other, dup := names[m.Name]; dup {
				errs.add(p+".name", "volume %q is already mounted by %s", m.Name, other)
			}
			names[m.Name] = p
		}
		checkPath(p, m.MountPath)
		if m.Size != "" {
			if !m.Tmpfs {
				errs.add(p+".size", "only tmpfs mounts take a size; a named volume's size is set on its Volume")
			} else if _, err := api.ParseMemory(m.Size); err != nil {
				errs.add(p+".size", "%s", err)
			}
		}
	}
	secrets := map[string]string{}
	for i, m := range s.Secrets {
		p := fmt.Sprintf("%s.secrets[%d]", path, i)
		if checkDNSLabel(errs, p+".name", m.Name, maxLabelLen) {
			if other, dup := secrets[m.Name]; dup {
				errs.add(p+".name", "secret %q is already given by %s", m.Name, other)
			}
			secrets[m.Name] = p
		}
		if m.MountPath == "" && len(m.Env) == 0 {
			errs.add(p, "needs a mountPath, env, or both")
		}
		if m.MountPath != "" {
			checkPath(p, m.MountPath)
		}
		for _, v := range sortedKeys(m.Env) {
			switch {
			case !envKeyRE.MatchString(v):
				errs.add(joinKey(p+".env", v), "environment variable name must match [A-Za-z_][A-Za-z0-9_]*")
			case s.Env[v] != "":
				errs.add(joinKey(p+".env", v), "%s is also set in %s.env", v, path)
			}
			if !ValidSecretKey(m.Env[v]) {
				errs.add(joinKey(p+".env", v), "secret key %q: %s", m.Env[v], secretKeyRule)
			}
		}
	}
	for i, t := range s.VolumeTemplates {
		p := fmt.Sprintf("%s.volumeTemplates[%d]", path, i)
		if checkDNSLabel(errs, p+".name", t.Name, maxLabelLen-6) {
			if other, dup := names[t.Name]; dup {
				errs.add(p+".name", "%q is already used by %s", t.Name, other)
			}
			names[t.Name] = p
		}
		checkPath(p, t.MountPath)
		if _, err := api.ParseMemory(t.Size); err != nil {
			errs.add(p+".size", "%s", err)
		}
	}
}

var headerNameRE = regexp.MustCompile(`^[A-Za-z0-9!#$%&'*+.^_|~-]+$`)

// ValidateVolume checks a Volume object.
func ValidateVolume(v *api.Volume) error {
	var errs FieldErrors
	validateTypeMeta(&errs, v.APIVersion, v.Kind, api.KindVolume)
	validateMeta(&errs, "metadata", &v.Metadata)
	if _, err := api.ParseMemory(v.Spec.Size); err != nil {
		errs.add("spec.size", "%s", err)
	}
	if n := v.Spec.Node; n != "" && len(n) > 63 {
		errs.add("spec.node", "must be a node name of at most 63 characters")
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

// Secret limits: etcd keeps each in one value, and every container start
// of a consumer carries it to a node.
const (
	MaxSecretBytes = 512 << 10
	maxSecretKeys  = 256
	secretKeyRule  = "must be letters, digits, '-', '_' and '.', at most 253 characters, not '.' or '..'"
)

var secretKeyRE = regexp.MustCompile(`^[-._A-Za-z0-9]+$`)

// ValidSecretKey reports whether k can name a Secret's key: it becomes a
// file name in the container, so nothing that can leave the directory.
func ValidSecretKey(k string) bool {
	return len(k) <= 253 && secretKeyRE.MatchString(k) && k != "." && k != ".."
}

// ValidateSecret checks a Secret object: its name, its keys, base64 in
// data, and its size.
func ValidateSecret(v *api.Secret) error {
	var errs FieldErrors
	validateTypeMeta(&errs, v.APIVersion, v.Kind, api.KindSecret)
	validateMeta(&errs, "metadata", &v.Metadata)
	size := 0
	for _, field := range []struct {
		name string
		m    map[string]string
	}{{"data", v.Data}, {"stringData", v.StringData}} {
		for _, k := range sortedKeys(field.m) {
			if !ValidSecretKey(k) {
				errs.add(joinKey(field.name, k), "key %s", secretKeyRule)
			}
			if field.name == "data" {
				if _, err := base64.StdEncoding.DecodeString(field.m[k]); err != nil {
					errs.add(joinKey(field.name, k), "must be base64 (use stringData for plain text)")
				}
			}
			size += len(k) + len(field.m[k])
		}
	}
	if len(v.Data)+len(v.StringData) == 0 {
		errs.add("data", "a secret needs at least one key in data or stringData")
	}
	if len(v.Data)+len(v.StringData) > maxSecretKeys {
		errs.add("data", "at most %d keys", maxSecretKeys)
	}
	if size > MaxSecretBytes {
		errs.add("data", "%d bytes, more than the %d a secret may hold", size, MaxSecretBytes)
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

// validateTypeMeta checks apiVersion and kind; empty ones take their
// defaults.
func validateTypeMeta(errs *FieldErrors, apiVersion, kind, wantKind string) {
	if apiVersion != "" && apiVersion != api.APIVersion {
		errs.add("apiVersion", "must be %q", api.APIVersion)
	}
	if kind != "" && kind != wantKind {
		errs.add("kind", "must be %q", wantKind)
	}
}

// validatePorts checks the ports and reports whether one of them can carry
// a route (http, http2 or grpc).
func validatePorts(errs *FieldErrors, path string, ports []api.Port) (routable bool) {
	names := map[string]int{}
	numbers := map[int32]int{}
	for i, p := range ports {
		pp := fmt.Sprintf("%s[%d]", path, i)
		switch {
		case p.Name == "":
			errs.add(pp+".name", "required")
		default:
			if checkDNSLabel(errs, pp+".name", p.Name, maxPortNameLen) {
				if j, dup := names[p.Name]; dup {
					errs.add(pp+".name", "duplicate port name %q (also %s[%d])", p.Name, path, j)
				} else {
					names[p.Name] = i
				}
			}
		}
		if checkPort(errs, pp+".port", p.Port) {
			if j, dup := numbers[p.Port]; dup {
				errs.add(pp+".port", "duplicate port %d (also %s[%d])", p.Port, path, j)
			} else {
				numbers[p.Port] = i
			}
		}
		switch p.Protocol {
		case "", api.ProtocolHTTP, api.ProtocolHTTP2, api.ProtocolGRPC:
			routable = true
		case api.ProtocolTCP:
		default:
			errs.add(pp+".protocol", "must be one of http, http2, grpc, tcp")
		}
	}
	return routable
}

func validateHealth(errs *FieldErrors, path string, h *api.Health) {
	switch {
	case h.HTTP != nil && h.TCP != nil:
		errs.add(path, "exactly one of http or tcp must be set, not both")
	case h.HTTP == nil && h.TCP == nil:
		errs.add(path, "exactly one of http or tcp must be set")
	case h.HTTP != nil:
		checkPort(errs, path+".http.port", h.HTTP.Port)
		switch {
		case !strings.HasPrefix(h.HTTP.Path, "/"):
			errs.add(path+".http.path", "must start with \"/\"")
		case len(h.HTTP.Path) > maxProbePathLen:
			errs.add(path+".http.path", "must be at most %d characters", maxProbePathLen)
		case strings.IndexFunc(h.HTTP.Path, unicode.IsSpace) >= 0:
			errs.add(path+".http.path", "must not contain whitespace")
		}
	case h.TCP != nil:
		checkPort(errs, path+".tcp.port", h.TCP.Port)
	}
	if h.Interval.Duration < 0 {
		errs.add(path+".interval", "must not be negative")
	}
	if h.Timeout.Duration < 0 {
		errs.add(path+".timeout", "must not be negative")
	}
	if h.Period.Duration != 0 && h.Period != h.Interval {
		errs.add(path+".period", "is interval's other name: set one of them (interval %s, period %s)", h.Interval.Duration, h.Period.Duration)
	}
	if h.InitialDelay.Duration < 0 {
		errs.add(path+".initialDelay", "must not be negative")
	}
	if h.FailureThreshold < 0 || h.FailureThreshold > 100 {
		errs.add(path+".failureThreshold", "must be between 1 and 100")
	}
	if h.Interval.Duration > 0 && h.Timeout.Duration > h.Interval.Duration {
		errs.add(path+".timeout", "must not be longer than the interval (%s)", h.Interval.Duration)
	}
}

func validateRoute(errs *FieldErrors, path string, r *api.Route, routable bool) {
	if len(r.Hosts) == 0 {
		errs.add(path+".hosts", "at least one host is required")
	}
	seen := map[string]bool{}
	for i, h := range r.Hosts {
		hp := fmt.Sprintf("%s.hosts[%d]", path, i)
		if msg := checkHost(h); msg != "" {
			errs.add(hp, "%s", msg)
		} else if seen[h] {
			errs.add(hp, "duplicate host %q", h)
		}
		seen[h] = true
	}
	seen = map[string]bool{}
	for i, p := range r.Paths {
		pp := fmt.Sprintf("%s.paths[%d]", path, i)
		switch {
		case !strings.HasPrefix(p, "/"):
			errs.add(pp, "must start with \"/\"")
		case strings.ContainsAny(p, "?#"):
			errs.add(pp, "must be a path prefix without query or fragment")
		case strings.IndexFunc(p, unicode.IsSpace) >= 0:
			errs.add(pp, "must not contain whitespace")
		case seen[p]:
			errs.add(pp, "duplicate path %q", p)
		}
		seen[p] = true
	}
	if !routable {
		errs.add(path, "needs a port with protocol http, http2 or grpc")
	}
}

// checkDNSLabel reports whether v is an RFC 1123 label of at most max
// characters that starts with a letter, adding an error if not.
func checkDNSLabel(errs *FieldErrors, path, v string, max int) bool {
	switch {
	case len(v) > max:
		errs.add(path, "must be at most %d characters", max)
	case !api.IsName(v):
		errs.add(path, "must be lowercase letters, digits and '-', starting with a letter and ending with a letter or digit")
	default:
		return true
	}
	return false
}

func checkPort(errs *FieldErrors, path string, p int32) bool {
	if p < 1 || p > 65535 {
		errs.add(path, "must be between 1 and 65535")
		return false
	}
	return true
}

// checkHost returns why h is not a valid route host, or "".
func checkHost(h string) string {
	name := strings.TrimPrefix(h, "*.")
	switch {
	case h == "":
		return "must not be empty"
	case len(h) > maxDNSNameLen:
		return fmt.Sprintf("must be at most %d characters", maxDNSNameLen)
	case strings.HasSuffix(name, "."):
		return "must not end with \".\""
	}
	for _, l := range strings.Split(name, ".") {
		if !api.IsDNSLabel(l) {
			return "must be a lowercase DNS name (labels of letters, digits and '-'), optionally starting with \"*.\""
		}
	}
	return ""
}

// ValidNamespace checks a namespace name given outside a manifest (a
// token's scope, a flag): the rule checkDNSLabel applies in manifests.
func ValidNamespace(ns string) error {
	var errs FieldErrors
	if !checkDNSLabel(&errs, "namespace", ns, maxLabelLen) {
		return errs
	}
	return nil
}
