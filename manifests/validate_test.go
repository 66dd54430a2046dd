package manifests

import (
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api"
)

func validService() api.Service {
	return api.Service{
		Metadata: api.ObjectMeta{Name: "hello"},
		Spec: api.ServiceSpec{
			Image:  "berth.local/hello:v1",
			Ports:  []api.Port{{Name: "http", Port: 8080}},
			Health: &api.Health{HTTP: &api.HTTPProbe{Path: "/healthz", Port: 8080}},
			Route:  &api.Route{Hosts: []string{"hello.example.test"}},
		},
	}
}

func ptr[T any](v T) *T { return &v }

func TestValidate(t *testing.T) {
	long := strings.Repeat("a", 64)
	tests := []struct {
		name   string
		modify func(s *api.Service)
		want   string // "" means valid
	}{
		{"valid", func(s *api.Service) {}, ""},
		{"zero replicas", func(s *api.Service) { s.Spec.Replicas = ptr[int32](0) }, ""},
		{"wildcard host", func(s *api.Service) { s.Spec.Route.Hosts = []string{"*.example.test"} }, ""},
		{"negative replicas", func(s *api.Service) { s.Spec.Replicas = ptr[int32](-1) }, "spec.replicas: must be between 0 and 10000"},
		{"too many replicas", func(s *api.Service) { s.Spec.Replicas = ptr[int32](10001) }, "spec.replicas: must be between 0 and 10000"},
		{"no name", func(s *api.Service) { s.Metadata.Name = "" }, "metadata.name: required"},
		{"upper name", func(s *api.Service) { s.Metadata.Name = "Hello" }, "metadata.name: must be lowercase letters, digits and '-', starting with a letter and ending with a letter or digit"},
		{"long name", func(s *api.Service) { s.Metadata.Name = long }, "metadata.name: must be at most 63 characters"},
		{"63 chars", func(s *api.Service) { s.Metadata.Name = long[:63] }, ""},
		{"digit first", func(s *api.Service) { s.Metadata.Name = "1abc" }, "metadata.name: must be lowercase"},
		{"bad namespace", func(s *api.Service) { s.Metadata.Namespace = "a_b" }, "metadata.namespace: must be lowercase"},
		{"wrong apiVersion", func(s *api.Service) { s.APIVersion = "v1" }, `apiVersion: must be "berth.dev/v1"`},
		{"wrong kind", func(s *api.Service) { s.Kind = "Volume" }, `kind: must be "Service"`},
		{"no image", func(s *api.Service) { s.Spec.Image = "" }, "spec.image: required"},
		{"image space", func(s *api.Service) { s.Spec.Image = "a b" }, "spec.image: must not contain whitespace"},
		{"port 0", func(s *api.Service) { s.Spec.Ports[0].Port = 0 }, "spec.ports[0].port: must be between 1 and 65535"},
		{"port 70000", func(s *api.Service) { s.Spec.Ports[0].Port = 70000 }, "spec.ports[0].port: must be between 1 and 65535"},
		{"port name long", func(s *api.Service) { s.Spec.Ports[0].Name = "abcdefghijklmnop" }, "spec.ports[0].name: must be at most 15 characters"},
		{"dup port number", func(s *api.Service) {
			s.Spec.Ports = append(s.Spec.Ports, api.Port{Name: "b", Port: 8080})
		}, "spec.ports[1].port: duplicate port 8080 (also spec.ports[0])"},
		{"bad protocol", func(s *api.Service) { s.Spec.Ports[0].Protocol = "udp" }, "spec.ports[0].protocol: must be one of http, http2, grpc, tcp"},
		{"bad env", func(s *api.Service) { s.Spec.Env = map[string]string{"A-B": "x"} }, "spec.env.A-B: environment variable name must match"},
		{"bad cpu", func(s *api.Service) { s.Spec.Resources.CPU = "-1" }, `spec.resources.cpu: invalid cpu "-1"`},
		{"bad memory", func(s *api.Service) { s.Spec.Resources.Memory = "1Qi" }, `spec.resources.memory: invalid memory "1Qi"`},
		{"no probe", func(s *api.Service) { s.Spec.Health = &api.Health{} }, "spec.health: exactly one of http or tcp must be set"},
		{"probe port", func(s *api.Service) { s.Spec.Health = &api.Health{TCP: &api.TCPProbe{}} }, "spec.health.tcp.port: must be between 1 and 65535"},
		{"timeout > interval", func(s *api.Service) {
			s.Spec.Health.Interval.Duration, s.Spec.Health.Timeout.Duration = time.Second, 2*time.Second
		}, "spec.health.timeout: must not be longer than the interval (1s)"},
		{"negative interval", func(s *api.Service) { s.Spec.Health.Interval.Duration = -time.Second }, "spec.health.interval: must not be negative"},
		{"no hosts", func(s *api.Service) { s.Spec.Route.Hosts = nil }, "spec.route.hosts: at least one host is required"},
		{"bad host", func(s *api.Service) { s.Spec.Route.Hosts = []string{"a_b.test"} }, "spec.route.hosts[0]: must be a lowercase DNS name"},
		{"bad path", func(s *api.Service) { s.Spec.Route.Paths = []string{"api"} }, `spec.route.paths[0]: must start with "/"`},
		{"tcp only route", func(s *api.Service) { s.Spec.Ports[0].Protocol = "tcp" }, "spec.route: needs a port with protocol http, http2 or grpc"},
		{"bad label", func(s *api.Service) { s.Metadata.Labels = map[string]string{"a b": "c"} }, `metadata.labels["a b"]: label key must be`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validService()
			tt.modify(&s)
			for _, withDefaults := range []bool{false, true} {
				if withDefaults {
					Defaults(&s)
				}
				err := Validate(&s)
				switch {
				case tt.want == "" && err != nil:
					t.Errorf("Validate (defaults %v) = %v, want nil", withDefaults, err)
				case tt.want != "" && err == nil:
					t.Errorf("Validate (defaults %v) = nil, want %q", withDefaults, tt.want)
				case tt.want != "" && !strings.Contains(err.Error(), tt.want):
					t.Errorf("Validate (defaults %v) = %v, want %q", withDefaults, err, tt.want)
				}
				if err != nil {
					if _, ok := err.(FieldErrors); !ok {
						t.Errorf("Validate returned %T, want FieldErrors", err)
					}
				}
			}
		})
	}
}

