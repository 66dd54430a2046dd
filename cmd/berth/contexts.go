package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"text/tabwriter"

	"github.com/berth-dev/berth/controlplane"
	"github.com/berth-dev/berth/internal/atomicfile"
	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// cliConfig is the CLI's configuration file: one cluster's connection
// (the form `berth dev` and `berth server` write to admin.conf), or a list
// of contexts, each a cluster, its credentials and a default namespace,
// with the one in use, like a kubeconfig.
type cliConfig struct {
	Server string `json:"server,omitempty"`
	CAHash string `json:"caHash,omitempty"`
	CA     string `json:"ca,omitempty"`
	Token  string `json:"token,omitempty"`

	CurrentContext string       `json:"currentContext,omitempty"`
	Contexts       []cliContext `json:"contexts,omitempty"`
}

type cliContext struct {
	Name      string `json:"name"`
	Server    string `json:"server"`
	CAHash    string `json:"caHash,omitempty"`
	CA        string `json:"ca"`
	Token     string `json:"token,omitempty"`
	Namespace string `json:"namespace,omitempty"`
}

func readCLIConfig(path string) (*cliConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c cliConfig
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

func writeCLIConfig(path string, c *cliConfig) error {
	b, err := yaml.Marshal(c)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	// Tokens are credentials: the owner's only.
	return atomicfile.Write(path, b, 0o600)
}

// context returns the context to use: name, else the current one, else
// the file's single cluster.
func (c *cliConfig) context(name string) (*cliContext, error) {
	if name == "" {
		name = c.CurrentContext
	}
	if name == "" && len(c.Contexts) == 0 {
		return &cliContext{Name: "default", Server: c.Server, CAHash: c.CAHash, CA: c.CA, Token: c.Token}, nil
	}
	if name == "" {
		return nil, errors.New("no current context: berth config use-context NAME")
	}
	for i := range c.Contexts {
		if c.Contexts[i].Name == name {
			return &c.Contexts[i], nil
		}
	}
	var names []string
	for _, x := range c.Contexts {
		names = append(names, x.Name)
	}
	return nil, fmt.Errorf("no context %q (contexts: %v)", name, names)
}

// userConfigPath is the file the config commands edit.
func (g *globalOptions) userConfigPath() (string, error) {
	if g.config != "" {
		return g.config, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(home, ".config", "berth", "config"), nil
}

func newConfigCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Contexts: the clusters the CLI talks to, their credentials and default namespaces"}
	load := func() (string, *cliConfig, error) {
		path, err := g.userConfigPath()
		if err != nil {
			return "", nil, err
		}
		c, err := readCLIConfig(path)
		if errors.Is(err, os.ErrNotExist) {
			c, err = &cliConfig{}, nil
		}
		return path, c, err
	}
	list := &cobra.Command{
		Use:   "get-contexts",
		Short: "List the contexts (* marks the current one)",
		Args:  exactArgs(0, "config get-contexts"),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, c, err := load()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "CURRENT\tNAME\tSERVER\tNAMESPACE")
			for _, x := range c.Contexts {
				cur := ""
				if x.Name == c.CurrentContext {
					cur = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", cur, x.Name, x.Server, dash(x.Namespace))
			}
			return tw.Flush()
		},
	}
	use := &cobra.Command{
		Use:   "use-context NAME",
		Short: "Make NAME the context commands use",
		Args:  exactArgs(1, "config use-context NAME"),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			_, c, _ := load()
			var out []string
			for _, x := range c.Contexts {
				out = append(out, x.Name)
			}
			return out, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			path, c, err := load()
			if err != nil {
				return err
			}
			if _, err := c.context(args[0]); err != nil {
				return err
			}
			c.CurrentContext = args[0]
			if err := writeCLIConfig(path, c); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "using context %q\n", args[0])
			return nil
		},
	}
	var from, server, namespace, token, caFile string
	set := &cobra.Command{
		Use:   "set-context NAME [--from ADMIN.CONF] [--server ADDR] [--namespace NS] [--token T] [--ca-file CA.PEM]",
		Short: "Create or change a context (--from takes the server, CA and token of a file berth dev or berth server wrote)",
		Args:  exactArgs(1, "config set-context NAME [flags]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, c, err := load()
			if err != nil {
				return err
			}
			i := slices.IndexFunc(c.Contexts, func(x cliContext) bool { return x.Name == args[0] })
			if i < 0 {
				c.Contexts = append(c.Contexts, cliContext{Name: args[0]})
				i = len(c.Contexts) - 1
			}
			x := &c.Contexts[i]
			if from != "" {
				a, err := controlplane.ReadAdminConfig(from)
				if err != nil {
					return err
				}
				x.Server, x.CA, x.CAHash, x.Token = a.Server, a.CA, a.CAHash, a.Token
			}
			if caFile != "" {
				b, err := os.ReadFile(caFile)
				if err != nil {
					return err
				}
				x.CA = string(b)
			}
			if cmd.Flags().Changed("server") {
				x.Server = server
			}
			if cmd.Flags().Changed("namespace") {
				x.Namespace = namespace
			}
			if cmd.Flags().Changed("token") {
				x.Token = token
			}
			if x.Server == "" || x.CA == "" {
				return errors.New("set-context: a context needs a server and the cluster CA (--from ADMIN.CONF, or --server and --ca-file)")
			}
			if c.CurrentContext == "" {
				c.CurrentContext = x.Name
			}
			if err := writeCLIConfig(path, c); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "context %q set in %s\n", x.Name, path)
			return nil
		},
	}
	set.Flags().StringVar(&from, "from", "", "an admin.conf to take the server, CA and token from")
	set.Flags().StringVar(&server, "server", "", "API address")
	set.Flags().StringVarP(&namespace, "namespace", "n", "", "default namespace of commands in this context")
	set.Flags().StringVar(&token, "token", "", "API token")
	set.Flags().StringVar(&caFile, "ca-file", "", "the cluster CA certificate (PEM)")
	current := &cobra.Command{
		Use:   "current-context",
		Short: "Print the current context's name",
		Args:  exactArgs(0, "config current-context"),
		RunE: func(cmd *cobra.Command, args []string) error {
			_, c, err := load()
			if err != nil {
				return err
			}
			if c.CurrentContext == "" {
				return errors.New("no current context")
			}
			fmt.Fprintln(cmd.OutOrStdout(), c.CurrentContext)
			return nil
		},
	}
	del := &cobra.Command{
		Use:   "delete-context NAME",
		Short: "Remove a context",
		Args:  exactArgs(1, "config delete-context NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, c, err := load()
			if err != nil {
				return err
			}
			n := len(c.Contexts)
			c.Contexts = slices.DeleteFunc(c.Contexts, func(x cliContext) bool { return x.Name == args[0] })
			if len(c.Contexts) == n {
				return fmt.Errorf("no context %q", args[0])
			}
			if c.CurrentContext == args[0] {
				c.CurrentContext = ""
			}
			return writeCLIConfig(path, c)
		},
	}
	cmd.AddCommand(list, use, set, current, del)
	return cmd
}
