package main

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// curvePoint is one run of the sweep.
type curvePoint struct {
	nodes, instances int
	figs             map[string]float64
}

// curveMetric is one line of the sweep's table and one panel of its plot.
type curveMetric struct {
	title, unit string
	value       func(p curvePoint) float64
}

var curveMetrics = []curveMetric{
	{"CPU per heartbeat", "µs", func(p curvePoint) float64 { return p.figs["steady: CPU per heartbeat"] }},
	{"steady state, idle", "% of a core", func(p curvePoint) float64 { return p.figs["steady: control plane, % of one core"] }},
	{"deploy rate (10 instances a node, unpaced)", "instances/s", func(p curvePoint) float64 {
		if s := p.figs["deploy: all ready"]; s > 0 {
			return float64(p.instances) / s
		}
		return 0
	}},
	{"endpoint change -> every node's DNS, p99", "ms", func(p curvePoint) float64 { return p.figs["endpoint change -> nodes' DNS, p99"] }},
	{"endpoint change -> every gateway ACKed, p99", "ms", func(p curvePoint) float64 { return p.figs["endpoint change -> gateways ACKed, p99"] }},
	{"control plane RSS", "MiB", func(p curvePoint) float64 { return p.figs["control plane RSS"] }},
}

// runCurve runs the benchmark (mutual TLS) at each node count of sizes,
// with as many gateways as nodes and ten instances a node (services of
// 100 replicas, applied 20 services a call without waiting), and prints how each figure grows with N, as a table and
// a PNG plot written to out.
func runCurve(o options, sizes, out string) error {
	var points []curvePoint
	for f := range strings.SplitSeq(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 3 {
			return fmt.Errorf("-curve %q: want node counts of at least 3, like 100,300,1000", sizes)
		}
		run := o
		run.nodes, run.gateways = n, n
		run.replicas, run.services = 100, max(1, n/10)
		run.rollouts, run.nodeLoss = 0, false
		run.batch, run.paced = 20, false // the deploy: not one call at a time
		fmt.Printf("\n=== curve: %d nodes, %d gateways, %d instances ===\n", n, n, run.services*run.replicas)
		figs, err := runOnce(run, false)
		if err != nil {
			return fmt.Errorf("curve at %d nodes: %w", n, err)
		}
		p := curvePoint{nodes: n, instances: run.services * run.replicas, figs: map[string]float64{}}
		for _, f := range figs {
			p.figs[f.name] = f.value
		}
		points = append(points, p)
	}
	fmt.Printf("\ncurve (mutual TLS, this machine; x N/N0 is the figure's growth against the node count's):\n%-58s", "")
	for _, p := range points {
		fmt.Printf(" %14s", fmt.Sprintf("%d nodes", p.nodes))
	}
	fmt.Println()
	for _, m := range curveMetrics {
		fmt.Printf("%-58s", m.title+" ("+m.unit+")")
		for _, p := range points {
			fmt.Printf(" %14.1f", m.value(p))
		}
		if first, last := points[0], points[len(points)-1]; len(points) > 1 && m.value(first) > 0 {
			fmt.Printf("   x%.2f for N x%.0f", m.value(last)/m.value(first), float64(last.nodes)/float64(first.nodes))
		}
		fmt.Println()
	}
	if err := plotCurve(points, out); err != nil {
		return err
	}
	fmt.Printf("plot: %s\n", out)
	return nil
}

// plotCurve draws one panel per metric against the node count.
func plotCurve(points []curvePoint, out string) error {
	const cols = 3
	rows := (len(curveMetrics) + cols - 1) / cols
	img := vgimg.New(vg.Length(cols)*4*vg.Inch, vg.Length(rows)*3*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: rows, Cols: cols, PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 4,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 2}
	plots := make([][]*plot.Plot, rows)
	for i := range rows {
		plots[i] = make([]*plot.Plot, cols)
		for j := range cols {
			k := i*cols + j
			if k >= len(curveMetrics) {
				continue
			}
			m := curveMetrics[k]
			p := plot.New()
			p.Title.Text = m.title
			p.X.Label.Text = "nodes"
			p.Y.Label.Text = m.unit
			p.Y.Min = 0
			xys := make(plotter.XYs, len(points))
			for n, pt := range points {
				xys[n].X, xys[n].Y = float64(pt.nodes), m.value(pt)
			}
			line, scatter, err := plotter.NewLinePoints(xys)
			if err != nil {
				return err
			}
			line.Color = color.RGBA{R: 31, G: 119, B: 180, A: 255}
			scatter.Color = line.Color
			p.Add(plotter.NewGrid(), line, scatter)
			plots[i][j] = p
		}
	}
	canvases := plot.Align(plots, tiles, dc)
	for i := range rows {
		for j := range cols {
			if plots[i][j] != nil {
				plots[i][j].Draw(canvases[i][j])
			}
		}
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		return err
	}
	return f.Close()
}
