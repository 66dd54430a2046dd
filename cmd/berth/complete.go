package main

import (
	"context"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/spf13/cobra"
)

// completeNames lists the names of a kind for shell completion: services,
// instances and nodes, asked of the API with a short deadline (nothing
// when it does not answer).
func completeNames(cmd *cobra.Command, g *globalOptions, kind string) []string {
	k, ok := kindOf(kind)
	if !ok {
		return nil
	}
	cli, done, err := g.client()
	if err != nil {
		return nil
	}
	defer done()
	ctx, cancel := context.WithTimeout(cmd.Context(), 2*time.Second)
	defer cancel()
	ns, _ := cmd.Flags().GetString("namespace")
	var out []string
	switch k {
	case "services":
		if l, err := cli.ListServices(ctx, &pb.ListServicesRequest{Namespace: ns}); err == nil {
			for _, s := range l.Services {
				out = append(out, s.Service.Metadata.Name)
			}
		}
	case "instances":
		if l, err := cli.ListInstances(ctx, &pb.ListInstancesRequest{Namespace: ns}); err == nil {
			for _, iv := range l.Instances {
				out = append(out, iv.Instance.Id)
			}
		}
	case "nodes":
		if l, err := cli.ListNodes(ctx, &pb.ListNodesRequest{}); err == nil {
			for _, n := range l.Nodes {
				out = append(out, n.Name)
			}
		}
	}
	return out
}

// completeKindArgs completes the names of one kind as every argument.
func completeKindArgs(g *globalOptions, kind string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		return completeNames(cmd, g, kind), cobra.ShellCompDirectiveNoFileComp
	}
}
