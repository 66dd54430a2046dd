package controlplane

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// A leader that dies (here: its API listener and its etcd client gone,
// as after kill -9: no resignation, no more keepalives) is replaced
// within a few seconds, not after its election lease of 10 s: the other
// replica sees the lease no longer kept alive and the API refuse
// connections, and revokes the lease.
func TestDeadLeaderIsReplacedBeforeItsLeaseExpires(t *testing.T) {
	endpoints, secretsKey := sharedEtcd(t)
	start := func(name string) *testReplica { return startReplica(t, endpoints, secretsKey, name, 10*time.Second) }
	if testing.Short() {
		t.Skip("a 10-s lease")
	}
	r1, r2 := start("one"), start("two")
	eventually(t, "one leader", func() (bool, string) { return r1.srv.IsLeader() != r2.srv.IsLeader(), "" })
	leader, follower := r1, r2
	if r2.srv.IsLeader() {
		leader, follower = r2, r1
	}
	// Both records are written (the follower needs the leader's address).
	eventually(t, "the leader's server record", func() (bool, string) {
		rec, err := follower.srv.store.Server(context.Background(), leader.srv.replicaName())
		return err == nil && rec != nil, ""
	})
	// A live leader whose API refuses connections (a firewall that
	// rejects, a listener that failed) still keeps its lease alive: it
	// keeps the lead.
	leader.srv.grpc.Stop()
	time.Sleep(8 * time.Second) // more than two keepalive intervals of the 10-s lease
	if follower.srv.IsLeader() {
		t.Fatal("the follower took the lead from a leader that still beats")
	}
	died := time.Now()
	leader.srv.cli.Close()
	for !follower.srv.IsLeader() {
		if time.Since(died) > 7*time.Second {
			t.Fatalf("no takeover %s after the leader died (its lease: 30 s)", time.Since(died).Round(time.Millisecond))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("took over %s after the leader died", time.Since(died).Round(time.Millisecond))
}

// A follower counts a keepalive where the lease's time to live goes up
// (to at most its TTL); etcd's raise of every lease above its TTL when its
// own leader changes is not one; another leader's lease starts afresh.
func TestLeaseWatchCountsKeepalivesOnly(t *testing.T) {
	var w leaseWatch
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	for _, c := range []struct {
		lease  int64
		ttl    int64
		ms     int
		silent time.Duration
	}{
		{1, 4, 0, 0},                          // first look: counted from now
		{1, 3, 500, 500 * time.Millisecond},   // falling
		{1, 4, 1000, 0},                       // up: a keepalive
		{1, 3, 1500, 500 * time.Millisecond},  // falling
		{1, 6, 2000, time.Second},             // above the TTL: etcd's own raise, not a keepalive
		{1, 5, 2500, 1500 * time.Millisecond}, // falling from the raise
		{1, 4, 3000, 2 * time.Second},
		{2, 5, 3500, 0}, // another leader's lease
	} {
		if got := w.saw(clientv3.LeaseID(c.lease), c.ttl, 5, at(c.ms)); got != c.silent {
			t.Fatalf("at %d ms (lease %d, ttl %d): silent %s, want %s", c.ms, c.lease, c.ttl, got, c.silent)
		}
	}
}

// A leader whose election key goes (another replica revoked its lease)
// stops its controllers at once, not at its next keepalive (a third of
// its 10-s lease): two controllers never run side by side for long. A
// replica restarted under the same name takes the lead from its killed
// predecessor at once.
func TestLeadEndsWithItsKeyAndARestartTakesOverItsPredecessor(t *testing.T) {
	endpoints, secretsKey := sharedEtcd(t)
	// A 30-s lease: a keepalive every 10 s, which the old lead would have
	// waited for; the predecessor's lease would have run 30 s.
	start := func(name string) *Server { return startReplica(t, endpoints, secretsKey, name, 30*time.Second).srv }
	one := start("one")
	eventually(t, "one leads", func() (bool, string) { return one.IsLeader(), "" })
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	resp, err := cli.Get(ctx, ElectionPrefix+"/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("election key: %v", err)
	}
	revoked := time.Now()
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	// It stops and campaigns again at once (nobody else runs, so it leads
	// again within milliseconds: IsLeader alone would hardly be seen
	// false): a new election key on a new lease shows the old lead ended.
	old := resp.Kvs[0].Lease
	for {
		r, err := cli.Get(ctx, ElectionPrefix+"/", clientv3.WithFirstCreate()...)
		if err == nil && len(r.Kvs) > 0 && r.Kvs[0].Lease != old {
			break
		}
		if time.Since(revoked) > 2*time.Second {
			t.Fatalf("no new campaign %s after its election key went: the old lead runs on", time.Since(revoked).Round(time.Millisecond))
		}
		time.Sleep(10 * time.Millisecond)
	}
	eventually(t, "one leads again", func() (bool, string) { return one.IsLeader(), "" })
	// Killed (no resignation), then restarted under the same name.
	one.grpc.Stop()
	one.cli.Close()
	died := time.Now()
	again := start("one")
	for !again.IsLeader() {
		if time.Since(died) > 6*time.Second {
			t.Fatalf("the restarted replica does not lead %s after its predecessor died (its lease: 30 s)", time.Since(died).Round(time.Millisecond))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the restart led %s after its predecessor died", time.Since(died).Round(time.Millisecond))
}
