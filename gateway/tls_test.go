package gateway

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writeCert writes a self-signed certificate for hosts; it returns the
// files and a pool trusting it.
func writeCert(t *testing.T, dir, name string, hosts ...string) (Certificate, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		DNSNames: hosts, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kb, _ := x509.MarshalECPrivateKey(key)
	c := Certificate{Hosts: hosts, CertFile: filepath.Join(dir, name+".crt"), KeyFile: filepath.Join(dir, name+".key")}
	os.WriteFile(c.CertFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(c.KeyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return c, cert
}

func TestTLSWithSNIAndALPN(t *testing.T) {
	dir := t.TempDir()
	shop, shopCert := writeCert(t, dir, "shop", "shop.test", "*.shop.test")
	api, apiCert := writeCert(t, dir, "api", "api.test")
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Header.Get("X-Forwarded-Proto"))
	})
	g := testGateway(t, func(c *Config) {
		c.TLSListenAddr = "127.0.0.1:0"
		c.Certificates = []Certificate{shop, api}
	})
	install(g, nil, up.URL)
	pool := x509.NewCertPool()
	pool.AddCert(shopCert)
	pool.AddCert(apiCert)
	for _, tc := range []struct {
		sni    string
		h2     bool
		wantCN string
	}{
		{"shop.test", false, "shop"},
		{"eu.shop.test", true, "shop"},
		{"api.test", false, "api"},
		{"api.test", true, "api"},
	} {
		tr := &http.Transport{TLSClientConfig: &tls.Config{ServerName: tc.sni, RootCAs: pool}, ForceAttemptHTTP2: tc.h2}
		if !tc.h2 {
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
		}
		resp, body := get(t, &http.Client{Transport: tr}, "https://"+g.TLSAddr()+"/")
		tr.CloseIdleConnections()
		if got := resp.TLS.PeerCertificates[0].Subject.CommonName; got != tc.wantCN {
			t.Errorf("SNI %s: certificate %s, want %s", tc.sni, got, tc.wantCN)
		}
		if (resp.ProtoMajor == 2) != tc.h2 || body != "https" {
			t.Errorf("SNI %s h2=%v: proto %s, X-Forwarded-Proto %q", tc.sni, tc.h2, resp.Proto, body)
		}
	}
}
