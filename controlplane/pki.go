package controlplane

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/berth-dev/berth/controlplane/store"
	"github.com/berth-dev/berth/internal/atomicfile"
	"github.com/berth-dev/berth/pki"
	"sigs.k8s.io/yaml"
)

// setUpPKI finds the cluster CA (flags, then DataDir/pki, then etcd, else
// a new one, stored in both), and issues this replica's certificate.
func (s *Server) setUpPKI(ctx context.Context, sealer store.KeySealer) error {
	cfg := s.cfg
	if cfg.CertTTL <= 0 {
		cfg.CertTTL = DefaultConfig().CertTTL
		s.cfg.CertTTL = cfg.CertTTL
	}
	dir := filepath.Join(cfg.DataDir, "pki")
	certFile, keyFile := cfg.CACertFile, cfg.CAKeyFile
	if (certFile == "") != (keyFile == "") {
		return errors.New("controlplane: --ca-cert and --ca-key go together")
	}
	fromFlags := certFile != ""
	if !fromFlags {
		certFile, keyFile = filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	}
	var local []byte
	var localKey []byte
	if c, err := os.ReadFile(certFile); err == nil {
		k, err := os.ReadFile(keyFile)
		if err != nil {
			return fmt.Errorf("controlplane: CA key %s: %w", keyFile, err)
		}
		local, localKey = c, k
	} else if fromFlags {
		return fmt.Errorf("controlplane: CA certificate %s: %w", certFile, err)
	}
	created := false
	certPEM, keyPEM, err := s.store.EnsureCA(ctx, sealer, func() ([]byte, []byte, error) {
		if local != nil {
			return local, localKey, nil
		}
		created = true
		ca, key, err := pki.NewCA(s.replicaName(), time.Now())
		if err != nil {
			return nil, nil, err
		}
		return ca.CertPEM, key, nil
	})
	if err != nil {
		return err
	}
	if local != nil && !pki.SameCA(local, certPEM) {
		return fmt.Errorf("controlplane: the CA in %s is not the cluster's CA stored in etcd: this data dir belongs to another cluster", certFile)
	}
	s.ca, err = pki.ParseCA(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("controlplane: cluster CA: %w", err)
	}
	if local == nil && !fromFlags {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("controlplane: %w", err)
		}
		if err := atomicfile.Write(keyFile, keyPEM, 0o600); err != nil {
			return fmt.Errorf("controlplane: CA key: %w", err)
		}
		if err := atomicfile.Write(certFile, certPEM, 0o644); err != nil {
			return fmt.Errorf("controlplane: CA certificate: %w", err)
		}
	}
	if created {
		s.logger.Info("created the cluster CA", "dir", dir, "ca-hash", s.ca.Pin())
	}
	s.replicaCert, err = s.issueReplicaCert()
	return err
}

func (s *Server) issueReplicaCert() (*pki.KeyPair, error) {
	var hosts []string
	for _, a := range []string{s.cfg.APIAddr, s.cfg.AdvertiseAddr} {
		if h, _, err := net.SplitHostPort(a); err == nil && h != "" {
			hosts = append(hosts, h)
		}
	}
	hosts = append(hosts, "127.0.0.1", "::1", "localhost")
	certPEM, keyPEM, err := s.ca.Issue(pki.Identity{Role: pki.RoleReplica, Name: s.replicaName()}, s.cfg.CertTTL, time.Now(), hosts...)
	if err != nil {
		return nil, err
	}
	return pki.NewKeyPair(pki.WithChain(certPEM, s.ca.CertPEM), keyPEM)
}

// renewReplicaCert reissues this replica's certificate two thirds into
// its life; connections pick up the new one at their next handshake.
func (s *Server) renewReplicaCert(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Until(pki.RenewAt(s.replicaCert.Leaf()))):
		}
		kp, err := s.issueReplicaCert()
		if err != nil {
			s.logger.Warn("replica certificate renewal failed", "err", err)
			continue
		}
		s.replicaCert.Set(pemPair(kp))
		if s.peering != nil {
			if err := s.writePeerCert(s.peerCA, filepath.Join(s.cfg.DataDir, "etcd"), s.peering); err != nil {
				s.logger.Warn("etcd peer certificate renewal failed", "err", err)
			}
		}
	}
}

