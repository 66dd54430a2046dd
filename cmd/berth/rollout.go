package main

import (
	"fmt"
	"text/tabwriter"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/spf13/cobra"
)

func newRolloutCmd(g *globalOptions) *cobra.Command {
	var namespace string
	cmd := &cobra.Command{Use: "rollout", Short: "Revision history and rollback"}
	cmd.PersistentFlags().StringVarP(&namespace, "namespace", "n", api.DefaultNamespace, "namespace")
	history := &cobra.Command{
		Use:   "history SERVICE",
		Short: "List a service's kept revisions with what changed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cli, done, err := g.client()
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := callCtx(cmd)
			defer cancel()
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
				fmt.Fprintf(tw, "%d%s\t%s\t%d\t%s ago\t%s\n", r.Number, mark, r.Image, r.Instances, age(r.CreatedAt), r.Change)
			}
			return tw.Flush()
		},
	}
	var to int64
	undo := &cobra.Command{
		Use:   "undo SERVICE",
		Short: "Roll back to the previous revision (or --to-revision N), as a new revision",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cli, done, err := g.client()
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := callCtx(cmd)
			defer cancel()
			res, err := cli.Undo(ctx, &pb.UndoRequest{Namespace: namespace, Name: args[0], ToRevision: to})
			if err != nil {
				return g.rpcErr(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "service/%s rolled back (revision %d, %s)\n", args[0], res.Revision, res.Action)
			return nil
		},
	}
	undo.Flags().Int64Var(&to, "to-revision", 0, "revision to go back to (default: the one before the current)")
	cmd.AddCommand(history, undo)
	return cmd
}
