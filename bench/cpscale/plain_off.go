//go:build !berthbench

package main

import (
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// canPlain: without -tags berthbench the control plane speaks mTLS only.
const canPlain = false

func setPlaintext(bool) {}

func dialPlain(string, metadata.MD, ...grpc.DialOption) (*grpc.ClientConn, error) {
	return nil, errors.New("plaintext needs a build with -tags berthbench")
}

func nodeMD(string) metadata.MD { return nil }
