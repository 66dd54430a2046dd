package runtime

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// SetDNSFallback rewrites running containers' resolv.conf in place (the
// file is bind-mounted: a new inode would not reach them), keeps their
// search and options lines, and new containers get it too.
func TestSetDNSFallbackRewritesInPlace(t *testing.T) {
	r := &Runtime{cfg: Config{StateDir: t.TempDir(), DNSServers: []string{"10.213.0.1"}}}
	dir := filepath.Join(r.containersDir(), "web-1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(f, resolvConf(r.dnsServers(), []string{"default.svc.berth.internal"}, []string{"ndots:5"}), 0o644); err != nil {
		t.Fatal(err)
	}
	inode := func() uint64 {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		return st.Sys().(*syscall.Stat_t).Ino
	}
	before := inode()
	n, err := r.SetDNSFallback("10.213.1.1")
	if err != nil || n != 1 {
		t.Fatalf("rewrote %d: %v", n, err)
	}
	got, _ := os.ReadFile(f)
	want := "nameserver 10.213.0.1\nnameserver 10.213.1.1\nsearch default.svc.berth.internal\noptions ndots:5\n"
	if string(got) != want {
		t.Fatalf("resolv.conf:\n%s\nwant:\n%s", got, want)
	}
	if inode() != before {
		t.Fatal("resolv.conf was replaced, not rewritten: the container still sees the old one")
	}
	if n, _ := r.SetDNSFallback("10.213.1.1"); n != 0 {
		t.Fatalf("the same fallback again rewrote %d files", n)
	}
	if s := r.dnsServers(); len(s) != 2 || s[1] != "10.213.1.1" {
		t.Fatalf("new containers' servers: %v", s)
	}
	if _, err := r.SetDNSFallback(""); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(f); string(got) != "nameserver 10.213.0.1\nsearch default.svc.berth.internal\noptions ndots:5\n" {
		t.Fatalf("after removing the fallback:\n%s", got)
	}
}
