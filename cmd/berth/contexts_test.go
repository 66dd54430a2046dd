package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.Execute()
	return out.String(), err
}

// Contexts: set from an admin.conf, listed, switched; a context's
// namespace becomes -n's default; the file stays the owner's.
func TestContexts(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config")
	admin := filepath.Join(dir, "admin.conf")
	os.WriteFile(admin, []byte("server: 10.0.0.1:7400\ncaHash: sha256:x\nca: CA-PEM\ntoken: secret\n"), 0o600)
	if out, err := run(t, "--config", cfg, "config", "set-context", "prod", "--from", admin, "--namespace", "shop"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	if out, err := run(t, "--config", cfg, "config", "set-context", "dev", "--from", admin, "--server", "127.0.0.1:7400"); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	out, _ := run(t, "--config", cfg, "config", "get-contexts")
	if !strings.Contains(out, "*        prod  10.0.0.1:7400   shop") || !strings.Contains(out, "dev   127.0.0.1:7400  -") {
		t.Fatalf("get-contexts:\n%s", out)
	}
	if _, err := run(t, "--config", cfg, "config", "use-context", "dev"); err != nil {
		t.Fatal(err)
	}
	if out, _ := run(t, "--config", cfg, "config", "current-context"); out != "dev\n" {
		t.Fatalf("current-context %q", out)
	}
	if _, err := run(t, "--config", cfg, "config", "use-context", "nope"); err == nil || !strings.Contains(err.Error(), `no context "nope"`) {
		t.Fatalf("use-context nope: %v", err)
	}
	g := &globalOptions{config: cfg, context: "prod"}
	cc, err := g.activeContext()
	if err != nil || cc.Server != "10.0.0.1:7400" || cc.Namespace != "shop" || cc.Token != "secret" {
		t.Fatalf("context prod: %+v %v", cc, err)
	}
	if st, _ := os.Stat(cfg); st.Mode().Perm() != 0o600 {
		t.Fatalf("config mode %v", st.Mode())
	}
	// The old single-cluster form still reads.
	g = &globalOptions{config: admin}
	if cc, err := g.activeContext(); err != nil || cc.Server != "10.0.0.1:7400" {
		t.Fatalf("admin.conf: %+v %v", cc, err)
	}
}
