// Command gatewaybench is the Go half of bench/gateway.sh: the upstream
// servers, and Berth's real xDS server and gateway in one process.
//
//	gatewaybench upstream -port P [-ips 127.0.0.1,127.0.0.2,127.0.0.3] [-nethttp]
//	gatewaybench gateway  -listen ADDR -port P [-ips ...] [-pprof ADDR]
//	gatewaybench freeport -ips 127.0.0.1,127.0.0.2,127.0.0.3
//
// upstream serves a ~100-byte body on every IP at port P. By default it is
// a minimal HTTP/1.1 keep-alive responder (it reads a request head, answers
// a fixed response), so that the upstreams cost the load core as little as
// possible and the comparison is about the proxies; -nethttp uses a plain
// net/http server instead.
//
// gateway starts xds.Server and gateway.Gateway exactly as `berth server`
// and `berth gateway` do, publishes one service (host "*", path "/") whose
// three endpoints are the upstreams, waits for the gateway's ACK and prints
// "ready". It serves until SIGINT/SIGTERM.
//
// freeport prints a port free on every IP given.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	_ "net/http/pprof" // served only with -pprof, on loopback
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/berth-dev/berth/discovery"
	"github.com/berth-dev/berth/gateway"
	"github.com/berth-dev/berth/xds"
)

// body is the upstream's answer: 100 bytes.
var body = []byte(strings.Repeat("berth gateway benchmark payload. ", 3) + "0\n")

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: gatewaybench upstream|gateway|freeport [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "upstream":
		err = runUpstream(os.Args[2:])
	case "gateway":
		err = runGateway(os.Args[2:])
	case "freeport":
		err = runFreePort(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gatewaybench:", err)
		os.Exit(1)
	}
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

func splitIPs(s string) []string {
	var out []string
	for _, ip := range strings.Split(s, ",") {
		if ip = strings.TrimSpace(ip); ip != "" {
			if !strings.HasPrefix(ip, "127.") {
				fmt.Fprintln(os.Stderr, "gatewaybench: loopback addresses only:", ip)
				os.Exit(2)
			}
			out = append(out, ip)
		}
	}
	return out
}

func runFreePort(args []string) error {
	fs := flag.NewFlagSet("freeport", flag.ExitOnError)
	ips := fs.String("ips", "127.0.0.1", "addresses the port must be free on")
	_ = fs.Parse(args)
	list := splitIPs(*ips)
	for attempt := 0; attempt < 50; attempt++ {
		first, err := net.Listen("tcp", net.JoinHostPort(list[0], "0"))
		if err != nil {
			return err
		}
		port := first.Addr().(*net.TCPAddr).Port
		ok := true
		for _, ip := range list[1:] {
			l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			l.Close()
		}
		first.Close()
		if ok {
			fmt.Println(port)
			return nil
		}
	}
	return errors.New("no common free port")
}

func runUpstream(args []string) error {
	fs := flag.NewFlagSet("upstream", flag.ExitOnError)
	port := fs.Int("port", 0, "port on every IP")
	ips := fs.String("ips", "127.0.0.1,127.0.0.2,127.0.0.3", "IPs to serve on")
	useNetHTTP := fs.Bool("nethttp", false, "use net/http instead of the minimal responder")
	_ = fs.Parse(args)
	ctx, cancel := signalContext()
	defer cancel()
	var lis []net.Listener
	for _, ip := range splitIPs(*ips) {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(*port)))
		if err != nil {
			return err
		}
		lis = append(lis, l)
	}
	for _, l := range lis {
		if *useNetHTTP {
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header()["Content-Type"] = []string{"text/plain"}
				w.Write(body)
			})}
			go srv.Serve(l)
		} else {
			go serveMinimal(l)
		}
	}
	fmt.Println("ready")
	<-ctx.Done()
	for _, l := range lis {
		l.Close()
	}
	return nil
}

// serveMinimal answers every request head with the fixed response. It
// handles pipelining and ignores request bodies (the benchmark sends GETs).
func serveMinimal(l net.Listener) {
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n")
	resp = append(resp, body...)
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			r := bufio.NewReaderSize(c, 8192)
			out := make([]byte, 0, 4*len(resp))
			for {
				// Read one request head.
				for {
					line, err := r.ReadSlice('\n')
					if err != nil {
						return
					}
					if len(bytes.TrimRight(line, "\r\n")) == 0 {
						break
					}
				}
				out = append(out, resp...)
				if r.Buffered() == 0 {
					if _, err := c.Write(out); err != nil {
						return
					}
					out = out[:0]
				}
			}
		}()
	}
}

func runGateway(args []string) error {
	fs := flag.NewFlagSet("gateway", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "gateway address")
	port := fs.Int("port", 0, "upstream port")
	ips := fs.String("ips", "127.0.0.1,127.0.0.2,127.0.0.3", "upstream IPs")
	pprofAddr := fs.String("pprof", "", "serve net/http/pprof here (loopback)")
	_ = fs.Parse(args)
	ctx, cancel := signalContext()
	defer cancel()

	if *pprofAddr != "" {
		if !strings.HasPrefix(*pprofAddr, "127.") {
			return errors.New("-pprof must be a loopback address")
		}
		go http.ListenAndServe(*pprofAddr, nil)
	}

	xcfg := xds.DefaultConfig()
	xcfg.Addr = "127.0.0.1:0"
	xcfg.Registerer = prometheus.NewRegistry()
	xsrv, err := xds.New(xcfg)
	if err != nil {
		return err
	}
	xdone := make(chan error, 1)
	go func() { xdone <- xsrv.Run(ctx) }()

	var eps []discovery.Endpoint
	for i, ip := range splitIPs(*ips) {
		eps = append(eps, discovery.Endpoint{Instance: fmt.Sprintf("bench-%d", i), Node: "n1", IP: ip, Ready: true})
	}
	snap := &discovery.Snapshot{Version: 1, Services: []discovery.Service{{
		Namespace: "default", Name: "bench",
		Ports:     []discovery.Port{{Name: "http", Port: uint32(*port), Protocol: "http"}},
		Route:     &discovery.Route{Hosts: []string{"*"}, Paths: []string{"/"}},
		Revisions: []discovery.Revision{{Number: 1, Weight: 100, Endpoints: eps}},
	}}}
	if err := xsrv.Update(snap); err != nil {
		return err
	}

	gcfg := gateway.DefaultConfig()
	gcfg.ListenAddr, gcfg.XDSAddr, gcfg.NodeID = *listen, xsrv.Addr(), "bench-gateway"
	gcfg.Registerer = prometheus.NewRegistry()
	gcfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	gw, err := gateway.New(gcfg)
	if err != nil {
		return err
	}
	gdone := make(chan error, 1)
	go func() { gdone <- gw.Run(ctx) }()

	ackCtx, ackCancel := context.WithTimeout(ctx, 20*time.Second)
	err = xsrv.WaitForAck(ackCtx, 1)
	ackCancel()
	if err != nil {
		return fmt.Errorf("gateway never ACKed: %w", err)
	}
	fmt.Println("ready", gw.Addr())
	if err := <-gdone; err != nil {
		return err
	}
	if err := <-xdone; err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
