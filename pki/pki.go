// Package pki is Berth's cluster certificate authority and the identities
// its certificates carry.
//
// One CA per cluster signs every part's certificate: control plane
// replicas (server and client), node agents, gateways. A certificate names
// exactly one identity: its Subject Organization is the role ("replica",
// "node", "gateway") and its Common Name the name within the role (the
// node's name, the gateway's xDS node id, the replica's name). Keys are
// ECDSA P-256 and never leave the process that made them: a joining part
// sends a certificate signing request, and the CA takes only the public
// key from it; the identity comes from the join token, not the request.
//
// Every replica certificate carries the DNS name ServerName, which clients
// verify instead of the address they dialed, so a control plane reached
// by any IP address or name is checked the same way.
//
// The package owns keys, certificates, TLS configurations and the CA pin
// (what `berth agent --ca-hash` checks); it makes no authorisation
// decisions (controlplane/authz does) and stores nothing.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"strconv"
	"strings"
	"time"
)

// ServerName is the DNS name in every control plane replica certificate;
// every client verifies the server's certificate against it.
const ServerName = "control-plane.berth"

// Role is the kind of part a certificate or token speaks for.
type Role string

// Roles of parts (certificates) and of users (tokens).
const (
	RoleReplica Role = "replica"
	RoleNode    Role = "node"
	RoleGateway Role = "gateway"

	RoleAdmin    Role = "admin"
	RoleDeployer Role = "deployer"
	RoleViewer   Role = "viewer"
)

// PartRoles are the roles a certificate can carry.
var PartRoles = []Role{RoleReplica, RoleNode, RoleGateway}

// UserRoles are the roles an API token can carry.
var UserRoles = []Role{RoleAdmin, RoleDeployer, RoleViewer}

// ParseRole returns the role named s, or an error listing the valid ones.
func ParseRole(s string, allowed []Role) (Role, error) {
	var names []string
	for _, r := range allowed {
		if string(r) == s {
			return r, nil
		}
		names = append(names, string(r))
	}
	return "", fmt.Errorf("unknown role %q (one of %s)", s, strings.Join(names, ", "))
}

// Identity is who a certificate speaks for.
type Identity struct {
	Role Role
	Name string
	// Serial is the certificate's serial number in hex: what revocation
	// names.
	Serial string
	// NotAfter is when the certificate expires.
	NotAfter time.Time
	// Generation is the identity's generation when the certificate was
	// issued (Subject OrganizationalUnit "generation=N"): removing a node
	// or revoking a gateway starts a new one, and older certificates are
	// refused.
	Generation int64
}

func (id Identity) String() string { return string(id.Role) + "/" + id.Name }

// IdentityOf reads the identity a certificate signed by the cluster CA
// carries. The caller must have verified the chain.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	if len(cert.Subject.Organization) != 1 {
		return Identity{}, errors.New("pki: certificate names no role (one Subject Organization expected)")
	}
	role := Role(cert.Subject.Organization[0])
	ok := false
	for _, r := range PartRoles {
		ok = ok || r == role
	}
	if !ok {
		return Identity{}, fmt.Errorf("pki: certificate role %q is not a part's role", role)
	}
	if cert.Subject.CommonName == "" {
		return Identity{}, errors.New("pki: certificate names no identity (empty Common Name)")
	}
	id := Identity{Role: role, Name: cert.Subject.CommonName, Serial: SerialOf(cert), NotAfter: cert.NotAfter}
	for _, ou := range cert.Subject.OrganizationalUnit {
		if g, ok := strings.CutPrefix(ou, "generation="); ok {
			n, err := strconv.ParseInt(g, 10, 64)
			if err != nil {
				return Identity{}, fmt.Errorf("pki: certificate generation %q: %w", g, err)
			}
			id.Generation = n
		}
	}
	return id, nil
}

// SerialOf is the form revocation records use for a certificate's serial.
func SerialOf(cert *x509.Certificate) string { return hex.EncodeToString(cert.SerialNumber.Bytes()) }

// CA is the cluster certificate authority.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     crypto.Signer
	pool    *x509.CertPool
}

// caLifetime is how long a cluster CA is valid.
const caLifetime = 10 * 365 * 24 * time.Hour

// NewCA makes a new cluster CA; keyPEM is its private key, to be kept.
func NewCA(cluster string, now time.Time) (ca *CA, keyPEM []byte, err error) {
	key, keyPEM, err := NewKey()
	if err != nil {
		return nil, nil, err
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "berth cluster CA " + cluster, Organization: []string{"berth"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: create CA: %w", err)
	}
	ca, err = ParseCA(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM)
	return ca, keyPEM, err
}

// ParseCA loads a CA from its certificate and key (PEM).
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("pki: CA certificate is not a CA (basic constraints)")
	}
	key, err := ParseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, errors.New("pki: CA key does not match the CA certificate")
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{Cert: cert, CertPEM: certPEM, key: key, pool: pool}, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	type eq interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(eq)
	return ok && e.Equal(b)
}

