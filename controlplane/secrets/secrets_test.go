package secrets

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSealOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "keys", "secrets.key")
	b, err := LoadOrCreate(path)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", st.Mode(), err)
	}
	again, err := LoadOrCreate(path)
	if err != nil || again.ID != b.ID {
		t.Fatalf("reloaded key: %v (id %s, want %s)", err, again.ID, b.ID)
	}
	data := map[string][]byte{"password": []byte("hunter2"), "cert.pem": {0, 1, 2}}
	s, err := b.Seal("shop/db", data)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(s.Box, []byte("hunter2")) || strings.Join(s.Keys, ",") != "cert.pem,password" {
		t.Fatalf("sealed: %+v", s)
	}
	got, err := again.Open("shop/db", s)
	if err != nil || string(got["password"]) != "hunter2" || !bytes.Equal(got["cert.pem"], []byte{0, 1, 2}) {
		t.Fatalf("open: %v %v", got, err)
	}
	// Same values, same digest; other values or another name, another.
	s2, _ := b.Seal("shop/db", data)
	if s2.Digest != s.Digest || bytes.Equal(s2.Box, s.Box) {
		t.Error("digest must be stable and the nonce fresh")
	}
	if s3, _ := b.Seal("shop/db", map[string][]byte{"password": []byte("hunter3"), "cert.pem": {0, 1, 2}}); s3.Digest == s.Digest {
		t.Error("digest did not change with the value")
	}
	if _, err := b.Open("shop/other", s); err == nil {
		t.Error("a sealed value opened under another secret's name")
	}
	tampered := s
	tampered.Box = bytes.Clone(s.Box)
	tampered.Box[len(tampered.Box)-1] ^= 1
	if _, err := b.Open("shop/db", tampered); err == nil || !strings.Contains(err.Error(), "tampered") {
		t.Errorf("tampered: %v", err)
	}
	other, err := LoadOrCreate(filepath.Join(t.TempDir(), "other.key"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Open("shop/db", s); err == nil || !strings.Contains(err.Error(), "--secrets-key-file") {
		t.Errorf("another key: %v", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(path); err == nil {
		t.Error("a world-readable key was accepted")
	}
}
