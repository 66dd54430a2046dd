package controlplane

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/internal/apierr"
	"go.etcd.io/etcd/server/v3/embed"
)

// externalEtcd is a three-member etcd cluster as a user runs it beside
// Berth (plain etcd, not Berth's embedded member): peers on loopback TCP,
// clients on Unix sockets. A member can be stopped and started again on
// its data.
type externalEtcd struct {
	t         *testing.T
	cfgs      []*embed.Config
	members   []*embed.Etcd // nil: stopped
	endpoints []string
}

func startExternalEtcd(t *testing.T) *externalEtcd {
	t.Helper()
	names := []string{"e0", "e1", "e2"}
	peers := make([]string, len(names))
	var initial []string
	for i, n := range names {
		peers[i] = "http://" + freePort(t)
		initial = append(initial, n+"="+peers[i])
	}
	x := &externalEtcd{t: t, members: make([]*embed.Etcd, len(names))}
	for i, n := range names {
		dir := t.TempDir()
		cfg := embed.NewConfig()
		cfg.Name, cfg.Dir = n, filepath.Join(dir, "data")
		client := url.URL{Scheme: "unix", Path: filepath.Join(dir, "client.sock")}
		peer, _ := url.Parse(peers[i])
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
		cfg.InitialCluster = strings.Join(initial, ",")
		cfg.TickMs, cfg.ElectionMs = 10, 100
		cfg.LogLevel, cfg.ListenMetricsUrls = "fatal", nil
		x.cfgs = append(x.cfgs, cfg)
		x.endpoints = append(x.endpoints, client.String())
	}
	// A new cluster's members wait for each other: start them together.
	errs := make(chan error, len(names))
	for i := range names {
		go func() { errs <- x.start(i) }()
	}
	for range names {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for i := range x.members {
			x.stop(i)
		}
	})
	return x
}

func (x *externalEtcd) start(i int) error {
	cfg := x.cfgs[i]
	os.Remove(cfg.ListenClientUrls[0].Path) // left by the stopped member
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return err
	case <-time.After(30 * time.Second):
		e.Close()
		return fmt.Errorf("member %s not ready after 30s", cfg.Name)
	}
	x.members[i] = e
	return nil
}

func (x *externalEtcd) stop(i int) {
	if x.members[i] != nil {
		x.members[i].Close()
		x.members[i] = nil
	}
}

// Replicas on an external three-member etcd (--etcd-endpoints a,b,c)
// keep writing when the member their client uses goes (the etcd client
// moves to another endpoint); with two of three gone writes fail at once
// naming quorum, and they resume when a member returns.
func TestExternalEtcdClusterLosesAMember(t *testing.T) {
	x := startExternalEtcd(t)
	srv := startReplica(t, x.endpoints, filepath.Join(t.TempDir(), "secrets.key"), "one", time.Second).srv
	ctx := context.Background()
	eventually(t, "the replica leads", func() (bool, string) { return srv.IsLeader(), "" })
	cli := pb.NewBerthClient(adminConn(t, srv))
	apply := func(replicas int32) {
		t.Helper()
		var err error
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			actx, acancel := context.WithTimeout(ctx, 5*time.Second)
			_, err = cli.Apply(actx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(replicas)}})
			acancel()
			if err == nil {
				return
			}
		}
		t.Fatalf("apply with %d replicas: %v", replicas, err)
	}
	apply(1)
	// The first endpoint's member goes (the client's first choice).
	x.stop(0)
	apply(2)
	// Then etcd's leader among the two left: one of three, no quorum.
	for i := 1; i < 3; i++ {
		if m := x.members[i]; m.Server.Leader() == m.Server.MemberID() {
			x.stop(i)
		}
	}
	if x.members[1] != nil && x.members[2] != nil {
		t.Fatal("no etcd leader among the two members left")
	}
	actx, acancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := cli.Apply(actx, &pb.ApplyRequest{Services: []*pb.Service{helloSpec(3)}})
	acancel()
	if !apierr.IsNoQuorum(err) {
		t.Fatalf("a write with one of three members: %v, want the no-quorum error", err)
	}
	// A member returns: quorum, writes again.
	if err := x.start(0); err != nil {
		t.Fatal(err)
	}
	apply(3)
	eventually(t, "three instances", func() (bool, string) {
		l, err := cli.ListInstances(ctx, &pb.ListInstancesRequest{})
		return err == nil && len(l.GetInstances()) == 3, fmt.Sprint(len(l.GetInstances()), err)
	})
}
