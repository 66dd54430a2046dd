package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-dev/berth/controlplane/store"
)

// goal is one line of the table: a figure and the goal beside it.
type goal struct {
	what, value, goal string
	met               bool
}

func (b *bench) goal(what, value, want string, met bool) {
	b.goals = append(b.goals, goal{what, value, want, met})
}

func (b *bench) printGoals() {
	if len(b.goals) == 0 {
		return
	}
	fmt.Printf("\ngoals (issue #15), this run:\n  %-58s %-28s %-16s %s\n", "measure", "measured", "goal", "met")
	for _, g := range b.goals {
		met := "no"
		if g.met {
			met = "yes"
		}
		fmt.Printf("  %-58s %-28s %-16s %s\n", g.what, g.value, g.goal, met)
	}
}

// arrivals waits until every live agent holds discovery version rev or
// newer and returns each one's delay from t0.
func (b *bench) arrivals(ctx context.Context, rev int64, t0 time.Time) ([]time.Duration, error) {
	start := time.Now()
	for {
		line, err := b.agents.ask(fmt.Sprintf("arrived %d %d", rev, t0.UnixNano()))
		if err != nil {
			return nil, err
		}
		kv := fields(line)
		if kv["n"] == kv["of"] {
			var out []time.Duration
			for us := range strings.SplitSeq(kv["us"], ",") {
				if v, err := strconv.ParseInt(us, 10, 64); err == nil {
					out = append(out, time.Duration(v)*time.Microsecond)
				}
			}
			return out, nil
		}
		if time.Since(start) > b.o.stall {
			return nil, fmt.Errorf("discovery version %d reached %s of %s agents in %v", rev, kv["n"], kv["of"], b.o.stall)
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// propagation turns an instance's readiness over -flips times (as a
// failing, then passing, probe does) and times until every node's DNS
// holds the discovery version with the change: from just before the
// agent's report to each agent's receipt of the snapshot.
func (b *bench) propagation(ctx context.Context) error {
	if b.o.flips <= 0 {
		return nil
	}
	var all, slowest, acks, published []time.Duration
	// An even number of flips leaves the instance ready again.
	flips := b.o.flips + b.o.flips%2
	for range flips {
		line, err := b.agents.ask("flip")
		if err != nil {
			return err
		}
		kv := fields(line)
		at, err := strconv.ParseInt(kv["at"], 10, 64)
		if err != nil {
			return fmt.Errorf("flip answer %q", line)
		}
		// The status write's revision: every snapshot from it on has the change.
		resp, err := b.etcd.Get(ctx, store.StatusPrefix+kv["id"])
		if err != nil || len(resp.Kvs) == 0 {
			return fmt.Errorf("status of %s: %v", kv["id"], err)
		}
		rev, t0 := resp.Kvs[0].ModRevision, time.Unix(0, at)
		// When the control plane published a snapshot with the change:
		// what comes before is its pipeline, what comes after the fan-out.
		pubDone := make(chan time.Duration, 1)
		go func() {
			for {
				if l := b.published(); l >= uint64(rev) || ctx.Err() != nil {
					pubDone <- time.Since(t0)
					return
				}
				time.Sleep(500 * time.Microsecond)
			}
		}()
		acked := make(chan error, 1)
		var ack time.Duration
		go func() {
			// Every gateway runs a snapshot of rev or newer.
			err := b.xds.WaitForAck(ctx, uint64(rev))
			ack = time.Since(t0)
			acked <- err
		}()
		d, err := b.arrivals(ctx, rev, t0)
		if err != nil {
			return fmt.Errorf("propagation: %w", err)
		}
		if err := <-acked; err != nil {
			return fmt.Errorf("propagation to gateways: %w", err)
		}
		acks = append(acks, ack)
		published = append(published, <-pubDone)
		all = append(all, d...)
		slowest = append(slowest, slices.Max(d))
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
	fmt.Printf("endpoint change (a readiness flip reported by an agent) -> every node's DNS has it: %d changes x %d nodes: p50 %v p99 %v max %v; slowest node per change p50 %v max %v (of which until the control plane published it: p50 %v max %v)\n",
		flips, b.o.nodes, q(all, 0.5), q(all, 0.99), q(all, 1), q(slowest, 0.5), q(slowest, 1), q(published, 0.5), q(published, 1))
	if b.o.gateways > 0 {
		fmt.Printf("endpoint change -> all %d gateways ACKed (delta ADS): %d changes: p50 %v p99 %v max %v\n", b.o.gateways, flips, q(acks, 0.5), q(acks, 0.99), q(acks, 1))
		gp99 := q(acks, 0.99)
		b.note("endpoint change -> gateways ACKed, p99", float64(gp99.Microseconds())/1000, "ms")
		b.goal(fmt.Sprintf("endpoint change -> all %d gateways ACKed, p99", b.o.gateways), gp99.String(), "< 100ms", gp99 < 100*time.Millisecond)
	}
	p99 := q(all, 0.99)
	b.note("endpoint change -> nodes' DNS, p99", float64(p99.Microseconds())/1000, "ms")
	b.goal(fmt.Sprintf("endpoint change -> every node's DNS (%d nodes), p99", b.o.nodes), p99.String(), "< 100ms", p99 < 100*time.Millisecond)
	return nil
}

// nodeLoss kills one agent (its streams and heartbeats stop, as when a
// node dies) and times until its endpoints are out of every other node's
// DNS and its instances run again elsewhere.
func (b *bench) nodeLoss(ctx context.Context) error {
	if !b.o.nodeLoss || b.o.nodes < 3 {
		return nil
	}
	before, err := b.agents.stats()
	if err != nil {
		return err
	}
	const victim = "node-001"
	// The liveness claim's deletion is when its endpoints leave discovery.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	gone := make(chan int64, 1)
	key := store.LeasesPrefix + victim
	cur, err := b.etcd.Get(ctx, key)
	if err != nil {
		return err
	}
	wch := b.etcd.Watch(wctx, key, clientv3.WithRev(cur.Header.Revision+1))
	go func() {
		for resp := range wch {
			for _, ev := range resp.Events {
				if ev.Type == clientv3.EventTypeDelete {
					gone <- ev.Kv.ModRevision
					return
				}
			}
		}
	}()
	line, err := b.agents.ask("kill 1")
	if err != nil {
		return err
	}
	at, _ := strconv.ParseInt(fields(line)["at"], 10, 64)
	t0 := time.Unix(0, at)
	var rev int64
	select {
	case rev = <-gone:
	case <-time.After(b.o.stall):
		return fmt.Errorf("node loss: %s's liveness claim still there after %v", victim, b.o.stall)
	case <-ctx.Done():
		return ctx.Err()
	}
	// A delete's ModRevision is 0: the watch response's revision is the one.
	if rev == 0 {
		resp, err := b.etcd.Get(ctx, key)
		if err != nil {
			return err
		}
		rev = resp.Header.Revision
	}
	d, err := b.arrivals(ctx, rev, t0)
	if err != nil {
		return fmt.Errorf("node loss: %w", err)
	}
	out := slices.Max(d)
	// Replacements: the other agents run as many instances as before.
	want := before.Live
	_, err = b.waitAgents(ctx, fmt.Sprintf("%d instances running again after %s was lost", want, victim), func(s agentStats) (bool, int64) {
		return s.Live == want && s.Ready == want, progress(s)
	})
	if err != nil {
		return fmt.Errorf("node loss: %w", err)
	}
	replaced := time.Since(t0)
	fmt.Printf("node loss (%s killed, %d nodes, node timeout %v): its endpoints out of every other node's DNS after %v (p50 %v); replacements running and ready after %v\n",
		victim, b.o.nodes, b.nodeTimeout, out.Round(time.Millisecond), q(d, 0.5), replaced.Round(time.Millisecond))
	b.goal("one node lost: endpoints out everywhere", out.Round(time.Millisecond).String(), "<= 3s", out <= 3*time.Second)
	b.goal("one node lost: replacements running", replaced.Round(time.Millisecond).String(), "<= 10s", replaced <= 10*time.Second)
	return nil
}

// rss returns the resident memory of this process (the control plane,
// its embedded etcd and the benchmark's small client) in MiB.
func rss() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	return 0
}
