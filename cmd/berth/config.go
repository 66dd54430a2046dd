package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane"
	"github.com/berth-dev/berth/pki"
	"google.golang.org/grpc"
)

// defaultConfigs are where the CLI looks for its configuration when
// neither --config nor BERTH_CONFIG names one: the user's own, then the
// files `berth dev` and `berth server` write for the first admin (root
// only, mode 0600).
func defaultConfigs() []string {
	var out []string
	if home, err := os.UserHomeDir(); err == nil {
		out = append(out, filepath.Join(home, ".config", "berth", "config"))
	}
	return append(out, "/var/lib/berth/dev/admin.conf", "/var/lib/berth/server/admin.conf")
}

// clientConfig resolves the server address, the CA and the token the CLI
// uses: flags and environment first, then the configuration file.
func (g *globalOptions) clientConfig() (server string, caPEM []byte, token string, err error) {
	path := g.config
	if path == "" {
		for _, p := range defaultConfigs() {
			if _, err := os.Stat(p); err == nil {
				path = p
				break
			}
		}
	}
	var cfg *controlplane.AdminConfig
	if path != "" {
		cfg, err = controlplane.ReadAdminConfig(path)
		if err != nil {
			return "", nil, "", fmt.Errorf("config: %w", err)
		}
	}
	server, token = g.server, g.token
	if cfg != nil {
		if !g.serverSet && cfg.Server != "" {
			server = cfg.Server
		}
		if token == "" {
			token = cfg.Token
		}
		caPEM = []byte(cfg.CA)
	}
	if g.caFile != "" {
		if caPEM, err = os.ReadFile(g.caFile); err != nil {
			return "", nil, "", fmt.Errorf("--ca-file: %w", err)
		}
	}
	if len(caPEM) == 0 {
		return "", nil, "", errors.New("no cluster CA to check the server against: the CLI reads --config (env BERTH_CONFIG), or ~/.config/berth/config, or the admin.conf that `berth dev`/`berth server` write in their --data-dir; or pass --ca-file and --token")
	}
	return server, caPEM, token, nil
}

// dial connects to the API with the CLI's credentials.
func (g *globalOptions) dial() (*grpc.ClientConn, error) {
	server, caPEM, token, err := g.clientConfig()
	if err != nil {
		return nil, err
	}
	g.server = server
	pool, err := pki.PoolFromPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	conn, err := pb.Dial(server, pki.ClientTLS(nil, pool), pb.WithToken(token)...)
	if err != nil {
		return nil, fmt.Errorf("server address %q: %w", server, err)
	}
	return conn, nil
}
