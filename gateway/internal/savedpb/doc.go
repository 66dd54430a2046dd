// Package savedpb holds the protobuf messages of the gateway's state file
// (gateway/saved.go): the last configuration a gateway acknowledged. It
// holds no logic.
//
// Regenerate with `go generate ./gateway/internal/savedpb` (protoc and
// protoc-gen-go); the generated Go is committed so builds need no protoc.
package savedpb

//go:generate protoc -I ../../.. -I /usr/include --go_out=../../.. --go_opt=paths=source_relative gateway/internal/savedpb/saved.proto
