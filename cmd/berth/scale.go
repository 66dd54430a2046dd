package main

import (
	"context"
	"fmt"
	"runtime"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/internal/buildinfo"
	"github.com/spf13/cobra"
)

func newScaleCmd(g *globalOptions) *cobra.Command {
	var namespace string
	var replicas int32 = -1
	cmd := &cobra.Command{
		Use:               "scale SERVICE --replicas N",
		Short:             "Set a service's number of replicas (no new revision)",
		Args:              exactArgs(1, "scale SERVICE --replicas N"),
		ValidArgsFunction: completeKindArgs(g, "services"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if replicas < 0 {
				return fmt.Errorf("scale: --replicas N is required (0 or more)")
			}
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				r, err := cli.Scale(ctx, &pb.ScaleRequest{Namespace: namespace, Name: args[0], Replicas: replicas})
				if err != nil {
					return g.rpcErr(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "service/%s %s to %d replicas (revision %d)\n", args[0], r.Action, replicas, r.Revision)
				return nil
			})
		},
	}
	cmd.Flags().StringVarP(&namespace, "namespace", "n", api.DefaultNamespace, "namespace")
	cmd.Flags().Int32Var(&replicas, "replicas", -1, "the number of replicas")
	return cmd
}

func newRolloutRestartCmd(g *globalOptions, namespace *string) *cobra.Command {
	return &cobra.Command{
		Use:               "restart SERVICE",
		Short:             "Replace every replica with a fresh container: a new revision of the same template, rolled out without canary steps",
		Args:              exactArgs(1, "rollout restart SERVICE"),
		ValidArgsFunction: completeKindArgs(g, "services"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				r, err := cli.Restart(ctx, &pb.RestartRequest{Namespace: *namespace, Name: args[0]})
				if err != nil {
					return g.rpcErr(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "service/%s restarting (revision %d); follow with: berth rollout status %s --watch\n", args[0], r.Revision, args[0])
				return nil
			})
		},
	}
}

func newVersionCmd(g *globalOptions) *cobra.Command {
	var clientOnly bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the client's and the server's versions",
		Args:  exactArgs(0, "version"),
		RunE: func(cmd *cobra.Command, args []string) error {
			v := buildinfo.Get()
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "Client: %s (commit %s, %s, %s/%s)\n", v.Version, dash(v.Commit), v.GoVersion, runtime.GOOS, runtime.GOARCH)
			if clientOnly {
				return nil
			}
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				sv, err := cli.Version(ctx, &pb.VersionRequest{})
				if err != nil {
					return g.rpcErr(err)
				}
				fmt.Fprintf(w, "Server: %s (commit %s, %s) at %s\n", sv.Version, dash(sv.Commit), sv.GoVersion, g.server)
				return nil
			})
		},
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "the client's version only (no server needed)")
	return cmd
}
