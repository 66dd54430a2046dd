package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/berth-dev/berth/api/pb"
	"github.com/spf13/cobra"
)

func newTokenCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Manage API tokens (admin, deployer, viewer) and join tokens (node, gateway)"}
	var (
		role, description string
		namespaces        []string
		ttl               time.Duration
		uses              int32
	)
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a token; its secret is printed once",
		Long: `Create a token. API tokens (--role admin, deployer or viewer) are used by the
CLI (--token or BERTH_TOKEN, or the token: field of --config); deployer and
viewer tokens can be limited to namespaces. Join tokens (--role node or
gateway) let one agent or gateway join: start it with --join-token TOKEN
--ca-hash HASH (both printed). Join tokens expire after 1h and allow one
join unless --ttl and --uses say otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				resp, err := cli.CreateToken(ctx, &pb.CreateTokenRequest{Role: role, Namespaces: namespaces, TtlSeconds: int64(ttl / time.Second), Uses: uses, Description: description})
				if err != nil {
					return g.rpcErr(err)
				}
				out := cmd.OutOrStdout()
				switch role {
				case "node", "gateway":
					fmt.Fprintln(out, resp.Token)
					fmt.Fprintf(cmd.ErrOrStderr(), "join with: berth %s --server %s --join-token %s --ca-hash %s\n", map[string]string{"node": "agent", "gateway": "gateway"}[role], g.server, resp.Token, resp.CaHash)
				default:
					fmt.Fprintln(out, resp.Token)
				}
				return nil
			})
		},
	}
	create.Flags().StringVar(&role, "role", "node", "admin, deployer, viewer (API tokens) or node, gateway (join tokens)")
	create.Flags().StringSliceVar(&namespaces, "namespace", nil, "limit a deployer or viewer token to these namespaces")
	create.Flags().DurationVar(&ttl, "ttl", 0, "lifetime (default: 1h for join tokens, no expiry for API tokens)")
	create.Flags().Int32Var(&uses, "uses", 0, "joins a join token allows (default 1; -1: any number until it expires)")
	create.Flags().StringVar(&description, "description", "", "what the token is for")
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				resp, err := cli.ListTokens(ctx, &pb.ListTokensRequest{})
				if err != nil {
					return g.rpcErr(err)
				}
				w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "ID\tROLE\tNAMESPACES\tEXPIRES\tUSES-LEFT\tDESCRIPTION")
				for _, t := range resp.Tokens {
					exp, left := "never", "-"
					if t.ExpiresAt != nil {
						exp = t.ExpiresAt.AsTime().Local().Format(time.RFC3339)
					}
					if t.UsesLeft > 0 {
						left = fmt.Sprint(t.UsesLeft)
					}
					ns := strings.Join(t.Namespaces, ",")
					if ns == "" {
						ns = "*"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", t.Id, t.Role, ns, exp, left, t.Description)
				}
				return w.Flush()
			})
		},
	}
	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token: calls with it are refused at once",
		Args:  nArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				if _, err := cli.RevokeToken(ctx, &pb.RevokeTokenRequest{Id: args[0]}); err != nil {
					return g.rpcErr(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "token/%s revoked\n", args[0])
				return nil
			})
		},
	}
	cmd.AddCommand(create, ls, revoke)
	return cmd
}

func newGatewayRevokeCmd(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke NAME",
		Short: "Revoke a gateway's certificates: its xDS and load-report streams are cut at once",
		Args:  nArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				if _, err := cli.RevokeGateway(ctx, &pb.RevokeGatewayRequest{Name: args[0]}); err != nil {
					return g.rpcErr(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "gateway/%s revoked\n", args[0])
				return nil
			})
		},
	}
}

func newNodeCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "Cordon, uncordon, drain and remove nodes"}
	cordon := func(use, short string, value bool) *cobra.Command {
		return &cobra.Command{
			Use:               use + " NAME",
			ValidArgsFunction: completeKindArgs(g, "nodes"),
			Short:             short,
			Args:              nArgs(1),
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
		Use:               "drain NAME",
		ValidArgsFunction: completeKindArgs(g, "nodes"),
		Short:             "Cordon a node and move its instances elsewhere through the normal drain path",
		Args:              nArgs(1),
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
	remove := &cobra.Command{
		Use:               "remove NAME",
		ValidArgsFunction: completeKindArgs(g, "nodes"),
		Short:             "Remove a node: revoke its certificates at once, replace its instances elsewhere, then delete it",
		Args:              nArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				resp, err := cli.RemoveNode(ctx, &pb.RemoveNodeRequest{Name: args[0]})
				if err != nil {
					return g.rpcErr(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "node/%s removed; its certificates are revoked and %d instances are replaced elsewhere\n", args[0], resp.InstancesReplaced)
				return nil
			})
		},
	}
	cmd.AddCommand(cordon("cordon", "Place no new instances on a node", true), cordon("uncordon", "Let a node take new instances again", false), drain, remove)
	return cmd
}
