package xds

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	upstreamhttp "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/berth-dev/berth/pki"
)

// BootstrapOption changes what EnvoyBootstrap writes.
type BootstrapOption func(*bootstrapConfig)

type bootstrapConfig struct {
	adminPort uint32
	cluster   string
	sotw      bool
	tls       *pki.Files
}

// WithTLSFiles makes Envoy dial the control plane with mutual TLS, as
// Berth's xDS requires: the gateway certificate and key in dir's tls.crt
// and tls.key (whose name must be the node id), the control plane
// verified against dir's ca.crt and the name every replica certificate
// carries. Envoy reloads the files when they are replaced
// (watched_directory), so `berth gateway envoy-credentials` can renew
// them next to a running Envoy.
func WithTLSFiles(dir string) BootstrapOption {
	return func(c *bootstrapConfig) { c.tls = &pki.Files{Dir: dir} }
}

// WithAdminPort sets the port of Envoy's admin interface on 127.0.0.1
// (default 9901).
func WithAdminPort(port uint32) BootstrapOption {
	return func(c *bootstrapConfig) { c.adminPort = port }
}

// WithNodeCluster sets the node's cluster (default "berth-gateway").
func WithNodeCluster(name string) BootstrapOption {
	return func(c *bootstrapConfig) { c.cluster = name }
}

// WithStateOfTheWorld makes Envoy use state-of-the-world ADS instead of
// the default incremental (delta) ADS. Delta sends one load assignment for
// an endpoint change; state of the world sends every one of them.
func WithStateOfTheWorld() BootstrapOption {
	return func(c *bootstrapConfig) { c.sotw = true }
}

// xdsClusterName is the bootstrap's static cluster for the control plane.
const xdsClusterName = "berth_xds"

