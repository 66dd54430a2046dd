package gateway

import (
	"hash/crc32"
	"log/slog"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/berth-dev/berth/gateway/internal/savedpb"
)

// FuzzSavedFile: whatever the state file holds, reading it and applying
// what it says never panics; it is served or refused. Each input is read
// twice: as the file itself (which almost never passes the checksum) and
// as the configuration inside a file with a right checksum, so that the
// fuzzer reaches the decoding of the configuration and restore.
//
//	go test ./gateway -run '^$' -fuzz FuzzSavedFile -fuzztime 30s -fuzzminimizetime 2s
//
// (the seeds are a few kilobytes: minimizing one at the default 60 s
// stalls the run).
func FuzzSavedFile(f *testing.F) {
	for _, delta := range []bool{true, false} {
		b, err := encodeSaved(savedSnapshot(f, delta))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		var file savedpb.File
		if err := proto.Unmarshal(b, &file); err != nil {
			f.Fatal(err)
		}
		f.Add(file.GetConfiguration())
	}
	f.Add([]byte{})
	f.Add([]byte("\x0a\x02\x08\x01\x15\x00\x00\x00\x00"))

	cfg := DefaultConfig()
	cfg.XDSAddr, cfg.NodeID = "127.0.0.1:1", "test" // savedSnapshot's
	g, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(g.closeListeners)
	g.log = slog.New(slog.DiscardHandler)

	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := proto.Marshal(&savedpb.File{Configuration: data, Crc32C: crc32.Checksum(data, castagnoli)})
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range [][]byte{data, file} {
			saved, err := decodeSaved(b)
			if err != nil {
				continue
			}
			for _, protocol := range []string{XDSDelta, XDSStateOfTheWorld} {
				g.cfg.XDSProtocol = protocol
				c := &adsClient{g: g, state: newXDSState(), held: map[string]map[string]string{}, stale: map[string]bool{}, stats: map[[2]string]*routeStats{}}
				if err := c.restore(saved); err != nil {
					continue
				}
				if len(c.stale) > 0 != g.Stale() {
					t.Fatalf("%s: %d stale types, Stale() %v", protocol, len(c.stale), g.Stale())
				}
				g.stale.Store(false)
				g.table.Store(nil)
			}
		}
	})
}
