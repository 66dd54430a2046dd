package pki

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/berth-dev/berth/internal/atomicfile"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// KeyPair is a certificate and its key that can be replaced while
// connections use it: TLS configurations made from it read the current
// pair at each handshake, so a renewed certificate needs no restart.
type KeyPair struct {
	mu   sync.RWMutex
	cert *tls.Certificate
}

// NewKeyPair parses a PEM certificate and key.
func NewKeyPair(certPEM, keyPEM []byte) (*KeyPair, error) {
	kp := &KeyPair{}
	return kp, kp.Set(certPEM, keyPEM)
}

// Set replaces the pair.
func (kp *KeyPair) Set(certPEM, keyPEM []byte) error {
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("pki: key pair: %w", err)
	}
	kp.mu.Lock()
	kp.cert = &c
	kp.mu.Unlock()
	return nil
}

// Certificate is the current pair.
func (kp *KeyPair) Certificate() *tls.Certificate {
	kp.mu.RLock()
	defer kp.mu.RUnlock()
	return kp.cert
}

// Leaf is the current certificate.
func (kp *KeyPair) Leaf() *x509.Certificate { return kp.Certificate().Leaf }

// ServerTLS is the configuration of a control plane listener: it presents
// kp (a replica certificate) and verifies client certificates against
// the CA pool. requireClientCert refuses clients without one (xDS); the
// API accepts them without, for users who present a token instead.
func ServerTLS(kp *KeyPair, pool *x509.CertPool, requireClientCert bool) *tls.Config {
	auth := tls.VerifyClientCertIfGiven
	if requireClientCert {
		auth = tls.RequireAndVerifyClientCert
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		ClientAuth:     auth,
		ClientCAs:      pool,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return kp.Certificate(), nil },
		NextProtos:     []string{"h2"},
	}
}

// ClientTLS is the configuration of a client of the control plane: it
// verifies the server's certificate against the pool for ServerName and
// presents kp when it is not nil.
func ClientTLS(kp *KeyPair, pool *x509.CertPool) *tls.Config {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		RootCAs:            pool,
		ServerName:         ServerName,
		ClientSessionCache: tls.NewLRUClientSessionCache(32),
	}
	if kp != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return kp.Certificate(), nil }
	}
	return cfg
}

// PinnedTLS is the configuration a joining part dials with before it has
// the CA: the server's chain must contain a CA certificate whose pin is
// pin, and the server's certificate must verify against that CA for
// ServerName. found receives the CA.
func PinnedTLS(pin string, found func(*x509.Certificate)) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified below against the pinned CA instead of system roots
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			var certs []*x509.Certificate
			for _, r := range raw {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return fmt.Errorf("pki: server certificate: %w", err)
				}
				certs = append(certs, c)
			}
			if len(certs) == 0 {
				return errors.New("pki: the server presented no certificate")
			}
			for _, c := range certs[1:] {
				if !c.IsCA || PinOf(c) != pin {
					continue
				}
				pool := x509.NewCertPool()
				pool.AddCert(c)
				if _, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, DNSName: ServerName}); err != nil {
					return fmt.Errorf("pki: server certificate does not verify against the pinned CA: %w", err)
				}
				if found != nil {
					found(c)
				}
				return nil
			}
			return fmt.Errorf("pki: the server's CA does not match the pinned hash %s: refusing to join (check --ca-hash against the hash `berth token create` printed on the server)", pin)
		},
	}
}

// WithChain returns kp's certificate PEM followed by the CA's, the chain
// a replica presents so that joining parts can check the pin.
func WithChain(certPEM, caPEM []byte) []byte {
	return append(append([]byte{}, certPEM...), caPEM...)
}

// PeerIdentity is the identity of the verified client certificate of a
// gRPC call, if it presented one.
func PeerIdentity(ctx context.Context) (Identity, *x509.Certificate, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, nil, false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return Identity{}, nil, false
	}
	leaf := info.State.VerifiedChains[0][0]
	id, err := IdentityOf(leaf)
	if err != nil {
		return Identity{}, nil, false
	}
	return id, leaf, true
}

// Files is where a part keeps its credentials: ca.crt, tls.crt and
// tls.key in one directory (mode 0700, the key 0600).
type Files struct{ Dir string }

// Paths of the three files.
func (f Files) CA() string   { return filepath.Join(f.Dir, "ca.crt") }
func (f Files) Cert() string { return filepath.Join(f.Dir, "tls.crt") }
func (f Files) Key() string  { return filepath.Join(f.Dir, "tls.key") }

