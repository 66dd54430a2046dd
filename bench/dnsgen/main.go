// Command dnsgen is the Berth side of the DNS benchmark (bench/dns.sh). It
// makes one synthetic discovery snapshot (services x ready endpoints, each
// with an "http" port), and either writes it out for the peer or serves it
// with Berth's real DNS server:
//
//	dnsgen zone -dir D      D/db.berth.internal: the zone as an RFC 1035 zone
//	                        file (the same records Berth answers, from
//	                        dns.Table.Records); D/queries.txt: one A query per
//	                        service, in dnsperf's format
//	dnsgen serve -addr A    dns.Server on A (loopback) until SIGINT/SIGTERM;
//	                        prints "listening <addr>" once it answers
//	dnsgen probe -addr A    wait (up to 20 s) until A answers the first
//	                        service's A query with its endpoints
//
// Only loopback: serve refuses any other address.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/dns"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dnsgen zone|serve [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	services := fs.Int("services", 10000, "services in the snapshot")
	endpoints := fs.Int("endpoints", 3, "ready endpoints per service")
	dir := fs.String("dir", ".", "zone: where to write db.berth.internal and queries.txt")
	addr := fs.String("addr", "127.0.0.1:0", "serve: loopback ip:port")
	cpuProfile := fs.String("cpuprofile", "", "serve: write a CPU profile here until stopped")
	fs.Parse(os.Args[2:])
	snap := snapshot(*services, *endpoints)
	var err error
	switch os.Args[1] {
	case "zone":
		err = writeZone(snap, *dir)
	case "serve":
		err = serve(snap, *addr, *cpuProfile)
	case "probe":
		err = probe(*addr, *endpoints)
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dnsgen:", err)
		os.Exit(1)
	}
}

// snapshot: services bench/svc-NNNNN, endpoints svc-NNNNN-J on
// 10.(100+i/250).(i%250).(J+1), all ready, one revision.
func snapshot(services, endpoints int) *discovery.Snapshot {
	snap := &discovery.Snapshot{Version: 1, Services: make([]discovery.Service, services)}
	for i := range snap.Services {
		s := &snap.Services[i]
		s.Namespace, s.Name = "bench", fmt.Sprintf("svc-%05d", i)
		s.Ports = []discovery.Port{{Name: "http", Port: 8080, Protocol: "http"}}
		rev := discovery.Revision{Number: 1, Weight: 100}
		for j := range endpoints {
			rev.Endpoints = append(rev.Endpoints, discovery.Endpoint{
				Instance: fmt.Sprintf("svc-%05d-%d", i, j), Node: "n1",
				IP: fmt.Sprintf("10.%d.%d.%d", 100+i/250, i%250, j+1), Ready: true,
			})
		}
		s.Revisions = []discovery.Revision{rev}
	}
	return snap
}

func writeZone(snap *discovery.Snapshot, dir string) error {
	cfg := dns.DefaultConfig()
	tab := dns.NewTable(snap, cfg)
	var zone strings.Builder
	zone.WriteString("$ORIGIN berth.internal.\n")
	var rest []string
	for _, rec := range tab.Records() {
		owner, _, _ := strings.Cut(rec, "\t")
		switch {
		case strings.HasSuffix(rec, "; exists"), !strings.HasSuffix(owner, cfg.Zone):
			continue // empty non-terminals are implicit; PTRs live in other zones
		case strings.Contains(rec, "\tSOA\t"):
			zone.WriteString(rec + "\n") // the SOA first
		default:
			rest = append(rest, rec)
		}
	}
	for _, r := range rest {
		zone.WriteString(r + "\n")
	}
	zone.WriteString("ns.dns.berth.internal.\t5\tIN\tA\t127.0.0.1\n")
	if err := os.WriteFile(filepath.Join(dir, "db.berth.internal"), []byte(zone.String()), 0o644); err != nil {
		return err
	}
	var q strings.Builder
	for _, s := range snap.Services {
		fmt.Fprintf(&q, "%s.%s.svc.berth.internal A\n", s.Name, s.Namespace)
	}
	return os.WriteFile(filepath.Join(dir, "queries.txt"), []byte(q.String()), 0o644)
}

func probe(addr string, endpoints int) error {
	if err := loopbackOnly(addr); err != nil {
		return err
	}
	c := &mdns.Client{Timeout: 500 * time.Millisecond}
	m := new(mdns.Msg)
	m.SetQuestion("svc-00000.bench.svc.berth.internal.", mdns.TypeA)
	deadline := time.Now().Add(20 * time.Second)
	for {
		r, _, err := c.Exchange(m, addr)
		if err == nil && len(r.Answer) == endpoints {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("probe %s: no answer with %d addresses (last: %v %v)", addr, endpoints, r, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%s: only loopback addresses", addr)
	}
	return nil
}

func serve(snap *discovery.Snapshot, addr, cpuProfile string) error {
	if err := loopbackOnly(addr); err != nil {
		return err
	}
	cfg := dns.DefaultConfig()
	cfg.Addr = addr
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := dns.New(cfg)
	if err != nil {
		return err
	}
	s.Update(snap)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if cpuProfile != "" {
		f, err := os.Create(cpuProfile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	w := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(w, "listening %s\n", s.Addr())
	w.Flush()
	return s.Run(ctx)
}
