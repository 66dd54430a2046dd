package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/spf13/cobra"
)

func printVolumes(tw *tabwriter.Writer, vs []*pb.VolumeView) {
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tNODE\tSIZE\tSTATE\tUSED-BY\tAGE")
	for _, v := range vs {
		vol := v.Volume
		node, size, state := vol.Node, vol.Size, "Bound"
		if node == "" {
			node, state = "-", "Unbound"
			if vol.PinnedNode != "" {
				node = vol.PinnedNode + " (pinned)"
			}
		}
		if size == "" {
			size = "-"
		}
		if vol.Deleting {
			state = "Deleting"
		}
		users := strings.Join(v.UsedBy, ",")
		if users == "" {
			users = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", vol.Metadata.Namespace, vol.Metadata.Name, node, size, state, users, age(vol.CreatedAt))
	}
}

func newVolumeCmd(g *globalOptions) *cobra.Command {
	var namespace string
	cmd := &cobra.Command{Use: "volume", Short: "List, describe, remove and release volumes"}
	cmd.PersistentFlags().StringVarP(&namespace, "namespace", "n", api.DefaultNamespace, "namespace")
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List volumes, where their data is and who mounts them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				resp, err := cli.ListVolumes(ctx, &pb.ListVolumesRequest{Namespace: namespace})
				if err != nil {
					return g.rpcErr(err)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				printVolumes(tw, resp.Volumes)
				return tw.Flush()
			})
		},
	}
	describe := &cobra.Command{
		Use:   "describe NAME",
		Short: "Show a volume and its events",
		Args:  nArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				d, err := cli.GetVolume(ctx, &pb.GetVolumeRequest{Namespace: namespace, Name: args[0]})
				if err != nil {
					return g.rpcErr(err)
				}
				w := cmd.OutOrStdout()
				v := d.View.Volume
				fmt.Fprintf(w, "Name:       %s\nNamespace:  %s\nNode:       %s\nPinned to:  %s\nSize:       %s\nTemplate:   %s\nDeleting:   %t\nUsed by:    %s\n",
					v.Metadata.Name, v.Metadata.Namespace, dash(v.Node), dash(v.PinnedNode), dash(v.Size), dash(v.Template), v.Deleting, dash(strings.Join(d.View.UsedBy, ", ")))
				fmt.Fprintln(w, "\nEvents:")
				printEvents(w, d.Events)
				return nil
			})
		},
	}
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Delete a volume and its data (refused while an instance mounts it)",
		Args:  nArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				if _, err := cli.DeleteVolume(ctx, &pb.DeleteVolumeRequest{Namespace: namespace, Name: args[0]}); err != nil {
					return g.rpcErr(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "volume/%s deleted\n", args[0])
				return nil
			})
		},
	}
	release := &cobra.Command{
		Use:   "release NAME",
		Short: "Unbind a volume from its (lost) node: its consumers start elsewhere on an EMPTY directory",
		Args:  nArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				resp, err := cli.ReleaseVolume(ctx, &pb.ReleaseVolumeRequest{Namespace: namespace, Name: args[0]})
				if err != nil {
					return g.rpcErr(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "volume/%s released from node %s; its data there is no longer used\n", args[0], dash(resp.PreviousNode))
				return nil
			})
		},
	}
	cmd.AddCommand(ls, describe, rm, release)
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