// EnvoyBootstrap returns an Envoy v3 bootstrap, as indented JSON (which is
// also YAML), for a real Envoy used as a Berth gateway: node nodeID;
// listeners and clusters over ADS (gRPC, HTTP/2) from the Berth control
// plane at xdsAddr ("host:port"; an IP is a STATIC cluster, a name
// STRICT_DNS); load reports (LRS) to the same address; the admin interface
// on 127.0.0.1 only. The result is checked by parsing it back into the
// bootstrap proto and running ValidateAll.
func EnvoyBootstrap(xdsAddr, nodeID string, opts ...BootstrapOption) ([]byte, error) {
	cfg := bootstrapConfig{adminPort: 9901, cluster: "berth-gateway"}
	for _, o := range opts {
		o(&cfg)
	}
	if nodeID == "" {
		return nil, errors.New("xds: envoy bootstrap: node id is required")
	}
	host, portStr, err := net.SplitHostPort(xdsAddr)
	if err != nil {
		return nil, fmt.Errorf("xds: envoy bootstrap: xds address %q: %w", xdsAddr, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 || host == "" {
		return nil, fmt.Errorf("xds: envoy bootstrap: xds address %q: want host:port", xdsAddr)
	}
	if cfg.adminPort == 0 || cfg.adminPort > 65535 {
		return nil, fmt.Errorf("xds: envoy bootstrap: admin port %d out of range", cfg.adminPort)
	}

	discoveryType := cluster.Cluster_STRICT_DNS
	if _, err := netip.ParseAddr(host); err == nil {
		discoveryType = cluster.Cluster_STATIC
	}
	h2, err := anypb.New(&upstreamhttp.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &upstreamhttp.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
					Http2ProtocolOptions: &core.Http2ProtocolOptions{},
				},
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("xds: envoy bootstrap: %w", err)
	}
	var transport *core.TransportSocket
	if cfg.tls != nil {
		if transport, err = upstreamMTLS(*cfg.tls); err != nil {
			return nil, fmt.Errorf("xds: envoy bootstrap: %w", err)
		}
	}
	apiType := core.ApiConfigSource_DELTA_GRPC
	if cfg.sotw {
		apiType = core.ApiConfigSource_GRPC
	}
	grpcSource := func(t core.ApiConfigSource_ApiType) *core.ApiConfigSource {
		return &core.ApiConfigSource{
			ApiType:             t,
			TransportApiVersion: core.ApiVersion_V3,
			GrpcServices: []*core.GrpcService{{TargetSpecifier: &core.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &core.GrpcService_EnvoyGrpc{ClusterName: xdsClusterName},
			}}},
		}
	}
	b := &bootstrap.Bootstrap{
		Node:  &core.Node{Id: nodeID, Cluster: cfg.cluster},
		Admin: &bootstrap.Admin{Address: socketAddress("127.0.0.1", uint32(cfg.adminPort))},
		DynamicResources: &bootstrap.Bootstrap_DynamicResources{
			AdsConfig: grpcSource(apiType),
			LdsConfig: adsSource(),
			CdsConfig: adsSource(),
		},
		ClusterManager: &bootstrap.ClusterManager{LoadStatsConfig: grpcSource(core.ApiConfigSource_GRPC)},
		StaticResources: &bootstrap.Bootstrap_StaticResources{Clusters: []*cluster.Cluster{{
			Name:                          xdsClusterName,
			ClusterDiscoveryType:          &cluster.Cluster_Type{Type: discoveryType},
			ConnectTimeout:                durationpb.New(2 * time.Second),
			TypedExtensionProtocolOptions: map[string]*anypb.Any{httpProtocolOptionsKey: h2},
			TransportSocket:               transport,
			LoadAssignment: &endpoint.ClusterLoadAssignment{
				ClusterName: xdsClusterName,
				Endpoints: []*endpoint.LocalityLbEndpoints{{LbEndpoints: []*endpoint.LbEndpoint{{
					HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
						Address: socketAddress(host, uint32(port)),
					}},
				}}}},
			},
		}}},
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("xds: envoy bootstrap: %w", err)
	}
	out, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("xds: envoy bootstrap: %w", err)
	}
	// What Envoy will read must parse and validate as well.
	back := &bootstrap.Bootstrap{}
	if err := protojson.Unmarshal(out, back); err != nil {
		return nil, fmt.Errorf("xds: envoy bootstrap: re-reading: %w", err)
	}
	if err := back.ValidateAll(); err != nil {
		return nil, fmt.Errorf("xds: envoy bootstrap: re-reading: %w", err)
	}
	return append(out, '\n'), nil
}

func socketAddress(host string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address:       host,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}

// upstreamMTLS is the transport socket of the xDS cluster: Envoy presents
// the gateway certificate and accepts only a control plane replica.
func upstreamMTLS(f pki.Files) (*core.TransportSocket, error) {
	if !filepath.IsAbs(f.Dir) {
		return nil, fmt.Errorf("certificate directory %q must be an absolute path (Envoy resolves it from its own working directory)", f.Dir)
	}
	file := func(p string) *core.DataSource {
		return &core.DataSource{Specifier: &core.DataSource_Filename{Filename: p}}
	}
	watched := &core.WatchedDirectory{Path: f.Dir}
	ctx, err := anypb.New(&tlsv3.UpstreamTlsContext{
		Sni: pki.ServerName,
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams: &tlsv3.TlsParameters{TlsMinimumProtocolVersion: tlsv3.TlsParameters_TLSv1_2},
			TlsCertificates: []*tlsv3.TlsCertificate{{
				CertificateChain: file(f.Cert()),
				PrivateKey:       file(f.Key()),
				WatchedDirectory: watched,
			}},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa:        file(f.CA()),
				WatchedDirectory: watched,
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
					SanType: tlsv3.SubjectAltNameMatcher_DNS,
					Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: pki.ServerName}},
				}},
			}},
		},
	})
	if err != nil {
		return nil, err
	}
	return &core.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: ctx}}, nil
}
