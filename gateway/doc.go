// Package gateway is Berth's own edge data plane: an xDS client that keeps
// an immutable routing table and an HTTP proxy that serves from it.
//
// It decides nothing about where traffic goes: routes, weights and
// endpoints come from xDS. It must not count a client's fault against an
// upstream (outcome.go).
//
// How it works, part by part, and the rules it keeps: README.md in this
// directory.
package gateway
