// Package xds owns the translation of the discovery snapshot into Envoy v3
// resources, the aggregated discovery service (ADS) that serves them to
// gateways (Berth's own and real Envoy) and to proxyless gRPC clients, the
// record of which client has ACKed or NACKed which version, and the Load
// Reporting Service (LRS) that gateways send per-revision request counts to.
//
// It translates snapshots and serves them; it decides nothing (what a
// snapshot holds is discovery.Build's) and serves only authenticated
// gateways.
//
// How it works, part by part, and the rules it keeps: README.md in this
// directory.
package xds