func TestValidateNil(t *testing.T) {
	if Validate(nil) == nil {
		t.Error("Validate(nil) = nil")
	}
}

func TestDefaults(t *testing.T) {
	s := api.Service{
		Spec: api.ServiceSpec{
			Ports:  []api.Port{{Name: "a", Port: 1}, {Name: "b", Port: 2, Protocol: "tcp"}},
			Route:  &api.Route{Hosts: []string{"h"}},
			Health: &api.Health{TCP: &api.TCPProbe{Port: 1}},
		},
	}
	Defaults(&s)
	if s.APIVersion != api.APIVersion || s.Kind != api.KindService || s.Metadata.Namespace != "default" ||
		s.Spec.Ports[0].Protocol != "http" || s.Spec.Ports[1].Protocol != "tcp" ||
		len(s.Spec.Route.Paths) != 1 || s.Spec.Route.Paths[0] != "/" ||
		s.Spec.Health.Interval.Duration != 10*time.Second || s.Spec.Health.Timeout.Duration != time.Second ||
		s.Spec.Replicas != nil {
		t.Errorf("Defaults = %+v", s)
	}

	// An unset half of the probe timing never makes the pair invalid.
	for _, h := range []api.Health{
		{TCP: &api.TCPProbe{Port: 1}, Interval: api.Duration{Duration: 500 * time.Millisecond}},
		{TCP: &api.TCPProbe{Port: 1}, Timeout: api.Duration{Duration: 30 * time.Second}},
	} {
		s := validService()
		s.Spec.Health = &h
		Defaults(&s)
		if err := Validate(&s); err != nil {
			t.Errorf("health %+v after Defaults: %v", h, err)
		}
	}
}

func TestSplitPath(t *testing.T) {
	tests := map[string][]string{
		"":                       nil,
		"spec":                   {"spec"},
		"spec.ports[10].name":    {"spec", "ports", "[10]", "name"},
		`spec.env["a.b]"].x`:     {"spec", "env", "a.b]", "x"},
		`metadata.labels["a b"]`: {"metadata", "labels", "a b"},
		"spec.route.hosts[0]":    {"spec", "route", "hosts", "[0]"},
		"spec.env.KEY":           {"spec", "env", "KEY"},
	}
	for in, want := range tests {
		got := splitPath(in)
		if strings.Join(got, "|") != strings.Join(want, "|") || len(got) != len(want) {
			t.Errorf("splitPath(%q) = %q, want %q", in, got, want)
		}
	}
}
