package api

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseCPU reads a CPU quantity: "250m" (milli-CPUs), "0.5" or "2" (CPUs).
// An empty string is zero.
func ParseCPU(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	if m, ok := strings.CutSuffix(s, "m"); ok {
		v, err := strconv.ParseInt(m, 10, 64)
		if err != nil || v < 0 {
			return 0, fmt.Errorf("invalid cpu %q: want e.g. \"250m\" or \"0.5\"", s)
		}
		return v, nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || f > 1e6 {
		return 0, fmt.Errorf("invalid cpu %q: want e.g. \"250m\" or \"0.5\"", s)
	}
	return int64(f*1000 + 0.5), nil
}

var memSuffixes = []struct {
	suffix string
	mult   int64
}{
	{"Ki", 1 << 10}, {"Mi", 1 << 20}, {"Gi", 1 << 30}, {"Ti", 1 << 40},
	{"k", 1e3}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12},
}

// ParseMemory reads a memory quantity: "128Mi", "1G", "1048576". An empty
// string is zero.
func ParseMemory(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	mult := int64(1)
	num := s
	for _, m := range memSuffixes {
		if v, ok := strings.CutSuffix(s, m.suffix); ok {
			num, mult = v, m.mult
			break
		}
	}
	v, err := strconv.ParseInt(num, 10, 64)
	if err != nil || v < 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("invalid memory %q: want e.g. \"128Mi\" or \"1G\"", s)
	}
	return v * mult, nil
}

// Request returns what a template asks of a node. Unparseable quantities
// count as zero: validation rejects them before they are stored.
func (r Resources) Request() Capacity {
	cpu, _ := ParseCPU(r.CPU)
	mem, _ := ParseMemory(r.Memory)
	return Capacity{MilliCPU: cpu, MemoryBytes: mem}
}
