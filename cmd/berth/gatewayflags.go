package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/berth-dev/berth/gateway"
	"github.com/spf13/cobra"
)

// gatewayFlags are the data-plane settings shared by `berth gateway` and
// `berth dev`.
type gatewayFlags struct {
	tlsListen      string
	certs          []string
	maxConnections int
	maxHeaderBytes int
	maxHeaderCount int
	trustRequestID bool
	headTimeout    time.Duration
	bodyTimeout    time.Duration
	sendTimeout    time.Duration
	idleTimeout    time.Duration
	tunnelIdle     time.Duration
	accessLog      string
	xdsProtocol    string
}

func (f *gatewayFlags) register(cmd *cobra.Command) {
	def := gateway.DefaultConfig()
	cmd.Flags().StringVar(&f.tlsListen, "tls-listen", "", "HTTPS address (ALPN h2 and http/1.1), certificates chosen by SNI from --cert")
	cmd.Flags().StringArrayVar(&f.certs, "cert", nil, "a certificate for the HTTPS listener: hosts=a.test,*.b.test,cert=FILE,key=FILE (repeatable)")
	cmd.Flags().IntVar(&f.maxConnections, "max-connections", 0, "most client connections at once; 0: (open-file limit - 1024) / 2, at least 256 (here "+strconv.Itoa(gateway.DefaultMaxConnections())+"); -1: no limit")
	cmd.Flags().DurationVar(&f.headTimeout, "header-timeout", def.ReadHeaderTimeout, "time to receive a request head once it has begun (408 and close)")
	cmd.Flags().DurationVar(&f.bodyTimeout, "body-timeout", def.BodyTimeout, "longest wait for each piece of a request body, and for a small body read whole before an upstream is chosen (408 and close)")
	cmd.Flags().DurationVar(&f.sendTimeout, "send-timeout", def.SendTimeout, "close a client that takes none of its response for this long")
	cmd.Flags().DurationVar(&f.idleTimeout, "idle-timeout", def.IdleTimeout, "close a keep-alive client connection idle this long between requests")
	cmd.Flags().DurationVar(&f.tunnelIdle, "tunnel-idle-timeout", def.TunnelIdleTimeout, "close an upgraded connection (WebSocket) with no bytes either way for this long")
	cmd.Flags().IntVar(&f.maxHeaderBytes, "max-header-bytes", def.MaxHeaderBytes, "largest request head accepted, request line to empty line (431 and close above)")
	cmd.Flags().IntVar(&f.maxHeaderCount, "max-header-count", def.MaxHeaderCount, "most header lines in a request (431 and close above)")
	cmd.Flags().BoolVar(&f.trustRequestID, "trust-request-id", false, "keep a client's X-Request-Id (only when a trusted proxy in front sets it); otherwise the gateway makes its own")
	cmd.Flags().StringVar(&f.accessLog, "access-log", "", "JSON access log: a file path, or - for standard error")
	cmd.Flags().StringVar(&f.xdsProtocol, "xds-protocol", def.XDSProtocol, "ADS protocol: delta (incremental) or sotw (state of the world)")
}

// apply fills cfg; the returned closer closes the access log file.
func (f *gatewayFlags) apply(cfg *gateway.Config) (io.Closer, error) {
	cfg.TLSListenAddr, cfg.MaxConnections, cfg.MaxHeaderBytes, cfg.XDSProtocol = f.tlsListen, f.maxConnections, f.maxHeaderBytes, f.xdsProtocol
	cfg.MaxHeaderCount, cfg.TrustRequestID = f.maxHeaderCount, f.trustRequestID
	cfg.ReadHeaderTimeout, cfg.BodyTimeout, cfg.SendTimeout, cfg.IdleTimeout, cfg.TunnelIdleTimeout = f.headTimeout, f.bodyTimeout, f.sendTimeout, f.idleTimeout, f.tunnelIdle
	for _, spec := range f.certs {
		c, err := parseCert(spec)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = append(cfg.Certificates, c)
	}
	if f.tlsListen != "" && len(cfg.Certificates) == 0 {
		return nil, fmt.Errorf("--tls-listen needs at least one --cert")
	}
	switch f.accessLog {
	case "":
		return io.NopCloser(nil), nil
	case "-":
		cfg.AccessLog = os.Stderr
		return io.NopCloser(nil), nil
	default:
		file, err := os.OpenFile(f.accessLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o640)
		if err != nil {
			return nil, fmt.Errorf("--access-log: %w", err)
		}
		cfg.AccessLog = file
		return file, nil
	}
}

// parseCert reads "hosts=a,b,cert=FILE,key=FILE".
func parseCert(spec string) (gateway.Certificate, error) {
	var c gateway.Certificate
	var key string
	for _, part := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(part, "=")
		switch {
		case ok && k == "hosts":
			c.Hosts = append(c.Hosts, v)
			key = "hosts"
		case ok && k == "cert":
			c.CertFile, key = v, "cert"
		case ok && k == "key":
			c.KeyFile, key = v, "key"
		case !ok && key == "hosts" && part != "":
			c.Hosts = append(c.Hosts, part)
		default:
			return c, fmt.Errorf("--cert %q: want hosts=a.test,*.b.test,cert=FILE,key=FILE", spec)
		}
	}
	if c.CertFile == "" || c.KeyFile == "" {
		return c, fmt.Errorf("--cert %q: cert= and key= are required", spec)
	}
	return c, nil
}
