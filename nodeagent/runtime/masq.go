package runtime

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"

	"github.com/vishvananda/netlink"
)

// masqChain is the nat chain that masquerades this node's pod traffic
// leaving the cluster. Traffic to other pods (the cluster CIDR) keeps its
// source address, so a container on another node sees who called it.
func (r *Runtime) masqChain() string {
	name := "BERTH-MASQ-" + r.cfg.BridgeName
	if len(name) > 28 { // iptables chain names are at most 28 characters
		name = name[:28]
	}
	return name
}

func iptables(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "iptables", append([]string{"-w", "5", "-t", "nat"}, args...)...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// ensureMasquerade installs (idempotently) the node's masquerade rules:
//
//	POSTROUTING -s <pod subnet> -j BERTH-MASQ-<bridge>
//	BERTH-MASQ-<bridge>: -d <cluster CIDR> RETURN; -d 224.0.0.0/4 RETURN; MASQUERADE
func (r *Runtime) ensureMasquerade(ctx context.Context) error {
	cluster, err := netip.ParsePrefix(r.cfg.ClusterCIDR)
	if err != nil {
		return fmt.Errorf("runtime: cluster cidr %q: %w", r.cfg.ClusterCIDR, err)
	}
	chain := r.masqChain()
	if _, err := iptables(ctx, "-N", chain); err != nil {
		// Exists already: rebuild its rules below.
		if out, err := iptables(ctx, "-F", chain); err != nil {
			return fmt.Errorf("runtime: iptables flush %s: %v: %s", chain, err, out)
		}
	}
	for _, rule := range [][]string{
		{"-A", chain, "-d", cluster.Masked().String(), "-j", "RETURN", "-m", "comment", "--comment", "berth: pod to pod keeps its source"},
		{"-A", chain, "-d", "224.0.0.0/4", "-j", "RETURN"},
		{"-A", chain, "-j", "MASQUERADE", "-m", "comment", "--comment", "berth: pod traffic leaving the cluster"},
	} {
		if out, err := iptables(ctx, rule...); err != nil {
			return fmt.Errorf("runtime: iptables %s: %v: %s", strings.Join(rule, " "), err, out)
		}
	}
	jump := []string{"POSTROUTING", "-s", r.subnet.String(), "-j", chain}
	if _, err := iptables(ctx, append([]string{"-C"}, jump...)...); err != nil {
		if out, err := iptables(ctx, append([]string{"-A"}, jump...)...); err != nil {
			return fmt.Errorf("runtime: iptables -A %s: %v: %s", strings.Join(jump, " "), err, out)
		}
	}
	return nil
}

// RemoveNetwork deletes the node's network once no container uses it: the
// masquerade rules and the bridge. For tests and for taking a node out of
// service; an agent never calls it on its own.
func (r *Runtime) RemoveNetwork(ctx context.Context) error {
	r.removeGuard(ctx)
	chain := r.masqChain()
	for {
		if _, err := iptables(ctx, "-D", "POSTROUTING", "-s", r.subnet.String(), "-j", chain); err != nil {
			break
		}
	}
	_, _ = iptables(ctx, "-F", chain)
	_, _ = iptables(ctx, "-X", chain)
	if link, err := netlink.LinkByName(r.cfg.BridgeName); err == nil {
		if err := netlink.LinkDel(link); err != nil {
			return fmt.Errorf("runtime: delete bridge %s: %w", r.cfg.BridgeName, err)
		}
	}
	return nil
}