func pemPair(kp *pki.KeyPair) (certPEM, keyPEM []byte) {
	c := kp.Certificate()
	for _, der := range c.Certificate {
		certPEM = append(certPEM, pki.PEMCert(der)...)
	}
	return certPEM, pki.PEMKey(c.PrivateKey)
}

// CA is the cluster CA.
func (s *Server) CA() *pki.CA { return s.ca }

// ReplicaCert is this replica's certificate (server and client).
func (s *Server) ReplicaCert() *pki.KeyPair { return s.replicaCert }

// ServerTLS is the TLS configuration of a listener of this replica:
// requireClientCert for xDS (gateways only), optional on the API.
func (s *Server) ServerTLS(requireClientCert bool) *tls.Config {
	return pki.ServerTLS(s.replicaCert, s.ca.Pool(), requireClientCert)
}

// Auth is the tokens and identities cache (revocations).
func (s *Server) Auth() *store.AuthCache { return s.auth }

// IssuePart gives a part that runs in this process (`berth dev`'s agent
// and gateway) a certificate without a join token: the process holds the
// CA already. The identity is recorded as if it had joined.
func (s *Server) IssuePart(ctx context.Context, role pki.Role, name string) (certPEM, keyPEM []byte, err error) {
	rec, err := s.store.EnsureIdentity(ctx, string(role), name)
	if err != nil {
		return nil, nil, err
	}
	if rec.Revoked {
		return nil, nil, fmt.Errorf("controlplane: %s %s was revoked; remove it from --data-dir's cluster or choose another name", role, name)
	}
	return s.ca.Issue(pki.Identity{Role: role, Name: name, Generation: rec.Generation}, s.cfg.CertTTL, time.Now())
}

// AdminConfig is the CLI configuration file the server writes for the
// first admin (and that `berth --config` reads).
type AdminConfig struct {
	// Server is the API address (or several, comma-separated).
	Server string `json:"server"`
	// CAHash pins the cluster CA; CA is its certificate (PEM).
	CAHash string `json:"caHash"`
	CA     string `json:"ca"`
	// Token is an API token.
	Token string `json:"token"`
}

// ReadAdminConfig reads a CLI configuration file.
func ReadAdminConfig(path string) (*AdminConfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var c AdminConfig
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

// writeAdminConfig makes sure an admin token exists for the file at
// cfg.AdminConfig and writes the file with this replica's address: the
// token is kept across restarts while etcd still knows it.
func (s *Server) writeAdminConfig(ctx context.Context) (string, error) {
	path := s.cfg.AdminConfig
	if path == "-" {
		return "", nil
	}
	if path == "" {
		path = filepath.Join(s.cfg.DataDir, "admin.conf")
	}
	token := ""
	if old, err := ReadAdminConfig(path); err == nil && pki.SameCA([]byte(old.CA), s.ca.CertPEM) {
		if id, secret, ok := store.SplitToken(old.Token); ok {
			resp, err := s.cli.Get(ctx, store.TokensPrefix+id)
			if err != nil {
				return "", fmt.Errorf("controlplane: admin token: %w", err)
			}
			if len(resp.Kvs) > 0 {
				var t store.Token
				if yaml.Unmarshal(resp.Kvs[0].Value, &t) == nil && store.MatchToken(t, secret) && t.Role == string(pki.RoleAdmin) && !t.Expired(time.Now()) {
					token = old.Token
				}
			}
		}
	}
	if token == "" {
		id, secret, hash, err := store.NewTokenSecret()
		if err != nil {
			return "", err
		}
		t := store.Token{ID: id, Role: string(pki.RoleAdmin), Description: "first admin, " + path, CreatedAt: time.Now().UTC(), SecretHash: hash}
		if err := s.store.CreateToken(ctx, t); err != nil {
			return "", err
		}
		token = secret
		s.logger.Info("created an admin token for the CLI", "file", path, "id", id)
	}
	addr := s.AdvertiseAddr()
	if h, p, err := net.SplitHostPort(addr); err == nil && (h == "" || h == "0.0.0.0" || h == "::") {
		addr = net.JoinHostPort("127.0.0.1", p)
	}
	b, err := yaml.Marshal(AdminConfig{Server: addr, CAHash: s.ca.Pin(), CA: string(s.ca.CertPEM), Token: token})
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("controlplane: admin config: %w", err)
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return "", fmt.Errorf("controlplane: admin config: %w", err)
	}
	return path, nil
}
