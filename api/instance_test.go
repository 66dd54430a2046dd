package api

import (
	"testing"
	"time"
)

// The one definition of ready: the status says so and comes from the
// node the instance is on; available adds minReady.
func TestReadyAndAvailable(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	in := Instance{ID: "a", Node: "n1", Desired: DesiredRunning}
	st := InstanceStatus{ID: "a", Node: "n1", Ready: true, StartedAt: now.Add(-5 * time.Second)}
	for _, c := range []struct {
		name      string
		in        Instance
		st        InstanceStatus
		ready     bool
		available bool // minReady 10s
	}{
		{"ready for 5s", in, st, true, false},
		{"ready for 15s", in, InstanceStatus{Node: "n1", Ready: true, StartedAt: now.Add(-15 * time.Second)}, true, true},
		{"not ready", in, InstanceStatus{Node: "n1"}, false, false},
		{"no status", in, InstanceStatus{}, false, false},
		{"a report from the node it left", in, InstanceStatus{Node: "n2", Ready: true, StartedAt: now.Add(-time.Hour)}, false, false},
		{"not placed", Instance{ID: "a"}, InstanceStatus{Ready: true}, false, false},
		{"ready without a start time", in, InstanceStatus{Node: "n1", Ready: true}, true, false},
	} {
		if got := c.in.ReadyWith(c.st); got != c.ready {
			t.Errorf("%s: ready %v, want %v", c.name, got, c.ready)
		}
		if got := c.in.AvailableWith(c.st, 10*time.Second, now); got != c.available {
			t.Errorf("%s: available %v, want %v", c.name, got, c.available)
		}
		if got := c.in.AvailableWith(c.st, 0, now); got != c.ready {
			t.Errorf("%s: available without minReady %v, want ready's %v", c.name, got, c.ready)
		}
	}
	if (&Instance{Draining: true, Desired: DesiredRunning}).Live() || (&Instance{Desired: DesiredStopped}).Live() || !in.Live() {
		t.Error("Live: draining or stopped instances are not live")
	}
}

func TestNames(t *testing.T) {
	for _, c := range []struct {
		s                 string
		label, name, part bool
	}{
		{"web", true, true, true},
		{"web-1", true, true, true},
		{"1web", true, false, true},
		{"-web", false, false, true},
		{"web-", false, false, true},
		{"Web", false, false, false},
		{"a_b", false, false, true},
		{"a.b", false, false, true},
		{"..", false, false, false},
		{"../etc", false, false, false},
		{"", false, false, false},
		{string(make([]byte, 64)), false, false, false},
	} {
		if IsDNSLabel(c.s) != c.label || IsName(c.s) != c.name || IsPartName(c.s) != c.part {
			t.Errorf("%q: label %v name %v part %v, want %v %v %v", c.s, IsDNSLabel(c.s), IsName(c.s), IsPartName(c.s), c.label, c.name, c.part)
		}
	}
}
