//go:build !linux

package dns

import (
	"errors"
	"net"
)

func listenConfig(freeBind bool) (net.ListenConfig, error) {
	if freeBind {
		return net.ListenConfig{}, errors.New("dns: FreeBind is only supported on Linux")
	}
	return net.ListenConfig{}, nil
}
