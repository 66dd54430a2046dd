package runtime

import (
	"net/netip"
	"strings"
	"testing"
)

// The guard's rules, in order: replies pass, then the allowed host ports,
// then everything else to the node is refused, then the control plane's
// ports on its addresses.
func TestGuardRules(t *testing.T) {
	g := &HostGuard{HostPorts: []uint16{53, 8125}, ControlPlane: []netip.Addr{netip.MustParseAddr("192.0.2.10"), netip.MustParseAddr("2001:db8::1")}, ControlPlanePorts: []uint16{2379, 7400}}
	var got []string
	for _, r := range guardRules("G", g) {
		got = append(got, strings.Join(r, " "))
	}
	want := []string{
		"-A G -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
		"-A G -m addrtype --dst-type LOCAL -p udp -m multiport --dports 53,8125 -j RETURN",
		"-A G -m addrtype --dst-type LOCAL -p tcp -m multiport --dports 53,8125 -j RETURN",
		"-A G -m addrtype --dst-type LOCAL -p tcp -j REJECT --reject-with tcp-reset",
		"-A G -m addrtype --dst-type LOCAL -j REJECT --reject-with icmp-port-unreachable",
		"-A G -d 192.0.2.10 -p tcp -m multiport --dports 2379,7400 -j REJECT --reject-with tcp-reset",
	}
	if len(got) != len(want) {
		t.Fatalf("rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("rule %d = %q, want %q...", i, got[i], want[i])
		}
	}
}
