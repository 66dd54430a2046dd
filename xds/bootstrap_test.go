package xds

import (
	"testing"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/berth-dev/berth/pki"
)

func TestEnvoyBootstrap(t *testing.T) {
	out, err := EnvoyBootstrap("127.0.0.1:18000", "gw-1", WithAdminPort(19901))
	if err != nil {
		t.Fatal(err)
	}
	b := &bootstrap.Bootstrap{}
	if err := protojson.Unmarshal(out, b); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	if b.GetNode().GetId() != "gw-1" || b.GetAdmin().GetAddress().GetSocketAddress().GetAddress() != "127.0.0.1" ||
		b.GetAdmin().GetAddress().GetSocketAddress().GetPortValue() != 19901 {
		t.Errorf("node/admin: %v %v", b.GetNode(), b.GetAdmin())
	}
	dr := b.GetDynamicResources()
	if dr.GetAdsConfig().GetApiType() != core.ApiConfigSource_DELTA_GRPC || dr.GetLdsConfig().GetAds() == nil || dr.GetCdsConfig().GetAds() == nil {
		t.Errorf("dynamic resources: %v", dr)
	}
	xc := b.GetStaticResources().GetClusters()[0]
	if xc.GetType() != cluster.Cluster_STATIC || xc.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() != 18000 {
		t.Errorf("xds cluster: %v", xc)
	}
	if b.GetClusterManager().GetLoadStatsConfig().GetGrpcServices()[0].GetEnvoyGrpc().GetClusterName() != xdsClusterName {
		t.Errorf("LRS config: %v", b.GetClusterManager())
	}

	sotw, err := EnvoyBootstrap("berth.example.test:18000", "gw-2", WithStateOfTheWorld())
	if err != nil {
		t.Fatal(err)
	}
	b = &bootstrap.Bootstrap{}
	if err := protojson.Unmarshal(sotw, b); err != nil {
		t.Fatal(err)
	}
	if b.GetDynamicResources().GetAdsConfig().GetApiType() != core.ApiConfigSource_GRPC || b.GetStaticResources().GetClusters()[0].GetType() != cluster.Cluster_STRICT_DNS {
		t.Errorf("state of the world / DNS: %v", b)
	}

	// With the gateway's certificate files: mutual TLS to the control
	// plane, verified against the cluster CA and the replicas' name.
	mtls, err := EnvoyBootstrap("127.0.0.1:18000", "gw-3", WithTLSFiles("/var/lib/berth/gateway/pki"))
	if err != nil {
		t.Fatal(err)
	}
	b = &bootstrap.Bootstrap{}
	if err := protojson.Unmarshal(mtls, b); err != nil {
		t.Fatal(err)
	}
	if err := b.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	ts := b.GetStaticResources().GetClusters()[0].GetTransportSocket()
	up := &tlsv3.UpstreamTlsContext{}
	if ts.GetName() != "envoy.transport_sockets.tls" || ts.GetTypedConfig().UnmarshalTo(up) != nil {
		t.Fatalf("xds cluster transport socket: %v", ts)
	}
	cert := up.GetCommonTlsContext().GetTlsCertificates()[0]
	vc := up.GetCommonTlsContext().GetValidationContext()
	if up.GetSni() != pki.ServerName || cert.GetCertificateChain().GetFilename() != "/var/lib/berth/gateway/pki/tls.crt" ||
		cert.GetPrivateKey().GetFilename() != "/var/lib/berth/gateway/pki/tls.key" || cert.GetWatchedDirectory().GetPath() != "/var/lib/berth/gateway/pki" ||
		vc.GetTrustedCa().GetFilename() != "/var/lib/berth/gateway/pki/ca.crt" || vc.GetMatchTypedSubjectAltNames()[0].GetMatcher().GetExact() != pki.ServerName {
		t.Errorf("upstream TLS: %v", up)
	}
	if _, err := EnvoyBootstrap("127.0.0.1:18000", "gw", WithTLSFiles("relative/pki")); err == nil {
		t.Error("a relative certificate directory was accepted")
	}

	for _, bad := range [][2]string{{"127.0.0.1", "gw"}, {"127.0.0.1:0", "gw"}, {":18000", "gw"}, {"127.0.0.1:18000", ""}} {
		if _, err := EnvoyBootstrap(bad[0], bad[1]); err == nil {
			t.Errorf("EnvoyBootstrap(%q, %q) accepted", bad[0], bad[1])
		}
	}
}
