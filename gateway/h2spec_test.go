package gateway

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// h2specPath finds the h2spec binary: $H2SPEC, then bin/h2spec at the
// repository root (where `make h2spec` puts it), then $PATH. It fails the
// test when there is none: conformance is not optional.
func h2specPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("H2SPEC"); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("H2SPEC=%s: %v", p, err)
		}
		return p
	}
	if p, err := filepath.Abs(filepath.Join("..", "bin", "h2spec")); err == nil {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("h2spec"); err == nil {
		return p
	}
	t.Fatal("h2spec not found (looked at $H2SPEC, bin/h2spec, $PATH): run `make h2spec` at the repository root " +
		"(it runs `cd tools/h2spec && GOBIN=$PWD/../../bin go install tool`: h2spec v2.2.1+incompatible from the Go module proxy)")
	return ""
}

// h2specCase is one test case of an h2spec JUnit report.
type h2specCase struct {
	Package string `xml:"package,attr"` // the group, e.g. "http2/6.5.3"
	Desc    string `xml:"classname,attr"`
	Failure *struct {
		Text string `xml:",innerxml"`
	} `xml:"failure"`
	Error *struct {
		Text string `xml:",innerxml"`
	} `xml:"error"`
	Skipped *struct{} `xml:"skipped"`
}

type h2specReport struct {
	Suites []struct {
		Cases []h2specCase `xml:"testcase"`
	} `xml:"testsuite"`
}

// h2specResult is what one run of h2spec found.
type h2specResult struct {
	total, skipped int
	failed         []string // "http2/8.1.2.2/1 <description>: <expected / actual>"
}

// parseH2specReport reads h2spec's JUnit report. Cases are numbered
// within their group as h2spec numbers them (http2/6.5.3/1 is the first
// case of section 6.5.3), so a failure can be run alone with
// `h2spec http2/6.5.3/1`.
func parseH2specReport(b []byte) (h2specResult, error) {
	var rep h2specReport
	if err := xml.Unmarshal(b, &rep); err != nil {
		return h2specResult{}, fmt.Errorf("h2spec report: %w", err)
	}
	var res h2specResult
	for _, s := range rep.Suites {
		for i, c := range s.Cases {
			res.total++
			id := fmt.Sprintf("%s/%d %s", c.Package, i+1, c.Desc)
			switch {
			case c.Skipped != nil:
				res.skipped++
			case c.Failure != nil:
				res.failed = append(res.failed, id+": "+h2specFailure(c.Failure.Text))
			case c.Error != nil:
				res.failed = append(res.failed, id+": "+h2specFailure(c.Error.Text))
			}
		}
	}
	return res, nil
}

// h2specFailure puts a failure's text on one line. h2spec writes the
// events it expected, one a line, then the one it got.
func h2specFailure(text string) string {
	var lines []string
	for _, l := range strings.Split(text, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) < 2 {
		return strings.Join(lines, " ")
	}
	return "expected " + strings.Join(lines[:len(lines)-1], " or ") + "; got " + lines[len(lines)-1]
}

// runH2spec runs every h2spec case against addr and returns the result.
func runH2spec(t *testing.T, bin, addr string, tls bool) h2specResult {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	report := filepath.Join(t.TempDir(), "h2spec.xml")
	args := []string{"-h", host, "-p", port, "-o", "5", "-j", report}
	if tls {
		args = append(args, "-t", "-k")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	var exit *exec.ExitError
	if runErr != nil && !errors.As(runErr, &exit) {
		t.Fatalf("h2spec %s: %v\n%s", strings.Join(args, " "), runErr, out.String())
	}
	b, err := os.ReadFile(report)
	if err != nil {
		t.Fatalf("h2spec wrote no report (%v): %v\n%s", runErr, err, out.String())
	}
	res, err := parseH2specReport(b)
	if err != nil {
		t.Fatal(err)
	}
	if res.total == 0 {
		t.Fatalf("h2spec ran no case\n%s", out.String())
	}
	if runErr != nil && len(res.failed) == 0 {
		t.Fatalf("h2spec failed without a failing case: %v\n%s", runErr, out.String())
	}
	if testing.Verbose() {
		t.Logf("h2spec %s:\n%s", strings.Join(args, " "), out.String())
	}
	return res
}

// TestH2spec runs the h2spec conformance suite against the gateway's
// plain listener (h2c with prior knowledge, handed over by the fast path)
// and its TLS listener (ALPN h2); every case must pass.
func TestH2spec(t *testing.T) {
	bin := h2specPath(t)
	dir := t.TempDir()
	cert, _ := writeCert(t, dir, "h2spec", "localhost")
	up := upstream(t, func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		// At least 5 bytes: h2spec skips its flow-control cases on
		// shorter bodies.
		io.WriteString(w, "hello from the upstream\n")
	})
	g := testGateway(t, func(c *Config) {
		c.TLSListenAddr = "127.0.0.1:0"
		c.Certificates = []Certificate{cert}
	})
	install(g, nil, up.URL)
	for _, l := range []struct {
		name string
		addr string
		tls  bool
	}{
		{"h2c", g.Addr(), false},
		{"tls", g.TLSAddr(), true},
	} {
		t.Run(l.name, func(t *testing.T) {
			res := runH2spec(t, bin, l.addr, l.tls)
			passed := res.total - res.skipped - len(res.failed)
			t.Logf("h2spec %s: %d/%d passed, %d skipped", l.name, passed, res.total, res.skipped)
			for _, f := range res.failed {
				t.Errorf("h2spec %s: %s", l.name, f)
			}
			if res.skipped > 0 {
				t.Errorf("h2spec %s: %d cases skipped", l.name, res.skipped)
			}
		})
	}
}