// Load reads the three files; ok is false when they do not all exist.
func (f Files) Load() (caPEM, certPEM, keyPEM []byte, ok bool, err error) {
	caPEM, err1 := os.ReadFile(f.CA())
	certPEM, err2 := os.ReadFile(f.Cert())
	keyPEM, err3 := os.ReadFile(f.Key())
	if errors.Is(err1, os.ErrNotExist) || errors.Is(err2, os.ErrNotExist) || errors.Is(err3, os.ErrNotExist) {
		return nil, nil, nil, false, nil
	}
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, nil, nil, false, fmt.Errorf("pki: credentials in %s: %w", f.Dir, err)
	}
	return caPEM, certPEM, keyPEM, true, nil
}

// Save writes the three files, each atomically.
func (f Files) Save(caPEM, certPEM, keyPEM []byte) error {
	if err := os.MkdirAll(f.Dir, 0o700); err != nil {
		return fmt.Errorf("pki: credentials dir: %w", err)
	}
	for _, w := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{f.CA(), caPEM, 0o644}, {f.Key(), keyPEM, 0o600}, {f.Cert(), certPEM, 0o644}} {
		if err := atomicfile.Write(w.path, w.data, w.mode); err != nil {
			return err
		}
	}
	return nil
}

// RenewFunc asks the CA for a new certificate over csr for the same
// identity.
type RenewFunc func(ctx context.Context, csrDER []byte) (certPEM []byte, err error)

// RenewAt is when a certificate is renewed: two thirds into its life,
// with up to 5% jitter so that a fleet does not renew at once.
func RenewAt(cert *x509.Certificate) time.Time {
	life := cert.NotAfter.Sub(cert.NotBefore)
	at := cert.NotBefore.Add(life * 2 / 3)
	return at.Add(-time.Duration(rand.Int64N(int64(life/20) + 1)))
}

// KeepRenewed renews kp before it expires until ctx ends: a new key, a
// request signed with it, the certificate the CA returns swapped in
// (save, if not nil, persists it first). Failures are retried every few
// seconds, never later than the expiry.
func KeepRenewed(ctx context.Context, kp *KeyPair, renew RenewFunc, save func(certPEM, keyPEM []byte) error, logger *slog.Logger) error {
	for {
		leaf := kp.Leaf()
		wait := time.Until(RenewAt(leaf))
		if wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		key, keyPEM, err := NewKey()
		if err != nil {
			return err
		}
		csr, err := NewCSR(key, leaf.Subject.CommonName)
		if err != nil {
			return err
		}
		certPEM, err := renew(ctx, csr)
		if err == nil && save != nil {
			err = save(certPEM, keyPEM)
		}
		if err == nil {
			err = kp.Set(certPEM, keyPEM)
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			logger.Warn("certificate renewal failed; retrying", "identity", leaf.Subject.CommonName, "expires", leaf.NotAfter, "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(min(5*time.Second, max(time.Until(leaf.NotAfter)/10, 100*time.Millisecond))):
			}
			continue
		}
		logger.Info("certificate renewed", "identity", leaf.Subject.CommonName, "expires", kp.Leaf().NotAfter)
	}
}

// PEMCert encodes a DER certificate.
func PEMCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// PEMKey encodes a private key (PKCS #8).
func PEMKey(key crypto.PrivateKey) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// verifyPart checks a peer's chain against pool and that its certificate
// names role (and name, when not empty). Node certificates are made for
// client authentication, so the chain is checked for any key usage here
// and the identity decides.
func verifyPart(raw [][]byte, pool *x509.CertPool, role Role, name string) error {
	if len(raw) == 0 {
		return errors.New("pki: the peer presented no certificate")
	}
	leaf, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return fmt.Errorf("pki: peer certificate: %w", err)
	}
	inter := x509.NewCertPool()
	for _, r := range raw[1:] {
		if c, err := x509.ParseCertificate(r); err == nil {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("pki: peer certificate does not verify against the cluster CA: %w", err)
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return err
	}
	if id.Role != role || (name != "" && id.Name != name) {
		want := string(role)
		if name != "" {
			want += "/" + name
		}
		return fmt.Errorf("pki: peer is %s, want %s", id, want)
	}
	return nil
}

// ShellServerTLS is the configuration of a node agent's NodeShell
// listener: it presents the node's certificate and accepts control plane
// replicas only.
func ShellServerTLS(kp *KeyPair, pool *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		ClientAuth:     tls.RequireAnyClientCert, // verified below: replicas only
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return kp.Certificate(), nil },
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyPart(raw, pool, RoleReplica, "")
		},
		NextProtos: []string{"h2"},
	}
}

// ShellClientTLS is how a replica dials node's NodeShell: it presents
// the replica's certificate and accepts only that node's certificate.
func ShellClientTLS(kp *KeyPair, pool *x509.CertPool, node string) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		InsecureSkipVerify:   true, // verified below: the CA, role node, the node's name
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return kp.Certificate(), nil },
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyPart(raw, pool, RoleNode, node)
		},
		NextProtos: []string{"h2"},
	}
}
