// Command berth is Berth's one binary: the roles (server, agent, gateway,
// dev) and the CLI. This package is wiring only: flags become Config
// values, components are built with New and run with Run.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// exitError carries an exit code through cobra.
type exitError struct {
	code int
	err  error
	// quiet: the exit code says it all (a command run by exec).
	quiet bool
}

func (e *exitError) Error() string { return e.err.Error() }

func main() {
	root := newRoot()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := root.ExecuteContext(ctx)
	stop()
	if err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			if !ee.quiet {
				fmt.Fprintln(os.Stderr, "error:", err)
			}
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

type globalOptions struct {
	server    string
	serverSet bool
	config    string
	token     string
	caFile    string
	logLevel  string
	context   string
}

func newRoot() *cobra.Command {
	g := &globalOptions{}
	root := &cobra.Command{
		Use:           "berth",
		Short:         "Berth runs containers, finds them by name and routes traffic to them",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	defServer := os.Getenv("BERTH_ADDR")
	if defServer == "" {
		defServer = "127.0.0.1:7400"
	}
	root.PersistentFlags().StringVar(&g.server, "server", defServer, "control plane API address, or several replicas' addresses separated by commas (env BERTH_ADDR)")
	root.PersistentFlags().StringVar(&g.config, "config", os.Getenv("BERTH_CONFIG"), "CLI configuration: server, cluster CA and API token (env BERTH_CONFIG; default ~/.config/berth/config, else the admin.conf of /var/lib/berth/dev or /var/lib/berth/server)")
	root.PersistentFlags().StringVar(&g.token, "token", os.Getenv("BERTH_TOKEN"), "API token (env BERTH_TOKEN; default: the configuration's)")
	root.PersistentFlags().StringVar(&g.caFile, "ca-file", "", "cluster CA certificate to check the server against (default: the configuration's)")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.context, "context", os.Getenv("BERTH_CONTEXT"), "the configuration's context to use (env BERTH_CONTEXT; default its current one)")
	root.PersistentPreRun = func(cmd *cobra.Command, args []string) {
		g.serverSet = cmd.Flags().Changed("server") || os.Getenv("BERTH_ADDR") != ""
		// A context's namespace is the default of -n.
		if f := cmd.Flags().Lookup("namespace"); f != nil && !f.Changed && cmd.Parent() != nil && cmd.Parent().Name() != "config" {
			if cc, err := g.activeContext(); err == nil && cc != nil && cc.Namespace != "" {
				f.Value.Set(cc.Namespace)
			}
		}
	}
	root.AddCommand(
		newDevCmd(g), newServerCmd(g), newAgentCmd(g), newGatewayCmd(g),
		newApplyCmd(g), newGetCmd(g), newDescribeCmd(g), newDeleteCmd(g), newImageCmd(g), newEventsCmd(g),
		newLogsCmd(g), newExecCmd(g), newPortForwardCmd(g), newScaleCmd(g), newVersionCmd(g), newExplainCmd(), newConfigCmd(g),
		newTokenCmd(g), newNodeCmd(g), newEtcdCmd(g), newVolumeCmd(g), newSecretCmd(g), newRolloutCmd(g),
		newControlPlaneCmd(g), newSnapshotCmd(g),
	)
	return root
}

func (g *globalOptions) logger() *slog.Logger {
	var level slog.Level
	switch strings.ToLower(g.logLevel) {
	case "debug":
		level = slog.LevelDebug
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		level = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}
