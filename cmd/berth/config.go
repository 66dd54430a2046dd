package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/berth-dev/berth/api/pb"
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
// uses: flags and environment first, then the configuration file's
// context (--context, else its current one).
func (g *globalOptions) clientConfig() (server string, caPEM []byte, token string, err error) {
	cc, err := g.activeContext()
	if err != nil {
		return "", nil, "", err
	}
	server, token = g.server, g.token
	if cc != nil {
		if !g.serverSet && cc.Server != "" {
			server = cc.Server
		}
		if token == "" {
			token = cc.Token
		}
		caPEM = []byte(cc.CA)
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

// activeContext reads the configuration file (--config, else the first of
// defaultConfigs that exists) and returns the context to use; nil when
// there is no file.
func (g *globalOptions) activeContext() (*cliContext, error) {
	path := g.config
	if path == "" {
		for _, p := range defaultConfigs() {
			if _, err := os.Stat(p); err == nil {
				path = p
				break
			}
		}
	}
	if path == "" {
		if g.context != "" {
			return nil, fmt.Errorf("--context %s: no configuration file", g.context)
		}
		return nil, nil
	}
	c, err := readCLIConfig(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cc, err := c.context(g.context)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cc, nil
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
