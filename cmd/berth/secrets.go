package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/manifests"
)

// secretToPB carries a manifest's Secret, values decoded, to the API.
func secretToPB(s *api.Secret) (*pb.Secret, error) {
	data, err := s.Values()
	if err != nil {
		return nil, fmt.Errorf("secret %s: %w", s.Key(), err)
	}
	return &pb.Secret{Metadata: &pb.ObjectMeta{Name: s.Metadata.Name, Namespace: s.Metadata.Namespace}, Data: data}, nil
}

func newSecretCmd(g *globalOptions) *cobra.Command {
	var namespace string
	cmd := &cobra.Command{Use: "secret", Short: "Create, list and remove secrets (values are never shown)"}
	cmd.PersistentFlags().StringVarP(&namespace, "namespace", "n", api.DefaultNamespace, "namespace")
	var literals, files []string
	create := &cobra.Command{
		Use:   "create NAME (--from-literal KEY=VALUE | --from-file [KEY=]PATH)...",
		Short: "Create or replace a secret; services name it in spec.secrets",
		Long: `Create or replace a secret. Its values are sealed in etcd with the control
plane's key, sent only to nodes that start a container using it, and never
printed by any command. Containers started after a change get the new
values; running ones keep theirs until they restart.`,
		Args: nArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			data := map[string]string{}
			for _, l := range literals {
				k, v, ok := strings.Cut(l, "=")
				if !ok || k == "" {
					return fmt.Errorf("--from-literal %q: want KEY=VALUE", strings.SplitN(l, "=", 2)[0])
				}
				data[k] = v
			}
			for _, f := range files {
				k, path, ok := strings.Cut(f, "=")
				if !ok {
					k, path = filepath.Base(f), f
				}
				b, err := os.ReadFile(path)
				if err != nil {
					return fmt.Errorf("--from-file: %w", err)
				}
				data[k] = string(b)
			}
			sec := api.Secret{Metadata: api.ObjectMeta{Name: args[0], Namespace: namespace}, StringData: data}
			manifests.DefaultsSecret(&sec)
			if err := manifests.ValidateSecret(&sec); err != nil {
				return fmt.Errorf("secret %s: %w", sec.Key(), err)
			}
			p, err := secretToPB(&sec)
			if err != nil {
				return err
			}
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				resp, err := cli.Apply(ctx, &pb.ApplyRequest{Secrets: []*pb.Secret{p}})
				if err != nil {
					return g.rpcErr(err)
				}
				for _, r := range resp.Results {
					fmt.Fprintf(cmd.OutOrStdout(), "secret/%s %s (namespace %s)\n", r.Name, r.Action, r.Namespace)
				}
				return nil
			})
		},
	}
	create.Flags().StringArrayVar(&literals, "from-literal", nil, "KEY=VALUE (repeatable)")
	create.Flags().StringArrayVar(&files, "from-file", nil, "[KEY=]PATH: the file's content under KEY (default its base name; repeatable)")
	var all bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List secrets: their keys and the services that use them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ns := namespace
			if all {
				ns = ""
			}
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				resp, err := cli.ListSecrets(ctx, &pb.ListSecretsRequest{Namespace: ns})
				if err != nil {
					return g.rpcErr(err)
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAMESPACE\tNAME\tKEYS\tUSED BY\tUPDATED")
				for _, s := range resp.Secrets {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", s.Metadata.Namespace, s.Metadata.Name, strings.Join(s.Keys, ","),
						dash(strings.Join(s.UsedBy, ",")), s.UpdatedAt.AsTime().Local().Format("2006-01-02 15:04:05"))
				}
				return tw.Flush()
			})
		},
	}
	ls.Flags().BoolVarP(&all, "all-namespaces", "A", false, "every namespace")
	rm := &cobra.Command{
		Use:   "rm NAME",
		Short: "Delete a secret (refused while a service uses it)",
		Args:  nArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				if _, err := cli.DeleteSecret(ctx, &pb.DeleteSecretRequest{Namespace: namespace, Name: args[0]}); err != nil {
					return g.rpcErr(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "secret/%s deleted\n", args[0])
				return nil
			})
		},
	}
	cmd.AddCommand(create, ls, rm)
	return cmd
}
