package gateway

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// BenchmarkRouteStatsObserve is the metrics' share of a proxied request:
// one status counted and one latency observed, on the series a table
// build resolved. It must not allocate.
func BenchmarkRouteStatsObserve(b *testing.B) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	s := m.stats("default_web", "default_web_r1")
	codes := []int{200, 200, 200, 404, 200, 503, 200, 301}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		s.observe(codes[i&7], 750*time.Microsecond)
	}
}

// BenchmarkRouteStatsObserveParallel is the same from every core at once.
func BenchmarkRouteStatsObserveParallel(b *testing.B) {
	m, err := newMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	s := m.stats("default_web", "default_web_r1")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			s.observe([]int{200, 200, 404, 503}[i&3], 750*time.Microsecond)
			i++
		}
	})
}

// Each status is counted under its own code (not its class), a number
// that is not a status under "other", and more codes than the slots hold
// still count.
func TestRouteStatsCountRealCodes(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	s := m.stats("default_web", "default_web_r1")
	for _, code := range []int{200, 200, 404, 503, 42, 700} {
		s.observe(code, time.Millisecond)
	}
	for code := 500; code < 500+2*codeSlots; code++ {
		s.observe(code, time.Millisecond)
	}
	for code, want := range map[string]float64{"200": 2, "404": 1, "503": 2, "other": 2, "523": 1} {
		got := codeCount(t, reg, code)
		if got != want {
			t.Errorf("code %s counted %v, want %v", code, got, want)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { s.observe(404, time.Millisecond) }); allocs != 0 {
		t.Errorf("observing a code seen before allocates %v times", allocs)
	}
	// A route gone from the table takes every code's series with it.
	// A request of the old table that finishes afterwards, with a code
	// the pair had not seen (a 504 of a service being deleted), brings
	// none back, whether its code has a free slot or not.
	fresh := m.stats("default_api", "default_api_r1")
	fresh.observe(200, time.Millisecond)
	m.forget(s)
	m.forget(fresh)
	s.observe(599, time.Millisecond)
	s.observe(404, time.Millisecond)
	fresh.observe(504, time.Millisecond)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if name := f.GetName(); name != "berth_gateway_requests_total" && name != "berth_gateway_request_duration_seconds" {
			continue
		}
		t.Errorf("%d series of %s left after the route was forgotten", len(f.GetMetric()), f.GetName())
	}
}

// codeCount reads the requests counter of code (0 when it has no series).
func codeCount(t *testing.T, reg *prometheus.Registry, code string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "berth_gateway_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			if labelOf(m, "code") == code {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func labelOf(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
