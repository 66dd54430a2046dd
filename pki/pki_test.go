package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func newCA(t *testing.T) (*CA, []byte) {
	t.Helper()
	ca, keyPEM, err := NewCA("test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return ca, keyPEM
}

func TestSignCarriesTheIdentityTheCAChose(t *testing.T) {
	ca, keyPEM := newCA(t)
	back, err := ParseCA(ca.CertPEM, keyPEM)
	if err != nil || back.Pin() != ca.Pin() {
		t.Fatalf("ParseCA: %v (pin %s, want %s)", err, back.Pin(), ca.Pin())
	}
	if other, _ := newCA(t); other.Pin() == ca.Pin() {
		t.Fatal("two CAs share a pin")
	}
	if _, err := ParseCA(ca.CertPEM, mustOtherKey(t)); err == nil {
		t.Error("a CA certificate with another key was accepted")
	}
	if !strings.HasPrefix(ca.Pin(), "sha256:") || len(ca.Pin()) != len("sha256:")+64 {
		t.Errorf("pin %q", ca.Pin())
	}

	key, _, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	// The request asks to be an admin replica; the CA signs what the
	// server decided: node n1, generation 3.
	csr, err := NewCSR(key, "replica-admin")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	certPEM, cert, err := ca.Sign(csr, Identity{Role: RoleNode, Name: "n1", Generation: 3}, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParseCert(certPEM); err != nil {
		t.Fatal(err)
	}
	id, err := ca.Verify(cert, now)
	if err != nil {
		t.Fatal(err)
	}
	if id.Role != RoleNode || id.Name != "n1" || id.Generation != 3 || id.Serial == "" || !id.NotAfter.Equal(cert.NotAfter) {
		t.Errorf("identity %+v", id)
	}
	if len(cert.DNSNames) != 0 || len(cert.IPAddresses) != 0 || cert.IsCA {
		t.Errorf("a node certificate is a server or CA certificate: %v %v %v", cert.DNSNames, cert.IPAddresses, cert.IsCA)
	}
	if _, err := ca.Verify(cert, now.Add(2*time.Hour)); err == nil {
		t.Error("an expired certificate verified")
	}
	other, _ := newCA(t)
	if _, err := other.Verify(cert, now); err == nil {
		t.Error("another CA verified this CA's certificate")
	}

	// Replica certificates serve ServerName and the given hosts.
	rPEM, _, err := ca.Issue(Identity{Role: RoleReplica, Name: "r1"}, time.Hour, now, "10.0.0.1", "cp.example.test")
	if err != nil {
		t.Fatal(err)
	}
	r, _ := ParseCert(rPEM)
	if err := r.VerifyHostname(ServerName); err != nil {
		t.Error(err)
	}
	if err := r.VerifyHostname("10.0.0.1"); err != nil {
		t.Error(err)
	}
	if err := r.VerifyHostname("cp.example.test"); err != nil {
		t.Error(err)
	}

	if _, _, err := ca.Sign([]byte("not a csr"), Identity{Role: RoleNode, Name: "n1"}, time.Hour, now); err == nil {
		t.Error("garbage CSR signed")
	}
	if _, _, err := ca.Sign(csr, Identity{Role: RoleNode}, time.Hour, now); err == nil {
		t.Error("identity without a name signed")
	}
}

func mustOtherKey(t *testing.T) []byte {
	t.Helper()
	_, keyPEM, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	return keyPEM
}

func TestIdentityOfRefusesWhatIsNotAPart(t *testing.T) {
	ca, _ := newCA(t)
	for _, id := range []Identity{{Role: RoleAdmin, Name: "x"}, {Role: "root", Name: "x"}} {
		certPEM, _, err := ca.Issue(id, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		c, _ := ParseCert(certPEM)
		if _, err := IdentityOf(c); err == nil {
			t.Errorf("a %q certificate is a part's identity", id.Role)
		}
	}
	if _, err := ParseRole("superuser", UserRoles); err == nil || !strings.Contains(err.Error(), "admin, deployer, viewer") {
		t.Errorf("ParseRole: %v", err)
	}
}

// Renewal is due well before expiry, for short lifetimes too (down to a
// few seconds: certificate times have a resolution of one second).
func TestRenewAtIsBeforeExpiry(t *testing.T) {
	ca, _ := newCA(t)
	for _, ttl := range []time.Duration{3 * time.Second, time.Minute, time.Hour, 30 * 24 * time.Hour} {
		now := time.Now()
		certPEM, _, err := ca.Issue(Identity{Role: RoleGateway, Name: "g"}, ttl, now)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := ParseCert(certPEM)
		for range 20 {
			at := RenewAt(c)
			if !at.After(now) || at.After(c.NotAfter.Add(-ttl/4)) {
				t.Fatalf("ttl %s: renew at %s (issued %s, expires %s)", ttl, at, now, c.NotAfter)
			}
		}
	}
}

// A joining part refuses a server whose CA is not the pinned one, before
// it sends anything.
func TestPinnedTLS(t *testing.T) {
	ca, _ := newCA(t)
	impostor, _ := newCA(t)
	serve := func(ca *CA) string {
		certPEM, keyPEM, err := ca.Issue(Identity{Role: RoleReplica, Name: "r"}, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		kp, err := NewKeyPair(WithChain(certPEM, ca.CertPEM), keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		lis, err := tls.Listen("tcp", "127.0.0.1:0", ServerTLS(kp, ca.Pool(), false))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lis.Close() })
		go func() {
			for {
				c, err := lis.Accept()
				if err != nil {
					return
				}
				_ = c.(*tls.Conn).Handshake()
				c.Close()
			}
		}()
		return lis.Addr().String()
	}
	dial := func(addr, pin string) (*x509.Certificate, error) {
		var found *x509.Certificate
		d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 5 * time.Second}, Config: PinnedTLS(pin, func(c *x509.Certificate) { found = c })}
		c, err := d.DialContext(context.Background(), "tcp", addr)
		if err == nil {
			c.Close()
		}
		return found, err
	}
	good, bad := serve(ca), serve(impostor)
	if found, err := dial(good, ca.Pin()); err != nil || found == nil || PinOf(found) != ca.Pin() {
		t.Fatalf("the pinned CA: %v", err)
	}
	if _, err := dial(bad, ca.Pin()); err == nil || !strings.Contains(err.Error(), "does not match the pinned hash") {
		t.Fatalf("another CA: %v", err)
	}
	// A server presenting the pinned CA with a leaf the CA did not sign.
	leafPEM, keyPEM, err := impostor.Issue(Identity{Role: RoleReplica, Name: "r"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	kp, err := NewKeyPair(WithChain(leafPEM, ca.CertPEM), keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", ServerTLS(kp, ca.Pool(), false))
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		if c, err := lis.Accept(); err == nil {
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	if _, err := dial(lis.Addr().String(), ca.Pin()); err == nil || !strings.Contains(err.Error(), "does not verify against the pinned CA") {
		t.Fatalf("the pinned CA's certificate replayed with a foreign leaf: %v", err)
	}
}

func TestFilesKeepTheKeyPrivate(t *testing.T) {
	ca, _ := newCA(t)
	certPEM, keyPEM, err := ca.Issue(Identity{Role: RoleNode, Name: "n"}, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f := Files{Dir: filepath.Join(t.TempDir(), "pki")}
	if _, _, _, ok, err := f.Load(); ok || err != nil {
		t.Fatalf("empty dir: %v %v", ok, err)
	}
	if err := f.Save(ca.CertPEM, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	for path, mode := range map[string]os.FileMode{f.Dir: 0o700 | os.ModeDir, f.Key(): 0o600} {
		st, err := os.Stat(path)
		if err != nil || st.Mode() != mode {
			t.Errorf("%s: mode %v, want %v (%v)", path, st.Mode(), mode, err)
		}
	}
	c, k, key, ok, err := f.Load()
	if !ok || err != nil || string(c) != string(ca.CertPEM) || string(k) != string(certPEM) || string(key) != string(keyPEM) {
		t.Fatalf("load: %v %v", ok, err)
	}
}

// KeepRenewed swaps in a new certificate (and a new key) before expiry.
func TestKeepRenewed(t *testing.T) {
	ca, _ := newCA(t)
	certPEM, keyPEM, err := ca.Issue(Identity{Role: RoleGateway, Name: "g", Generation: 1}, 2*time.Second, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	kp, err := NewKeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	first := kp.Leaf()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	saved := make(chan struct{}, 10)
	renew := func(ctx context.Context, csr []byte) ([]byte, error) {
		p, _, err := ca.Sign(csr, Identity{Role: RoleGateway, Name: "g", Generation: 1}, time.Hour, time.Now())
		return p, err
	}
	done := make(chan error, 1)
	go func() {
		done <- KeepRenewed(ctx, kp, renew, func(c, k []byte) error { saved <- struct{}{}; return nil }, testLogger(t))
	}()
	select {
	case <-saved:
	case <-ctx.Done():
		t.Fatal("not renewed")
	}
	for kp.Leaf() == first {
		if ctx.Err() != nil {
			t.Fatal("saved but never swapped in")
		}
		time.Sleep(time.Millisecond)
	}
	if time.Now().After(first.NotAfter) {
		t.Error("renewed only after the old certificate expired")
	}
	if kp.Leaf().NotAfter.Sub(first.NotAfter) < 30*time.Minute {
		t.Errorf("renewed certificate expires %s", kp.Leaf().NotAfter)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
