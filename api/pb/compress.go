package pb

// The discovery feed is gzip-compressed when the agent asks for it in
// gzip (Compressed): its deltas carry whole services' endpoint lists, and a
// 10,000-instance deploy to 1,000 nodes sent a gigabyte uncompressed. gRPC
// bounds a decompressed message by the receiver's maximum message size.
import (
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding/gzip"
)

// Compressed is the call option of the discovery feed's callers: gRPC
// answers a stream in the compression its request came in.
func Compressed() grpc.CallOption { return grpc.UseCompressor(gzip.Name) }
