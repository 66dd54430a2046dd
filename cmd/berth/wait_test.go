package main

import (
	"testing"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
)

func summary(rev int64, desired int32) *pb.ServiceSummary {
	return &pb.ServiceSummary{Desired: desired, Service: &pb.Service{
		Metadata: &pb.ObjectMeta{Namespace: "default", Name: "web"}, Status: &pb.ServiceStatus{Revision: rev}}}
}

func inst(rev int64, ready bool) *pb.InstanceView {
	return &pb.InstanceView{Instance: &pb.Instance{Namespace: "default", Service: "web", Revision: rev, Desired: api.DesiredRunning},
		Status: &pb.InstanceStatus{Ready: ready}}
}

func TestJudgeWait(t *testing.T) {
	target := func() *waitTarget { return &waitTarget{namespace: "default", name: "web", revision: 2} }
	stableReady := []*pb.InstanceView{inst(1, true), inst(1, true), inst(2, true)}
	for _, c := range []struct {
		name string
		ro   *pb.Rollout
		sum  *pb.ServiceSummary
		ivs  []*pb.InstanceView
		want waitOutcome
	}{
		// The reported bug: "all ready in 1ms" while a canary sat at its
		// first step, every replica of both sides ready.
		{"canary at its first step", &pb.Rollout{Revision: 2, Phase: api.RolloutProgressing, Weight: 10, Steps: 3}, summary(2, 2), stableReady, waitPending},
		{"rollout not started yet", nil, summary(2, 2), stableReady, waitPending},
		{"rollout of an older revision", &pb.Rollout{Revision: 1, Phase: api.RolloutSucceeded}, summary(2, 2), stableReady, waitPending},
		{"paused for promote", &pb.Rollout{Revision: 2, Phase: api.RolloutPaused, Weight: 50, Steps: 3, Step: 1}, summary(2, 2), stableReady, waitPaused},
		{"rolled back", &pb.Rollout{Revision: 2, Phase: api.RolloutRolledBack}, summary(2, 2), stableReady, waitFailed},
		{"aborted", &pb.Rollout{Revision: 2, Phase: api.RolloutAborted}, summary(2, 2), stableReady, waitFailed},
		{"succeeded, old replicas still draining in", &pb.Rollout{Revision: 2, Phase: api.RolloutSucceeded}, summary(2, 2), stableReady, waitPending},
		{"succeeded and replaced", &pb.Rollout{Revision: 2, Phase: api.RolloutSucceeded}, summary(2, 2), []*pb.InstanceView{inst(2, true), inst(2, true)}, waitReady},
		{"first deploy, one not ready", nil, summary(2, 2), []*pb.InstanceView{inst(2, true), inst(2, false)}, waitPending},
		{"first deploy ready", nil, summary(2, 2), []*pb.InstanceView{inst(2, true), inst(2, true)}, waitReady},
		{"superseded", nil, summary(3, 2), nil, waitSuperseded},
		{"deleted", nil, nil, nil, waitFailed},
	} {
		got, line := judgeWait(target(), c.ro, c.sum, c.ivs)
		if got != c.want {
			t.Errorf("%s: outcome %d (%q), want %d", c.name, got, line, c.want)
		}
	}
}
