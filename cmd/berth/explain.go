package main

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/berth-dev/berth/docs"
	"github.com/berth-dev/berth/manifests"
	"github.com/spf13/cobra"
)

// section is one field of docs/manifest.md.
type section struct {
	path, body string
}

func manifestSections() []section {
	var out []section
	parts := strings.Split(docs.Manifest, "\n### ")
	for _, p := range parts[1:] {
		path, body, _ := strings.Cut(p, "\n")
		if i := strings.Index(body, "\n## "); i >= 0 {
			body = body[:i]
		}
		out = append(out, section{path: path, body: strings.TrimSpace(body)})
	}
	return out
}

// explainKinds maps the names of the manifest kinds to their sections.
var explainKinds = map[string]string{
	"service": "service", "services": "service", "svc": "service",
	"volume": "volume", "volumes": "volume", "vol": "volume",
	"secret": "secret", "secrets": "secret",
}

// explain prints the field at path and its fields; "" lists the kinds.
func explain(w io.Writer, path string) error {
	path = strings.TrimSpace(strings.ToLower(path))
	// The first segment names the kind (any of get's names for it); a
	// path without one is a Service's: spec.health.
	first, rest, _ := strings.Cut(path, ".")
	if kind, ok := explainKinds[first]; ok {
		path = strings.TrimSuffix(kind+"."+rest, ".")
	} else {
		path = "service." + path
	}
	secs := manifestSections()
	var self *section
	var children []section
	norm := func(p string) string { return strings.ReplaceAll(strings.ToLower(p), "[]", "") }
	for i := range secs {
		p := norm(secs[i].path)
		if p == path {
			self = &secs[i]
		}
		if rest, ok := strings.CutPrefix(p, path+"."); ok && !strings.Contains(rest, ".") {
			children = append(children, secs[i])
		}
	}
	if self == nil && len(children) == 0 {
		parent, leaf := path[:max(strings.LastIndex(path, "."), 0)], path[strings.LastIndex(path, ".")+1:]
		var siblings []string
		for _, s := range secs {
			if rest, ok := strings.CutPrefix(norm(s.path), parent+"."); ok && !strings.Contains(rest, ".") {
				siblings = append(siblings, rest)
			}
		}
		if near := manifests.Closest(leaf, siblings); near != "" {
			return fmt.Errorf("explain: no field %s; did you mean %s.%s?", path, parent, near)
		}
		sort.Strings(siblings)
		if len(siblings) > 0 {
			return fmt.Errorf("explain: no field %s; %s has %s", path, parent, strings.Join(siblings, ", "))
		}
		return fmt.Errorf("explain: no field %s (try berth explain service, volume or secret)", path)
	}
	if self != nil {
		fmt.Fprintf(w, "FIELD: %s\n%s\n", self.path, self.body)
	} else {
		fmt.Fprintf(w, "KIND: %s\n", path)
	}
	if len(children) > 0 {
		fmt.Fprintln(w, "\nFIELDS:")
		for _, c := range children {
			typ := ""
			for _, l := range strings.Split(c.body, "\n") {
				if t, ok := strings.CutPrefix(l, "- type: "); ok {
					typ = t
				}
			}
			name := c.path[strings.LastIndex(c.path, ".")+1:]
			fmt.Fprintf(w, "  %-22s %s\n", name, typ)
		}
	}
	return nil
}

func newExplainCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "explain KIND[.FIELD...]",
		Short: "Describe a manifest field: its type, default, an example and what it does (berth explain service.spec.health)",
		Long: `Describe a manifest field and list its fields, from the field reference
built into the binary (docs/manifest.md). A path without a kind is a
Service's: berth explain spec.rollout.steps.`,
		Args: exactArgs(1, "explain KIND[.FIELD...] (e.g. service.spec.health)"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return explain(cmd.OutOrStdout(), args[0])
		},
	}
}
