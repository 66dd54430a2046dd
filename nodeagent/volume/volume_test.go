package volume

import (
	"os"
	"path/filepath"
	"testing"
)

// A volume is a directory under Root, kept until removed; names that are
// not DNS labels never become paths. (Sized volumes, loop-mounted, are
// covered end to end by integration TestVolumes.)
func TestStore(t *testing.T) {
	s := Store{Root: t.TempDir()}
	dir, err := s.Dir("shop", "data", 0)
	if err != nil || dir != filepath.Join(s.Root, "shop", "data") {
		t.Fatalf("Dir: %q, %v", dir, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if again, err := s.Dir("shop", "data", 0); err != nil || again != dir {
		t.Fatalf("Dir again: %q, %v", again, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "f")); err != nil {
		t.Fatalf("data gone after a second Dir: %v", err)
	}
	for _, bad := range [][2]string{{"..", "x"}, {"shop", "../../etc"}, {"shop", ""}, {"Shop", "data"}} {
		if _, err := s.Dir(bad[0], bad[1], 0); err == nil {
			t.Errorf("Dir(%q, %q) accepted", bad[0], bad[1])
		}
		if _, err := s.Remove(bad[0], bad[1]); err == nil {
			t.Errorf("Remove(%q, %q) accepted", bad[0], bad[1])
		}
	}
	if got, err := s.Remove("shop", "data"); err != nil || got != dir {
		t.Fatalf("Remove: %q, %v", got, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the volume's data is still there: %v", err)
	}
}
