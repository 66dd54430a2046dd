package apiserver

import (
	"math"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestGuardedMethods(t *testing.T) {
	for m, want := range map[string]bool{
		berthSvc + "Apply":         true,
		berthSvc + "Scale":         true,
		berthSvc + "DeleteService": true,
		berthSvc + "CreateToken":   true,
		berthSvc + "RolloutAction": true,
		berthSvc + "ListServices":  false,
		berthSvc + "GetService":    false,
		berthSvc + "RolloutStatus": false,
		berthSvc + "Snapshot":      false,
		berthSvc + "Version":       false,
		agentSvc + "ReportStatus":  false, // the cluster's own writes
	} {
		if got := guardedMethod(m); got != want {
			t.Errorf("guardedMethod(%s) = %v, want %v", m, got, want)
		}
	}
}

// Below the minimum a write is refused with ResourceExhausted naming the
// directory and both figures; above it, and without a guard, it passes.
func TestDiskGuard(t *testing.T) {
	dir := t.TempDir()
	err := newDiskGuard(dir, 1<<62).check()
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "data disk is full") || !strings.Contains(err.Error(), "free") {
		t.Fatalf("a disk below the minimum: %v", err)
	}
	if err := newDiskGuard(dir, 1).check(); err != nil {
		t.Fatalf("a disk above the minimum: %v", err)
	}
	if err := newDiskGuard("", 1<<62).check(); err != nil {
		t.Fatalf("no guard: %v", err)
	}
}

// The room a large write (an upload, a replica's copy) may take is the
// free space above the minimum: none below it, unbounded without a guard.
func TestDiskGuardRoom(t *testing.T) {
	dir := t.TempDir()
	if r := newDiskGuard(dir, 1<<62).room(); r != 0 {
		t.Errorf("room below the minimum = %d, want 0", r)
	}
	if r := newDiskGuard(dir, 1).room(); r <= 0 {
		t.Errorf("room above the minimum = %d, want > 0", r)
	}
	if r := newDiskGuard("", 1).room(); r != math.MaxInt64 {
		t.Errorf("room without a guard = %d, want unbounded", r)
	}
	err := newDiskGuard(dir, 1<<62).fullErr("copy upload sha256:ab", 0)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "copy upload sha256:ab") {
		t.Errorf("fullErr = %v", err)
	}
}
