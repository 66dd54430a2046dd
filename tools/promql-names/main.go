// Command promql-names parses PromQL expressions with Prometheus' own
// parser and prints the metric names each one selects. The Grafana
// dashboard and alerting rules test (integration/grafana_test.go) runs it
// to check that every metric they query exists in a running berth dev.
//
// A module of its own (like tools/staticcheck) so that Prometheus'
// dependencies do not move the project's; installed as bin/promql-names.
//
// Input on stdin: a JSON array of expressions. Output on stdout: a JSON
// array of the same length, each {"names": [...]} or {"error": "..."}.
//
// With -rules FILE it checks a Prometheus rule file as Prometheus loads
// it (model/rulefmt: unknown fields, durations, label names, templates,
// expressions) and prints each problem; exit status 1 if there is one.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"slices"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

type result struct {
	Names []string `json:"names"`
	Error string   `json:"error,omitempty"`
}

// names are the metric names expr selects: each vector selector's name,
// or its __name__ matcher when that is an equality. A selector without
// either is an error here: the dashboard names what it queries.
func names(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	var out []string
	var inspectErr error
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		if name == "" {
			for _, m := range vs.LabelMatchers {
				if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
					name = m.Value
				}
			}
		}
		if name == "" {
			inspectErr = fmt.Errorf("selector %s names no metric", vs)
			return nil
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
		return nil
	})
	return out, inspectErr
}

// checkRules prints every problem Prometheus would find loading path.
func checkRules(path string) int {
	_, errs := rulefmt.ParseFile(path, false, model.LegacyValidation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	for _, err := range errs {
		fmt.Println(err)
	}
	if len(errs) > 0 {
		return 1
	}
	return 0
}

func main() {
	rules := flag.String("rules", "", "check this Prometheus rule file instead of reading expressions")
	flag.Parse()
	if *rules != "" {
		os.Exit(checkRules(*rules))
	}
	var exprs []string
	if err := json.NewDecoder(os.Stdin).Decode(&exprs); err != nil {
		fmt.Fprintln(os.Stderr, "promql-names: read a JSON array of expressions on stdin:", err)
		os.Exit(2)
	}
	out := make([]result, len(exprs))
	for i, e := range exprs {
		ns, err := names(e)
		out[i].Names = ns
		if err != nil {
			out[i].Error = err.Error()
		}
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "promql-names:", err)
		os.Exit(1)
	}
}
