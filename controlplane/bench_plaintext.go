//go:build berthbench

package controlplane

// SetBenchPlaintext makes the control planes created next serve their API
// without TLS, for bench-cp-scale's side-by-side run without mTLS. Only a
// build with the berthbench tag has it.
func SetBenchPlaintext(on bool) { benchPlaintext = on }
