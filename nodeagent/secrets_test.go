package nodeagent

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

// Secret files of instances whose containers are gone (removed while the
// agent was down) are swept at start; those of adopted containers stay.
func TestSweepSecrets(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Runtime.StateDir = t.TempDir()
	a := &Agent{cfg: cfg, logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, id := range []string{"kept-1", "gone-1"} {
		if err := os.MkdirAll(a.secretsDir(id), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(a.secretsDir(id), "password"), []byte("hunter2"), 0o400); err != nil {
			t.Fatal(err)
		}
	}
	a.sweepSecrets(map[string]bool{"kept-1": true})
	if _, err := os.Stat(a.secretsDir("gone-1")); !os.IsNotExist(err) {
		t.Fatalf("the gone instance's secrets are still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(a.secretsDir("kept-1"), "password")); err != nil {
		t.Fatalf("an adopted instance's secrets were removed: %v", err)
	}
}
