package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// waitOutcome is where one applied service ended up for apply --wait.
type waitOutcome int

const (
	waitPending    waitOutcome = iota
	waitReady                  // every replica of the applied revision ready, older ones gone
	waitPaused                 // a canary waits for `berth rollout promote`
	waitFailed                 // its rollout was rolled back or aborted
	waitSuperseded             // another apply made a newer revision
)

// waitTarget is one applied service apply --wait follows.
type waitTarget struct {
	namespace, name string
	revision        int64
	outcome         waitOutcome
	line            string // the last progress line printed
}

func (t *waitTarget) key() string { return t.namespace + "/" + t.name }

// judgeWait decides a service's wait outcome from its rollout (nil when it
// has none for the applied revision), its summary and its instances: a
// rollout decides while it runs; then, or without one, the applied
// revision must have every replica ready and no older replica left.
func judgeWait(t *waitTarget, ro *pb.Rollout, sum *pb.ServiceSummary, ivs []*pb.InstanceView) (waitOutcome, string) {
	if sum == nil {
		return waitFailed, "deleted while waiting"
	}
	if t.revision == 0 {
		t.revision = sum.Service.GetStatus().GetRevision()
	}
	if rev := sum.Service.GetStatus().GetRevision(); rev > t.revision {
		return waitSuperseded, fmt.Sprintf("superseded by revision %d", rev)
	}
	if ro != nil && ro.Revision == t.revision {
		switch ro.Phase {
		case api.RolloutRolledBack, api.RolloutAborted:
			return waitFailed, fmt.Sprintf("rollout %s: %s", strings.ToLower(ro.Phase), ro.Message)
		case api.RolloutPaused:
			return waitPaused, fmt.Sprintf("paused at %d%% (step %d/%d): %s; go on with `berth rollout promote %s`", ro.Weight, min(ro.Step+1, max(ro.Steps, 1)), ro.Steps, ro.Message, t.name)
		case api.RolloutProgressing:
			if ro.Strategy == api.StrategyRolling {
				return waitPending, fmt.Sprintf("rolling to revision %d: %d/%d available: %s", ro.Revision, ro.Available, ro.Replicas, ro.Message)
			}
			return waitPending, fmt.Sprintf("canary revision %d at %d%% (step %d/%d): %s", ro.Revision, ro.Weight, min(ro.Step+1, max(ro.Steps, 1)), ro.Steps, ro.Message)
		}
	}
	desired := sum.Desired
	ready, old := int32(0), 0
	for _, iv := range ivs {
		in := iv.Instance
		if in.Namespace != t.namespace || in.Service != t.name || in.Desired != api.DesiredRunning || in.Draining {
			continue
		}
		if in.Revision != t.revision {
			old++
			continue
		}
		if iv.Status.GetReady() {
			ready++
		}
	}
	if ready >= desired && old == 0 {
		return waitReady, fmt.Sprintf("revision %d: %d/%d ready", t.revision, ready, desired)
	}
	msg := fmt.Sprintf("revision %d: %d/%d ready", t.revision, ready, desired)
	if old > 0 {
		msg += fmt.Sprintf(", %d of an older revision still running", old)
	}
	return waitPending, msg
}

// waitApplied follows every applied service until its rollout finishes
// (exit 0), pauses for promote (said, exit 0) or fails (exit 3, as
// `rollout status`), printing each service's progress as it changes.
func waitApplied(cmd *cobra.Command, g *globalOptions, cli pb.BerthClient, results []*pb.ApplyResult, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	defer cancel()
	var targets []*waitTarget
	for _, r := range results {
		if r.Kind != api.KindVolume && r.Kind != api.KindSecret {
			targets = append(targets, &waitTarget{namespace: r.Namespace, name: r.Name, revision: r.Revision})
		}
	}
	out := cmd.OutOrStdout()
	start := time.Now()
	for {
		pending, err := pollTargets(ctx, cli, targets, out)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("apply --wait: not done after %s", timeout)
			}
			return g.rpcErr(err)
		}
		if pending == 0 {
			return finishWait(out, targets, time.Since(start))
		}
		select {
		case <-ctx.Done():
			var left []string
			for _, t := range targets {
				if t.outcome == waitPending {
					left = append(left, t.key()+": "+t.line)
				}
			}
			return fmt.Errorf("apply --wait: not done after %s: %s (see berth rollout status, berth get instances)", timeout, strings.Join(left, "; "))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func pollTargets(ctx context.Context, cli pb.BerthClient, targets []*waitTarget, out io.Writer) (pending int, err error) {
	svcs, err := cli.ListServices(ctx, &pb.ListServicesRequest{})
	if err != nil {
		return 0, err
	}
	insts, err := cli.ListInstances(ctx, &pb.ListInstancesRequest{})
	if err != nil {
		return 0, err
	}
	byKey := map[string]*pb.ServiceSummary{}
	for _, s := range svcs.Services {
		byKey[s.Service.Metadata.Namespace+"/"+s.Service.Metadata.Name] = s
	}
	for _, t := range targets {
		if t.outcome != waitPending {
			continue
		}
		ro, err := cli.RolloutStatus(ctx, &pb.RolloutRequest{Namespace: t.namespace, Name: t.name})
		if status.Code(err) == codes.NotFound {
			ro, err = nil, nil
		}
		if err != nil {
			return 0, err
		}
		outcome, line := judgeWait(t, ro, byKey[t.key()], insts.Instances)
		if line != t.line {
			fmt.Fprintf(out, "service/%s: %s\n", t.name, line)
			t.line = line
		}
		if t.outcome = outcome; outcome == waitPending {
			pending++
		}
	}
	return pending, nil
}

func finishWait(out io.Writer, targets []*waitTarget, took time.Duration) error {
	var failed, paused []string
	for _, t := range targets {
		switch t.outcome {
		case waitFailed:
			failed = append(failed, t.key()+": "+t.line)
		case waitPaused:
			paused = append(paused, t.key())
		}
	}
	if len(failed) > 0 {
		return &exitError{code: 3, err: errors.New("apply --wait: " + strings.Join(failed, "; "))}
	}
	if len(paused) > 0 {
		fmt.Fprintf(out, "done in %s; paused for promote: %s\n", took.Round(time.Millisecond), strings.Join(paused, ", "))
		return nil
	}
	fmt.Fprintf(out, "all ready in %s\n", took.Round(time.Millisecond))
	return nil
}
