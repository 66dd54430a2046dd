package dns

import (
	"bufio"
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures a Server. Start from DefaultConfig.
type Config struct {
	// Addr is the "ip:port" to serve on, UDP and TCP on the same address.
	// With port 0 the TCP socket is bound to the port UDP got. Bind a
	// specific address (the node's bridge address): replies to UDP queries
	// leave from the socket's address, which on a wildcard bind of a
	// multi-homed host may not be the address the client asked.
	Addr string
	// Zone is the zone the server is authoritative for, fully qualified.
	Zone string
	// TTL is the TTL of service and instance records (and of SOA/NS).
	TTL time.Duration
	// NegativeTTL is the SOA minimum: how long NXDOMAIN and NODATA answers
	// may be cached.
	NegativeTTL time.Duration
	// Upstreams are "host:port" resolvers for names outside the zone, tried
	// in order. Empty means no forwarding: such queries get REFUSED.
	Upstreams []string
	// NoForwardTo are networks and NoForwardToAddrs addresses that must
	// never be upstreams: the other Berth DNS servers, so two of them can
	// never forward to each other in a loop (the host server lists the pod
	// network, where the node-local servers listen; a node-local server in
	// berth dev lists the host server's address). New refuses such an
	// upstream, as it refuses one that is the server itself.
	NoForwardTo      []netip.Prefix
	NoForwardToAddrs []netip.AddrPort
	// UpstreamsFromSystem says the upstreams were read from resolv.conf,
	// not given by the user: one that would loop is then dropped with a
	// warning instead of failing New (a host may well list the address
	// Berth's DNS serves on).
	UpstreamsFromSystem bool
	// AllowRecursion lists the client networks (the pod networks) allowed
	// to use forwarding, in addition to loopback. Everyone else gets
	// REFUSED for names outside the zone, so the server is never an open
	// resolver.
	AllowRecursion []netip.Prefix
	// FreeBind sets IP_FREEBIND on the sockets so the server can bind an
	// address that does not exist yet (a bridge created later). Linux only.
	FreeBind bool
	// Logger is the parent logger; the server logs with component=dns.
	// Nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the berth_dns_* metrics. May be nil.
	Registerer prometheus.Registerer

	// UpstreamTimeout bounds one exchange with one upstream. Default 2s.
	UpstreamTimeout time.Duration
	// MaxForwards is how many forwarded queries may be in flight at once;
	// beyond it clients get SERVFAIL. Default 256.
	MaxForwards int
	// MaxForwardsPerClient is how many forwarded queries one client
	// address may have in flight. Default MaxForwards/8, at least 4.
	MaxForwardsPerClient int
	// ForwardRatePerClient is how many queries a second one client may
	// forward (cache hits are free), with bursts of twice that. Default 100.
	ForwardRatePerClient float64
	// CacheSize bounds the forwarding cache (entries). Default 10000;
	// negative disables the cache.
	CacheSize int
	// CacheBytes bounds the forwarding cache by the packed size of its
	// replies. Default 8 MiB.
	CacheBytes int
	// MaxCacheTTL caps how long a forwarded answer is cached, whatever its
	// TTL says. Default 5m.
	MaxCacheTTL time.Duration
	// MaxTCPConns bounds concurrent TCP connections. Default 1024.
	MaxTCPConns int
	// MaxTCPConnsPerClient bounds one client address's concurrent TCP
	// connections, so one client cannot take them all. Default 16.
	MaxTCPConnsPerClient int
	// TCPIdleTimeout closes TCP connections idle for this long. Default 10s.
	TCPIdleTimeout time.Duration
	// RateLimit, when above zero, limits UDP responses per client prefix
	// (IPv4 /24, IPv6 /56) to this many a second, bursts of twice that
	// (response rate limiting, as NSD and Knot do). Off (0) by default:
	// the node-local server only serves its own pods; berth server turns
	// it on for a host listener that is not on loopback.
	RateLimit float64
	// RateLimitSlip: every this-many-th limited response is sent
	// truncated (TC) instead of dropped, so real clients retry over TCP.
	// Default 2; negative drops them all.
	RateLimitSlip int
	// UDPSockets is how many UDP sockets share the address through
	// SO_REUSEPORT, each with its own reader; the kernel spreads clients
	// over them. Default (0): one per core (GOMAXPROCS). Linux only;
	// elsewhere one socket is read by one goroutine per core.
	UDPSockets int

	// nsAddr is the address the server bound, set by New: the table
	// publishes it as the address of the zone's NS name.
	nsAddr netip.Addr
}

// Defaults.
const (
	DefaultZone        = "berth.internal."
	DefaultTTL         = 5 * time.Second
	DefaultNegativeTTL = 2 * time.Second
	// MaxUDPSize is the largest UDP answer the server sends (the EDNS
	// buffer size recommended by DNS flag day 2020).
	MaxUDPSize = 1232
)

// DefaultConfig returns the configuration for a node-local server on
// loopback with no forwarding.
func DefaultConfig() Config {
	return Config{
		Addr:                 "127.0.0.1:53",
		Zone:                 DefaultZone,
		TTL:                  DefaultTTL,
		NegativeTTL:          DefaultNegativeTTL,
		UpstreamTimeout:      2 * time.Second,
		MaxForwards:          256,
		CacheSize:            10000,
		CacheBytes:           8 << 20,
		ForwardRatePerClient: 100,
		MaxCacheTTL:          5 * time.Minute,
		MaxTCPConns:          1024,
		MaxTCPConnsPerClient: 16,
		TCPIdleTimeout:       10 * time.Second,
		RateLimitSlip:        2,
	}
}

// normalize fills zero fields with their defaults and canonicalises the
// zone. It never fails; validate reports what normalize cannot fix.
func (c Config) normalize() Config {
	d := DefaultConfig()
	if c.Zone == "" {
		c.Zone = d.Zone
	}
	c.Zone = dns.CanonicalName(c.Zone)
	if c.TTL <= 0 {
		c.TTL = d.TTL
	}
	if c.NegativeTTL <= 0 {
		c.NegativeTTL = d.NegativeTTL
	}
	if c.UpstreamTimeout <= 0 {
		c.UpstreamTimeout = d.UpstreamTimeout
	}
	if c.MaxForwards <= 0 {
		c.MaxForwards = d.MaxForwards
	}
	if c.MaxForwardsPerClient <= 0 {
		c.MaxForwardsPerClient = max(4, c.MaxForwards/8)
	}
	if c.ForwardRatePerClient <= 0 {
		c.ForwardRatePerClient = d.ForwardRatePerClient
	}
	if c.CacheSize == 0 {
		c.CacheSize = d.CacheSize
	}
	if c.CacheBytes <= 0 {
		c.CacheBytes = d.CacheBytes
	}
	if c.MaxCacheTTL <= 0 {
		c.MaxCacheTTL = d.MaxCacheTTL
	}
	if c.MaxTCPConns <= 0 {
		c.MaxTCPConns = d.MaxTCPConns
	}
	if c.RateLimitSlip == 0 {
		c.RateLimitSlip = d.RateLimitSlip
	}
	if c.MaxTCPConnsPerClient <= 0 {
		c.MaxTCPConnsPerClient = d.MaxTCPConnsPerClient
	}
	if c.TCPIdleTimeout <= 0 {
		c.TCPIdleTimeout = d.TCPIdleTimeout
	}
	if c.UDPSockets <= 0 {
		c.UDPSockets = runtime.GOMAXPROCS(0)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	if _, ok := dns.IsDomainName(c.Zone); !ok || c.Zone == "." {
		return fmt.Errorf("dns: config: invalid zone %q", c.Zone)
	}
	for _, u := range c.Upstreams {
		if _, _, err := net.SplitHostPort(u); err != nil {
			return fmt.Errorf("dns: config: upstream %q: %w", u, err)
		}
	}
	for _, p := range c.AllowRecursion {
		if !p.IsValid() {
			return fmt.Errorf("dns: config: invalid recursion prefix %v", p)
		}
	}
	return nil
}

// UpstreamsFromResolvConf returns the nameservers of a resolv.conf file as
// "ip:53" (IPv6 as "[ip]:53", zones kept). A file without nameservers gives
// an empty list and no error.
//
// Loopback nameservers, including systemd-resolved's stub 127.0.0.53, are
// kept: the server runs in the host's network namespace, where they answer,
// and on a systemd-resolved host the stub is often the only entry. Callers
// that prefer resolved's real upstreams can pass
// /run/systemd/resolve/resolv.conf. New drops an upstream equal to the
// server's own address, so a resolv.conf pointing at Berth cannot loop.
func UpstreamsFromResolvConf(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("dns: read resolv.conf: %w", err)
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexAny(line, "#;"); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		ip, err := netip.ParseAddr(f[1])
		if err != nil {
			continue // glibc ignores what it cannot parse too
		}
		out = append(out, netip.AddrPortFrom(ip, 53).String())
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("dns: read resolv.conf %s: %w", path, err)
	}
	return out, nil
}
