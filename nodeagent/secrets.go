package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/manifests"
	"github.com/berth-dev/berth/nodeagent/runtime"
)

// secretsDir is where an instance's secret files live on this node: a
// tmpfs of its own (never on disk), mode 0700, bound read-only into the
// container at each mountPath.
func (a *Agent) secretsDir(id string) string {
	return filepath.Join(a.cfg.Runtime.StateDir, "secrets", id)
}

// addSecrets fetches the values of the secrets in's template names (the
// control plane gives them only to the node the instance is assigned to)
// and adds them to spec as files and environment variables.
func (a *Agent) addSecrets(ctx context.Context, in api.Instance, spec *runtime.ContainerSpec) error {
	if len(in.Template.Secrets) == 0 {
		return nil
	}
	resp, err := a.client.InstanceSecrets(ctx, &pb.InstanceSecretsRequest{Node: a.cfg.Name, Instance: in.ID})
	if err != nil {
		return fmt.Errorf("secrets: %w", err)
	}
	dir := a.secretsDir(in.ID)
	files := false
	for _, m := range in.Template.Secrets {
		files = files || m.MountPath != ""
	}
	if files {
		if err := mountSecretsTmpfs(dir); err != nil {
			return err
		}
	}
	for _, m := range in.Template.Secrets {
		data := resp.GetSecrets()[m.Name].GetData()
		if data == nil {
			return fmt.Errorf("secrets: the control plane sent no secret %q", m.Name)
		}
		for env, key := range m.Env {
			v, ok := data[key]
			if !ok {
				return fmt.Errorf("secrets: secret %q has no key %q (for %s)", m.Name, key, env)
			}
			if spec.Env == nil {
				spec.Env = map[string]string{}
			}
			spec.Env[env] = string(v)
		}
		if m.MountPath == "" {
			continue
		}
		sub := filepath.Join(dir, m.Name)
		if err := os.RemoveAll(sub); err != nil {
			return fmt.Errorf("secrets: %w", err)
		}
		if err := os.Mkdir(sub, 0o755); err != nil {
			return fmt.Errorf("secrets: %w", err)
		}
		for key, v := range data {
			if !manifests.ValidSecretKey(key) {
				return fmt.Errorf("secrets: secret %q: key %q cannot be a file name", m.Name, key)
			}
			if err := os.WriteFile(filepath.Join(sub, key), v, 0o444); err != nil {
				return fmt.Errorf("secrets: %w", err)
			}
		}
		spec.Mounts = append(spec.Mounts, runtime.Mount{Source: sub, Destination: m.MountPath, ReadOnly: true})
	}
	return nil
}

// mountSecretsTmpfs makes dir a small tmpfs (if it is not one already).
func mountSecretsTmpfs(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("secrets: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Type == unix.TMPFS_MAGIC {
		return nil
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=2m,mode=0700"); err != nil {
		return fmt.Errorf("secrets: tmpfs at %s: %w", dir, err)
	}
	return nil
}

// removeSecrets removes an instance's secret files (its tmpfs).
func (a *Agent) removeSecrets(id string) error {
	dir := a.secretsDir(id)
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("secrets: unmount %s: %w", dir, err)
	}
	return os.RemoveAll(dir)
}

// sweepSecrets removes the secret files of instances that have no
// container on this node any more (removed while the agent was down, or
// before a reboot): keep names the containers found at start.
func (a *Agent) sweepSecrets(keep map[string]bool) {
	entries, err := os.ReadDir(filepath.Join(a.cfg.Runtime.StateDir, "secrets"))
	if err != nil {
		return // none yet
	}
	for _, e := range entries {
		if !e.IsDir() || keep[e.Name()] {
			continue
		}
		if err := a.removeSecrets(e.Name()); err != nil {
			a.logger.Warn("could not remove the secret files of a gone instance", "instance", e.Name(), "err", err)
			continue
		}
		a.logger.Info("removed the secret files of an instance that is gone", "instance", e.Name())
	}
}
