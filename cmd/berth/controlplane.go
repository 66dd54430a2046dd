package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
)

// newControlPlaneCmd manages the control plane's own replicas.
func newControlPlaneCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "controlplane", Short: "Manage the control plane's replicas (see them with `berth get servers`)"}
	remove := &cobra.Command{
		Use:   "remove NAME",
		Short: "Remove a retired server: its etcd member leaves the cluster (refused if the rest would lose quorum)",
		Long: `Remove a retired server from the control plane: its etcd member leaves the
cluster, so the quorum counts only the servers that remain. Stop the server
first (or after: it then fails, its member removed). Ask another server than
the one removed (berth --server). To bring the machine back, start it with an
empty --data-dir and --join, as a new server.`,
		Args: nArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				resp, err := cli.RemoveServer(ctx, &pb.RemoveServerRequest{Name: args[0]})
				if err != nil {
					return g.rpcErr(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "server/%s removed: etcd member %x left, %d members remain\n", args[0], resp.EtcdMemberId, resp.MembersLeft)
				return nil
			})
		},
	}
	cmd.AddCommand(remove)
	return cmd
}

// newSnapshotCmd saves etcd's snapshot through the API, and restores one
// into a new data dir.
func newSnapshotCmd(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "snapshot", Short: "Save the cluster's state (an etcd snapshot) to a file, or restore a server from one"}
	save := &cobra.Command{
		Use:   "save FILE",
		Short: "Save an etcd snapshot of the whole cluster state to FILE (admin; it holds every secret, sealed)",
		Args:  nArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.call(cmd, func(ctx context.Context, cli pb.BerthClient) error {
				n, rev, err := saveSnapshot(ctx, cli, args[0])
				if err != nil {
					return g.rpcErr(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "snapshot saved to %s: %s, etcd revision %d\n", args[0], mib(n), rev)
				return nil
			})
		},
	}
	var dataDir, name, peerAddr string
	restore := &cobra.Command{
		Use:   "restore FILE --data-dir DIR",
		Short: "Make a new server data dir hold the cluster state of a snapshot (then start berth server on it)",
		Long: `Restore a control plane from a snapshot (berth snapshot save):

  1. stop every server;
  2. berth snapshot restore FILE --data-dir NEW [--name N --etcd-peer-addr H:P]
     on one machine: NEW becomes a one-member cluster holding the snapshot's
     state, its revision moved ahead so that agents and gateways take what it
     publishes as new;
  3. start berth server there with --data-dir NEW (and the same --name,
     --etcd-peer-addr, CA and secrets key as before);
  4. start the other servers with empty data dirs and --join.

Agents and gateways reconnect on their own; instances the snapshot does not
know are stopped, those it knows are adopted or started again.`,
		Args: nArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dataDir == "" {
				return errors.New("snapshot restore: --data-dir is required (a new directory for the server)")
			}
			if err := checkSnapshot(args[0]); err != nil {
				return err
			}
			if err := controlplane.RestoreEtcdSnapshot(args[0], dataDir, name, peerAddr, zap.NewNop()); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored %s into %s; start `berth server --data-dir %s` there\n", args[0], filepath.Join(dataDir, "etcd"), dataDir)
			return nil
		},
	}
	restore.Flags().StringVar(&dataDir, "data-dir", "", "the new server's --data-dir (must hold no etcd data)")
	restore.Flags().StringVar(&name, "name", "", "the server's --name (with --etcd-peer-addr)")
	restore.Flags().StringVar(&peerAddr, "etcd-peer-addr", "", "the server's --etcd-advertise-peer-addr or --etcd-peer-addr, if it runs as a member of a multi-member etcd")
	cmd.AddCommand(save, restore)
	return cmd
}

// saveSnapshot writes the snapshot streamed by the API to path (through
// a temporary file, renamed once complete and checked).
func saveSnapshot(ctx context.Context, cli pb.BerthClient, path string) (int64, int64, error) {
	stream, err := cli.Snapshot(ctx, &pb.SnapshotRequest{})
	if err != nil {
		return 0, 0, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".part-*")
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(tmp.Name()) // after the rename: nothing
	var n, rev int64
	for {
		c, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			tmp.Close()
			return 0, 0, err
		}
		if n == 0 {
			rev = c.Revision
		}
		w, err := tmp.Write(c.Data)
		n += int64(w)
		if err != nil {
			tmp.Close()
			return 0, 0, err
		}
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return 0, 0, err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return 0, 0, err
	}
	if err := tmp.Close(); err != nil {
		return 0, 0, err
	}
	if err := checkSnapshot(tmp.Name()); err != nil {
		return 0, 0, err
	}
	return n, rev, os.Rename(tmp.Name(), path)
}

// checkSnapshot verifies an etcd snapshot's integrity: the database
// followed by the SHA-256 of it, as etcd streams it. It reads the file
// once, in pieces (a snapshot may be gigabytes).
func checkSnapshot(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if st.Size() < sha256.Size+512 {
		return fmt.Errorf("snapshot %s: %d bytes: too short to be an etcd snapshot", path, st.Size())
	}
	h := sha256.New()
	if _, err := io.CopyN(h, f, st.Size()-sha256.Size); err != nil {
		return fmt.Errorf("snapshot %s: %w", path, err)
	}
	sum := make([]byte, sha256.Size)
	if _, err := io.ReadFull(f, sum); err != nil {
		return fmt.Errorf("snapshot %s: %w", path, err)
	}
	if !bytes.Equal(h.Sum(nil), sum) {
		return fmt.Errorf("snapshot %s: its SHA-256 does not match its content (truncated or damaged)", path)
	}
	return nil
}
