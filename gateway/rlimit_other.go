//go:build !unix

package gateway

func openFileLimit() int { return 0 }
