package store

import (
	"fmt"
	"strings"
	"testing"

	"github.com/berth-dev/berth/api"
)

func change(svc string, i, envBytes int) InstanceChange {
	in := api.Instance{ID: fmt.Sprintf("%s-%d", svc, i), Namespace: "default", Service: svc}
	if envBytes > 0 {
		in.Template.Env = map[string]string{"BIG": strings.Repeat("x", envBytes)}
	}
	return InstanceChange{Instance: in}
}

// Batches keep every transaction within etcd's operation and byte
// limits, keep a service's order, and, per service, never mix services.
func TestBatches(t *testing.T) {
	var changes []InstanceChange
	for i := range 100 {
		changes = append(changes, change("big", i, 30<<10)) // 100 x 30 KB: 3 MB
	}
	for i := range 150 {
		changes = append(changes, change("small", i, 0))
	}
	changes = append(changes, InstanceChange{Instance: api.Instance{ID: "gone", Namespace: "default", Service: "old"}, Delete: true})
	for _, perService := range []bool{false, true} {
		batches := Batches(changes, perService)
		n := 0
		seen := map[string]int{}
		for i, b := range batches {
			ops, bytes := 0, 0
			services := map[string]bool{}
			for _, ch := range b {
				o, by := commitCost(&ch)
				ops, bytes = ops+o, bytes+by
				services[ch.Instance.Service] = true
				if want := fmt.Sprintf("%s-%d", ch.Instance.Service, seen[ch.Instance.Service]); ch.Instance.Service != "old" && ch.Instance.ID != want {
					t.Fatalf("perService=%v: batch %d has %s, want %s next (order kept)", perService, i, ch.Instance.ID, want)
				}
				seen[ch.Instance.Service]++
			}
			if ops > MaxOpsPerCommit || bytes > MaxBytesPerCommit {
				t.Fatalf("perService=%v: batch %d: %d ops, %d bytes: over the limits", perService, i, ops, bytes)
			}
			if perService && len(services) != 1 {
				t.Fatalf("batch %d mixes services %v", i, services)
			}
			n += len(b)
		}
		if n != len(changes) {
			t.Fatalf("perService=%v: %d changes in batches, want %d", perService, n, len(changes))
		}
		if !perService && len(batches) > 6 {
			t.Fatalf("%d batches: services that fit together should share", len(batches))
		}
	}
	// One change larger than any transaction still goes out, alone.
	huge := Batches([]InstanceChange{change("a", 0, 0), change("a", 1, 2<<20), change("a", 2, 0)}, false)
	if len(huge) != 3 || len(huge[1]) != 1 {
		t.Fatalf("a change over the byte limit: %d batches %v", len(huge), huge)
	}
}
