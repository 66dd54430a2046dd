package pb

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// A throwaway CA and server certificate: Dial speaks only TLS.
var serverTLS, clientTLS = testTLS()

func testTLS() (*tls.Config, *tls.Config) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"control-plane.berth"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		&tls.Config{RootCAs: pool, ServerName: "control-plane.berth"}
}

func serveHealth(t *testing.T, name string) (addr string, stop func()) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.Creds(credentials.NewTLS(serverTLS)))
	h := health.NewServer()
	h.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(s, h)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String(), s.Stop
}

// With several replicas, calls keep working when the one in use goes away.
func TestDialMovesToAnotherReplica(t *testing.T) {
	a, stopA := serveHealth(t, "a")
	b, _ := serveHealth(t, "b")
	conn, err := Dial(a+", "+b, clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cli := healthpb.NewHealthClient(conn)
	which := func() string {
		t.Helper()
		for _, name := range []string{"a", "b"} {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			resp, err := cli.Check(ctx, &healthpb.HealthCheckRequest{Service: name})
			cancel()
			if err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING {
				return name
			}
		}
		return ""
	}
	if got := which(); got != "a" {
		t.Fatalf("first call went to %q, want the first replica a", got)
	}
	stopA()
	deadline := time.Now().Add(10 * time.Second)
	for which() != "b" {
		if time.Now().After(deadline) {
			t.Fatal("calls did not move to replica b after a stopped")
		}
	}
	if _, err := Dial(" , ", clientTLS); err == nil {
		t.Fatal("an empty address list was accepted")
	}
}
