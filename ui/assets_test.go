package ui

import (
	"io/fs"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestAssetsKeepToTheCSP checks the embedded pages against the policy the
// server sends (contentSecurityPolicy): no inline script or style, no
// eval, nothing from another origin, and every file the pages name is
// embedded. A page that broke one of these would load blank in a browser
// with no error a Go test sees; integration/dashboard_test.go is the
// browser's own check.
func TestAssetsKeepToTheCSP(t *testing.T) {
	assets, err := fs.Sub(assetsFS, "assets")
	if err != nil {
		t.Fatal(err)
	}
	index, err := fs.ReadFile(assets, "index.html")
	if err != nil {
		t.Fatal(err)
	}
	html := string(index)
	if m := regexp.MustCompile(`(?i)<script(?:\s[^>]*)?>\s*[^<\s]`).FindString(html); m != "" {
		t.Errorf("index.html has an inline script: %q", m)
	}
	for _, re := range []string{`(?i)<style`, `(?i)\sstyle=`, `(?i)\son[a-z]+=`, `(?i)javascript:`} {
		if m := regexp.MustCompile(re).FindString(html); m != "" {
			t.Errorf("index.html has %q, which the CSP refuses", m)
		}
	}
	refs := regexp.MustCompile(`(?:src|href)="([^"#]+)"`).FindAllStringSubmatch(html, -1)
	if len(refs) < 4 {
		t.Fatalf("index.html names %d files; want the app, its style and uPlot", len(refs))
	}
	for _, m := range refs {
		ref := m[1]
		if !strings.HasPrefix(ref, "/assets/") {
			t.Errorf("index.html loads %q: everything comes from /assets/ of this origin", ref)
			continue
		}
		if _, err := fs.Stat(assets, strings.TrimPrefix(ref, "/assets/")); err != nil {
			t.Errorf("index.html names %s, which is not embedded: %v", ref, err)
		}
	}

	// The app's modules: every import resolves to an embedded file, and
	// none evaluates strings or parses HTML.
	err = fs.WalkDir(assets, "js", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(assets, path)
		if err != nil {
			return err
		}
		src := string(b)
		for _, bad := range []string{"eval(", "new Function", "innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "setAttribute('style'", "http://", "https://"} {
			if strings.Contains(src, bad) {
				t.Errorf("%s uses %s", path, bad)
			}
		}
		for _, m := range regexp.MustCompile(`(?m)^\s*import .* from '([^']+)';`).FindAllStringSubmatch(src, -1) {
			target := resolve(path, m[1])
			if _, err := fs.Stat(assets, target); err != nil {
				t.Errorf("%s imports %s (%s), which is not embedded", path, m[1], target)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// resolve joins a relative module specifier to the importing file's
// directory.
func resolve(from, spec string) string {
	parts := strings.Split(from, "/")
	parts = parts[:len(parts)-1]
	for _, p := range strings.Split(spec, "/") {
		switch p {
		case ".":
		case "..":
			parts = parts[:len(parts)-1]
		default:
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, "/")
}

// TestVendoredUPlotIsTheScriptsVersion: the vendored files are the release
// scripts/vendor-ui.sh names, with its licence.
func TestVendoredUPlotIsTheScriptsVersion(t *testing.T) {
	script, err := os.ReadFile("../scripts/vendor-ui.sh")
	if err != nil {
		t.Fatal(err)
	}
	version := regexp.MustCompile(`(?m)^VERSION=(\S+)`).FindStringSubmatch(string(script))
	integrity := regexp.MustCompile(`(?m)^INTEGRITY=(\S+)`).FindStringSubmatch(string(script))
	if version == nil || integrity == nil {
		t.Fatal("scripts/vendor-ui.sh names no VERSION or INTEGRITY")
	}
	got, err := fs.ReadFile(assetsFS, "assets/vendor/uplot/VERSION")
	if err != nil {
		t.Fatal(err)
	}
	if want := version[1] + " " + integrity[1]; strings.TrimSpace(string(got)) != want {
		t.Errorf("vendored uPlot is %q, the script says %q: run scripts/vendor-ui.sh", strings.TrimSpace(string(got)), want)
	}
	for _, f := range []string{"uPlot.iife.min.js", "uPlot.min.css", "LICENSE"} {
		if _, err := fs.Stat(assetsFS, "assets/vendor/uplot/"+f); err != nil {
			t.Error(err)
		}
	}
}
