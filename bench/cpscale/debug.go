package main

import (
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // the -debug-addr listener's handlers
)

// serveDebug serves net/http/pprof on addr, which must be a loopback
// address: the profiles show the control plane's internals.
func serveDebug(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-debug-addr %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("-debug-addr %q: want a loopback address such as 127.0.0.1:6060", addr)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go http.Serve(ln, nil)
	return nil
}
