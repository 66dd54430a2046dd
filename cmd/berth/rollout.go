package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/spf13/cobra"
)

func newRolloutCmd(g *globalOptions) *cobra.Command {
	var namespace string
	cmd := &cobra.Command{Use: "rollout", Short: "Follow and steer rollouts (status, pause, resume, promote, abort) and revisions (history, undo)"}
	cmd.PersistentFlags().StringVarP(&namespace, "namespace", "n", api.DefaultNamespace, "namespace")
	history := &cobra.Command{
		Use:   "history SERVICE",
		Short: "List a service's kept revisions with what changed",
		Args:  nArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				resp, err := cli.ListRevisions(ctx, &pb.ListRevisionsRequest{Namespace: namespace, Name: args[0]})
				if err != nil {
					return g.rpcErr(err)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "REVISION\tIMAGE\tINSTANCES\tCREATED\tCHANGE")
				for _, r := range resp.Revisions {
					mark := ""
					if r.Current {
						mark = " (current)"
					}
					change := r.Change
					if r.RolledBack != "" {
						change += " [rolled back: " + r.RolledBack + "]"
					}
					fmt.Fprintf(tw, "%d%s\t%s\t%d\t%s ago\t%s\n", r.Number, mark, r.Image, r.Instances, age(r.CreatedAt), change)
				}
				return tw.Flush()
			})
		},
	}
	var to int64
	undo := &cobra.Command{
		Use:   "undo SERVICE",
		Short: "Roll back to the previous revision that was not rolled back (or --to-revision N), as a new revision",
		Args:  nArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				res, err := cli.Undo(ctx, &pb.UndoRequest{Namespace: namespace, Name: args[0], ToRevision: to})
				if err != nil {
					return g.rpcErr(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "service/%s rolled back (revision %d, %s)\n", args[0], res.Revision, res.Action)
				return nil
			})
		},
	}
	undo.Flags().Int64Var(&to, "to-revision", 0, "revision to go back to (default: the one before the current)")
	var watch bool
	statusCmd := &cobra.Command{
		Use:   "status SERVICE",
		Short: "Show a canary: revisions, step, weights, pause left, traffic and errors per side",
		Args:  nArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cli, done, err := g.client()
			if err != nil {
				return err
			}
			defer done()
			// --watch on a terminal redraws the status in place.
			out := &redrawer{w: cmd.OutOrStdout(), tty: watch && isTerminal(cmd.OutOrStdout())}
			paint := painterFor(cmd.OutOrStdout())
			for {
				ctx, cancel := callCtx(cmd)
				r, err := cli.RolloutStatus(ctx, &pb.RolloutRequest{Namespace: namespace, Name: args[0]})
				cancel()
				if err != nil {
					return g.rpcErr(err)
				}
				var b strings.Builder
				printRollout(&b, r, paint)
				out.draw(b.String())
				switch {
				case r.Phase == "Succeeded":
					return nil
				case r.Phase == "RolledBack" || r.Phase == "Aborted":
					return &exitError{code: 3, err: fmt.Errorf("rollout of %s %s: %s", args[0], r.Phase, r.Message)}
				case !watch:
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(time.Second):
				}
			}
		},
	}
	statusCmd.Flags().BoolVarP(&watch, "watch", "w", false, "follow until the rollout ends (exit 0 on success, 3 on rollback or abort)")
	action := func(name, short string) *cobra.Command {
		var full bool
		c := &cobra.Command{
			Use:   name + " SERVICE",
			Short: short,
			Args:  nArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
					r, err := cli.RolloutAction(ctx, &pb.RolloutActionRequest{Namespace: namespace, Name: args[0], Action: name, Full: full})
					if err != nil {
						return g.rpcErr(err)
					}
					fmt.Fprintf(cmd.OutOrStdout(), "rollout of %s: %s (%s)\n", args[0], r.Phase, r.Message)
					return nil
				})
			},
		}
		if name == "promote" {
			c.Flags().BoolVar(&full, "full", false, "go to 100% at once")
		}
		return c
	}
	cmd.AddCommand(history, undo, statusCmd, newRolloutRestartCmd(g, &namespace),
		action("pause", "Hold a canary at its current weight"),
		action("resume", "Continue a paused canary"),
		action("promote", "Leave a pause and go on to the next step (--full: to 100%)"),
		action("abort", "Roll back at once: all traffic to the stable revision, then the canary drains"))
	return cmd
}

func printRollout(w io.Writer, r *pb.Rollout, paint painter) {
	phase := paint.state(r.Phase)
	deadline := ""
	if r.DeadlineLeft != "" {
		deadline = "  deadline in " + r.DeadlineLeft
	}
	if r.Strategy == "rolling" {
		done := 0
		if r.Replicas > 0 {
			done = int(min(r.Available, r.Replicas) * 20 / r.Replicas)
		}
		bar := strings.Repeat("#", done) + strings.Repeat(".", 20-done)
		fmt.Fprintf(w, "%s/%s  %s  rolling r%d from r%d  [%s] %d/%d available%s\n  %s\n",
			r.Namespace, r.Service, phase, r.Revision, r.Stable, bar, r.Available, r.Replicas, deadline, r.Message)
		return
	}
	bar := strings.Repeat("#", int(r.Weight)/5) + strings.Repeat(".", 20-int(r.Weight)/5)
	fmt.Fprintf(w, "%s/%s  %s  canary r%d vs stable r%d  step %d/%d  weight [%s] %d%%/%d%%",
		r.Namespace, r.Service, phase, r.Revision, r.Stable, min(r.Step+1, max(r.Steps, 1)), r.Steps, bar, r.Weight, 100-r.Weight)
	if r.PauseLeft != "" {
		fmt.Fprintf(w, "  pause %s", r.PauseLeft)
	}
	fmt.Fprintf(w, "%s\n  canary: %d ready, %d requests, %d errors%s   stable: %d ready, %d requests, %d errors%s\n", deadline,
		r.CanaryReady, r.CanaryRequests, r.CanaryErrors, p99(r.CanaryP99), r.StableReady, r.StableRequests, r.StableErrors, p99(r.StableP99))
	if len(r.Gateways) > 0 {
		sync := "all gateways run the current weight"
		if !r.WeightSynced {
			sync = "not every gateway runs the current weight yet"
		}
		fmt.Fprintf(w, "  gateways (%s): %s\n", sync, strings.Join(r.Gateways, "; "))
	}
	if len(r.Nodes) > 0 {
		sync := "every node's DNS runs the current weight"
		if !r.DnsSynced {
			sync = "not every node's DNS runs the current weight yet"
		}
		fmt.Fprintf(w, "  node DNS (%s): %s\n", sync, strings.Join(r.Nodes, "; "))
	}
	fmt.Fprintf(w, "  %s\n", r.Message)
}

func p99(v string) string {
	if v == "" {
		return ""
	}
	return ", p99 " + v
}
