package runtime

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
)

// HostGuard keeps containers away from what runs beside them: the node's
// own ports (the control plane's API, xDS, metrics and etcd when they run
// here, the agent's metrics, anything else on the host), except the
// node-local DNS and the ports listed, and the control plane's ports on
// other hosts. Replies to connections the host opened (probes, the
// gateway) pass.
type HostGuard struct {
	// HostPorts on the node itself containers may reach, TCP and UDP
	// (the node-local DNS port at least).
	HostPorts []uint16
	// ControlPlane are the control plane's addresses: ControlPlanePorts
	// on them are refused to containers wherever they are.
	ControlPlane      []netip.Addr
	ControlPlanePorts []uint16
}

// guardChain is the filter chain, hooked into INPUT and FORWARD for
// traffic that comes in on the node's bridge.
func (r *Runtime) guardChain() string {
	name := "BERTH-GUARD-" + r.cfg.BridgeName
	if len(name) > 28 {
		name = name[:28]
	}
	return name
}

func iptablesFilter(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "iptables", append([]string{"-w", "5", "-t", "filter"}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// guardRules are the chain's rules, in order.
func guardRules(chain string, g *HostGuard) [][]string {
	const comment = "berth: containers do not reach the node or the control plane"
	rules := [][]string{
		{"-A", chain, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "RETURN"},
	}
	if len(g.HostPorts) > 0 {
		ports := joinPorts(g.HostPorts)
		for _, proto := range []string{"udp", "tcp"} {
			rules = append(rules, []string{"-A", chain, "-m", "addrtype", "--dst-type", "LOCAL", "-p", proto, "-m", "multiport", "--dports", ports, "-j", "RETURN"})
		}
	}
	rules = append(rules,
		[]string{"-A", chain, "-m", "addrtype", "--dst-type", "LOCAL", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset", "-m", "comment", "--comment", comment},
		[]string{"-A", chain, "-m", "addrtype", "--dst-type", "LOCAL", "-j", "REJECT", "--reject-with", "icmp-port-unreachable", "-m", "comment", "--comment", comment},
	)
	if len(g.ControlPlanePorts) > 0 {
		for _, a := range g.ControlPlane {
			if !a.Is4() {
				continue // the pod network is IPv4
			}
			rules = append(rules, []string{"-A", chain, "-d", a.String(), "-p", "tcp", "-m", "multiport", "--dports", joinPorts(g.ControlPlanePorts),
				"-j", "REJECT", "--reject-with", "tcp-reset", "-m", "comment", "--comment", comment})
		}
	}
	return rules
}

func joinPorts(ports []uint16) string {
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}

// ensureGuard installs (idempotently, rebuilding the chain) the guard:
//
//	INPUT   -i <bridge> -j BERTH-GUARD-<bridge>   (first)
//	FORWARD -i <bridge> -j BERTH-GUARD-<bridge>   (first)
func (r *Runtime) ensureGuard(ctx context.Context) error {
	g := r.cfg.HostGuard
	chain := r.guardChain()
	if _, err := iptablesFilter(ctx, "-N", chain); err != nil {
		if out, err := iptablesFilter(ctx, "-F", chain); err != nil {
			return fmt.Errorf("runtime: iptables flush %s: %v: %s", chain, err, out)
		}
	}
	for _, rule := range guardRules(chain, g) {
		if out, err := iptablesFilter(ctx, rule...); err != nil {
			return fmt.Errorf("runtime: iptables %s: %v: %s", strings.Join(rule, " "), err, out)
		}
	}
	for _, hook := range []string{"INPUT", "FORWARD"} {
		jump := []string{hook, "-i", r.cfg.BridgeName, "-j", chain}
		if _, err := iptablesFilter(ctx, append([]string{"-C"}, jump...)...); err == nil {
			continue
		}
		if out, err := iptablesFilter(ctx, append([]string{"-I", hook, "1"}, jump[1:]...)...); err != nil {
			return fmt.Errorf("runtime: iptables -I %s: %v: %s", strings.Join(jump, " "), err, out)
		}
	}
	return nil
}

// removeGuard takes the guard out (hooks, then the chain).
func (r *Runtime) removeGuard(ctx context.Context) {
	chain := r.guardChain()
	for _, hook := range []string{"INPUT", "FORWARD"} {
		for {
			if _, err := iptablesFilter(ctx, "-D", hook, "-i", r.cfg.BridgeName, "-j", chain); err != nil {
				break
			}
		}
	}
	_, _ = iptablesFilter(ctx, "-F", chain)
	_, _ = iptablesFilter(ctx, "-X", chain)
}
