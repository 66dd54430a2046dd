package apiserver

import (
	"fmt"
	"math"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// DefaultMinFreeDisk is the free space below which writes are refused:
// two of etcd's WAL segments (64 MiB each, allocated whole when the last
// one fills).
const DefaultMinFreeDisk = 128 << 20

// diskGuard refuses API writes while the embedded etcd's data disk has
// less than min bytes free (#16). etcd itself stops the process when a WAL
// or database write fails for lack of space (a supervisor then restarts
// it into the same full disk: a crash loop); refusing writes while there
// is still room keeps the member up, its data intact and the writes Berth
// makes on its own (liveness, the controllers) possible, and tells the
// user which disk to free. Free space is read at most once a second.
type diskGuard struct {
	dir string
	min uint64

	mu      sync.Mutex
	checked time.Time
	free    uint64
	err     error
}

func newDiskGuard(dir string, min uint64) *diskGuard {
	if dir == "" || min == 0 {
		return nil
	}
	return &diskGuard{dir: dir, min: min}
}

// check returns a ResourceExhausted error naming the disk when it is
// below the minimum (nil for a nil guard, and when free space cannot be
// read: the guard is not a reason to refuse).
func (g *diskGuard) check() error {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if now := time.Now(); now.Sub(g.checked) >= time.Second {
		g.checked = now
		var st syscall.Statfs_t
		if g.err = syscall.Statfs(g.dir, &st); g.err == nil {
			g.free = st.Bavail * uint64(st.Bsize)
		}
	}
	if g.err != nil || g.free >= g.min {
		return nil
	}
	return status.Errorf(codes.ResourceExhausted,
		"the control plane's data disk is full: %s has %s free, writes need %s (etcd stops when it cannot write); nothing was written; free space on that filesystem and retry",
		g.dir, bytesText(g.free), bytesText(g.min))
}

// room is how many bytes a large write (an upload, a replica's copy of
// one) may put on the disk before it falls below the minimum, read
// afresh; unbounded for a nil guard or when free space cannot be read.
// Image files live on the same disk as etcd's data (DataDir/images).
func (g *diskGuard) room() int64 {
	if g == nil {
		return math.MaxInt64
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(g.dir, &st); err != nil {
		return math.MaxInt64
	}
	free := st.Bavail * uint64(st.Bsize)
	if free <= g.min {
		return 0
	}
	return int64(min(free-g.min, math.MaxInt64))
}

// fullErr is the error of a write that room (bytes) does not hold.
func (g *diskGuard) fullErr(what string, room int64) error {
	return status.Errorf(codes.ResourceExhausted,
		"%s: the control plane's data disk %s has room for %s more before it falls below %s free (etcd stops when it cannot write); nothing was kept; free space on that filesystem and retry",
		what, g.dir, bytesText(uint64(room)), bytesText(g.min))
}

func bytesText(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%d KiB", n>>10)
	}
}

// guardedMethod says whether a full disk refuses the call: the Berth
// service's writes. Reads (List*, Get*, Watch*, and the few named ones)
// pass, and so do node agents' calls (registration, status reports: the
// cluster's own small writes, for which the minimum leaves room).
func guardedMethod(fullMethod string) bool {
	if !strings.HasPrefix(fullMethod, berthSvc) {
		return false
	}
	return !readOnlyMethod(fullMethod[len(berthSvc):])
}

func readOnlyMethod(m string) bool {
	for _, p := range []string{"List", "Get", "Watch", "Explain"} {
		if strings.HasPrefix(m, p) {
			return true
		}
	}
	switch m {
	case "Version", "Logs", "RolloutStatus", "Snapshot", "Exec", "PortForward":
		return true
	}
	return false
}
