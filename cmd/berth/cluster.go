package main

import (
	"context"
	"fmt"

	"github.com/berth-dev/berth/api/pb"
	"github.com/spf13/cobra"
)

func newTokenCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage join tokens for agents"}
	var description string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a join token; start agents with --join-token TOKEN",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				resp, err := cli.CreateJoinToken(ctx, &pb.CreateJoinTokenRequest{Description: description})
				if err != nil {
					return g.rpcErr(err)
				}
				fmt.Fprintln(cmd.OutOrStdout(), resp.Token)
				return nil
			})
		},
	}
	create.Flags().StringVar(&description, "description", "", "what the token is for")
	cmd.AddCommand(create)
	return cmd
}

func newNodeCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "Cordon, uncordon and drain nodes"}
	cordon := func(use, short string, value bool) *cobra.Command {
		return &cobra.Command{
			Use:   use + " NAME",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
					if _, err := cli.CordonNode(ctx, &pb.CordonNodeRequest{Name: args[0], Cordon: value}); err != nil {
						return g.rpcErr(err)
					}
					fmt.Fprintf(cmd.OutOrStdout(), "node/%s %sed\n", args[0], use)
					return nil
				})
			},
		}
	}
	drain := &cobra.Command{
		Use:   "drain NAME",
		Short: "Cordon a node and move its instances elsewhere through the normal drain path",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				resp, err := cli.DrainNode(ctx, &pb.DrainNodeRequest{Name: args[0]})
				if err != nil {
					return g.rpcErr(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "node/%s cordoned; %d instances draining\n", args[0], resp.InstancesDraining)
				return nil
			})
		},
	}
	cmd.AddCommand(cordon("cordon", "Place no new instances on a node", true), cordon("uncordon", "Let a node take new instances again", false), drain)
	return cmd
}
