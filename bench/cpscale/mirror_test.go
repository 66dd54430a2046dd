package main

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"
)

// The simulated agent speaks the real agent's protocol: every NodeAgent
// call the real agent makes, the simulation makes too, except those
// listed here with why. A new call in nodeagent fails this test until the
// simulation makes it (or it is listed).
func TestSimulationMirrorsTheAgent(t *testing.T) {
	notSimulated := map[string]string{
		"FetchImage":      "no containerd: simulated containers need no image",
		"InstanceSecrets": "the benchmark's services use no secrets",
		"VolumeDeleted":   "the benchmark's services use no volumes",
		"Heartbeat":       "the agent's fallback for a control plane without the Heartbeats stream",
		"WatchDiscovery":  "the agent's fallback for a control plane without WatchDiscoveryDeltas",
	}
	calls := func(glob string) []string {
		files, _ := filepath.Glob(glob)
		re := regexp.MustCompile(`\b(?:a\.client|c)\.(Register|Heartbeat|Heartbeats|WatchAssignments|ReportStatus|WatchDiscovery|WatchDiscoveryDeltas|WatchNodes|FetchImage|VolumeDeleted|InstanceSecrets)\(`)
		var out []string
		for _, f := range files {
			if filepath.Ext(f) != ".go" || regexp.MustCompile(`_test\.go$`).MatchString(f) {
				continue
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			// RPCs called through api/pb's helpers.
			for helper, rpc := range map[string]string{"HeartbeatStream": "Heartbeats", "FollowNodes": "WatchNodes"} {
				if regexp.MustCompile(`pb\.`+helper+`\b`).Match(b) && !slices.Contains(out, rpc) {
					out = append(out, rpc)
				}
			}
			for _, m := range re.FindAllStringSubmatch(string(b), -1) {
				if !slices.Contains(out, m[1]) {
					out = append(out, m[1])
				}
			}
		}
		return out
	}
	real, sim := calls("../../nodeagent/*.go"), calls("*.go")
	if len(real) < 5 {
		t.Fatalf("found only %v in nodeagent: the pattern is stale", real)
	}
	for _, rpc := range real {
		if !slices.Contains(sim, rpc) && notSimulated[rpc] == "" {
			t.Errorf("the real agent calls NodeAgent.%s; the simulated agent does not", rpc)
		}
	}
}
