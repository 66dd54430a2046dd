package main

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/berth-dev/berth/pki"
	"github.com/berth-dev/berth/xds"
)

// benchAuth makes a cluster CA in dir (for the child's gateways) and the
// xDS server's authentication as Berth configures it: a replica
// certificate, client certificates required, an identity check per
// stream (here a map lookup under a lock, like the AuthCache's).
func benchAuth(dir string) (xds.Auth, error) {
	ca, keyPEM, err := pki.NewCA("xdsbench", time.Now())
	if err != nil {
		return xds.Auth{}, err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca.CertPEM, 0o600); err != nil {
		return xds.Auth{}, err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.key"), keyPEM, 0o600); err != nil {
		return xds.Auth{}, err
	}
	certPEM, kPEM, err := ca.Issue(pki.Identity{Role: pki.RoleReplica, Name: "bench"}, time.Hour, time.Now(), "127.0.0.1")
	if err != nil {
		return xds.Auth{}, err
	}
	kp, err := pki.NewKeyPair(certPEM, kPEM)
	if err != nil {
		return xds.Auth{}, err
	}
	var mu sync.RWMutex
	revoked := map[string]bool{}
	return xds.Auth{
		TLS: pki.ServerTLS(kp, ca.Pool(), true),
		Check: func(id pki.Identity) error {
			mu.RLock()
			defer mu.RUnlock()
			_ = revoked[id.String()]
			return nil
		},
	}, nil
}

// gatewayCerts issues each simulated gateway its certificate.
type gatewayCerts struct{ ca *pki.CA }

func loadGatewayCerts(dir string) (*gatewayCerts, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, "ca.key"))
	if err != nil {
		return nil, err
	}
	ca, err := pki.ParseCA(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return &gatewayCerts{ca: ca}, nil
}

func (g *gatewayCerts) tls(nodeID string) (*tls.Config, error) {
	certPEM, keyPEM, err := g.ca.Issue(pki.Identity{Role: pki.RoleGateway, Name: nodeID, Generation: 1}, time.Hour, time.Now())
	if err != nil {
		return nil, err
	}
	kp, err := pki.NewKeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	return pki.ClientTLS(kp, g.ca.Pool()), nil
}
