package main

import (
	"fmt"
	"os"

	"github.com/berth-dev/berth/controlplane"
	"github.com/spf13/cobra"
)

// newEtcdCmd runs a standalone single-member etcd on a Unix socket, for
// several `berth server` replicas on one machine (tests, trials). A real
// deployment points --etcd-endpoints at a 3- or 5-member etcd cluster.
func newEtcdCmd(g *globalOptions) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "etcd",
		Short: "Run a standalone single-member etcd for several berth server replicas on one machine",
		RunE: func(cmd *cobra.Command, args []string) error {
			e, err := controlplane.StartEmbeddedEtcd(dir, controlplane.EtcdTuning{}, g.logger())
			if err != nil {
				return err
			}
			defer e.Close()
			fmt.Fprintf(os.Stdout, "berth etcd: endpoint %s\n", e.Endpoint())
			select {
			case <-cmd.Context().Done():
				return nil
			case err := <-e.Err():
				return err
			}
		},
	}
	cmd.Flags().StringVar(&dir, "data-dir", "/var/lib/berth/etcd", "etcd data directory (the client socket is created in it)")
	return cmd
}
