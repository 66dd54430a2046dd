package main

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckSnapshotRefusesDamage: a snapshot cut short or with a byte
// changed is refused before a restore uses it.
func TestCheckSnapshotRefusesDamage(t *testing.T) {
	body := []byte(strings.Repeat("etcd database page ", 200))
	sum := sha256.Sum256(body)
	good := append(append([]byte{}, body...), sum[:]...)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if err := checkSnapshot(write("good", good)); err != nil {
		t.Fatalf("a whole snapshot: %v", err)
	}
	flipped := append([]byte{}, good...)
	flipped[100] ^= 1
	for name, data := range map[string][]byte{"truncated": good[:len(good)-1000], "flipped": flipped, "tiny": good[:40]} {
		if err := checkSnapshot(write(name, data)); err == nil {
			t.Errorf("%s snapshot accepted", name)
		}
	}
}