// Pool is a pool holding only the CA.
func (ca *CA) Pool() *x509.CertPool { return ca.pool }

// Pin is the CA's fingerprint as joining parts check it:
// "sha256:" + the hex SHA-256 of its SubjectPublicKeyInfo (the form of
// kubeadm's --discovery-token-ca-cert-hash).
func (ca *CA) Pin() string { return PinOf(ca.Cert) }

// PinOf is the pin of any certificate.
func PinOf(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// Sign issues a certificate for id over the public key of a certificate
// signing request (whose signature is checked; its subject is ignored).
// Replica certificates are also server certificates for ServerName and
// hosts (IP addresses or DNS names).
func (ca *CA) Sign(csrDER []byte, id Identity, ttl time.Duration, now time.Time, hosts ...string) ([]byte, *x509.Certificate, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, nil, fmt.Errorf("pki: certificate request signature: %w", err)
	}
	if _, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok {
		return nil, nil, errors.New("pki: certificate request key must be ECDSA")
	}
	return ca.sign(csr.PublicKey, id, ttl, now, hosts...)
}

func (ca *CA) sign(pub crypto.PublicKey, id Identity, ttl time.Duration, now time.Time, hosts ...string) ([]byte, *x509.Certificate, error) {
	if id.Name == "" || id.Role == "" {
		return nil, nil, errors.New("pki: sign: identity needs a role and a name")
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	notAfter := now.Add(ttl)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: id.Name, Organization: []string{string(id.Role)}, OrganizationalUnit: []string{"generation=" + strconv.FormatInt(id.Generation, 10)}},
		// Back-dated for clock skew between nodes, by at most a tenth of
		// the lifetime so that RenewAt (two thirds of NotBefore..NotAfter)
		// stays well before the expiry for short lifetimes too.
		NotBefore:   now.Add(-min(5*time.Minute, ttl/10)),
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if id.Role == RoleReplica {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.DNSNames = []string{ServerName}
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else if h != "" {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: sign %s: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cert, nil
}

// Issue makes a key and a certificate for id in one step, for parts that
// run next to the CA (a replica's own certificate, `berth dev`'s agent
// and gateway).
func (ca *CA) Issue(id Identity, ttl time.Duration, now time.Time, hosts ...string) (certPEM, keyPEM []byte, err error) {
	key, keyPEM, err := NewKey()
	if err != nil {
		return nil, nil, err
	}
	certPEM, _, err = ca.sign(key.Public(), id, ttl, now, hosts...)
	return certPEM, keyPEM, err
}

// Verify checks a client certificate chain against the CA and returns
// the identity of its leaf.
func (ca *CA) Verify(cert *x509.Certificate, now time.Time) (Identity, error) {
	if _, err := cert.Verify(x509.VerifyOptions{Roots: ca.pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return Identity{}, fmt.Errorf("pki: certificate not issued by this cluster's CA: %w", err)
	}
	return IdentityOf(cert)
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: serial: %w", err)
	}
	return n.Add(n, big.NewInt(1)), nil
}

// NewKey makes an ECDSA P-256 key and its PEM (PKCS #8).
func NewKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: key: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// NewCSR makes a certificate signing request for key. The subject is
// informative only: the CA names the certificate from the join token.
func NewCSR(key crypto.Signer, name string) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return nil, fmt.Errorf("pki: certificate request: %w", err)
	}
	return der, nil
}

// ParseCert parses the first certificate in PEM.
func ParseCert(certPEM []byte) (*x509.Certificate, error) {
	for rest := certPEM; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("no PEM certificate found")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

// ParseKey parses a PEM private key (PKCS #8 or SEC 1).
func ParseKey(keyPEM []byte) (crypto.Signer, error) {
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		return nil, errors.New("no PEM key found")
	}
	if k, err := x509.ParsePKCS8PrivateKey(b.Bytes); err == nil {
		if s, ok := k.(crypto.Signer); ok {
			return s, nil
		}
		return nil, errors.New("key is not a signing key")
	}
	return x509.ParseECPrivateKey(b.Bytes)
}

// PoolFromPEM makes a pool of the certificates in PEM.
func PoolFromPEM(caPEM []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("pki: no CA certificate in PEM")
	}
	return pool, nil
}

// SameCA reports whether two PEM CA certificates are the same.
func SameCA(a, b []byte) bool {
	ca, err1 := ParseCert(a)
	cb, err2 := ParseCert(b)
	return err1 == nil && err2 == nil && bytes.Equal(ca.Raw, cb.Raw)
}
