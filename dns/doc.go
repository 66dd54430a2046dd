// Package dns is Berth's service-discovery DNS server, authoritative for the
// cluster zone (berth.internal. by default).
//
// It answers from discovery snapshots only and forwards other names only
// for the pod networks it is told to serve: never an open resolver.
//
// How it works, part by part, and the rules it keeps: README.md in this
// directory.
package dns
