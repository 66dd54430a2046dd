// Package logs keeps containers' output on the node, for `berth logs`:
// one directory per instance, one file per run (a container's task, from
// its start to its exit), in the CRI log format
//
//	<RFC 3339 time> <stdout|stderr> <F|P> <text>
//
// (F: a full line; P: a partial one the next line continues). A run's
// file is rotated at MaxFileSize into run-N.log.1 (one rotated file kept),
// only the last KeepRuns runs are kept, and an instance's directory goes
// Retention after its container was removed: the logs of a crashed
// container or a rolled-back canary stay readable that long.
package logs

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"sync"
	"time"
)

// Config sizes the store.
type Config struct {
	Dir string
	// MaxFileSize rotates a run's file (default 10 MiB): a run keeps at
	// most twice this.
	MaxFileSize int64
	// KeepRuns is how many runs of an instance are kept (default 5).
	KeepRuns int
	// Retention is how long an instance's logs stay after its container
	// was removed (default 1h).
	Retention time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// DefaultConfig returns the defaults, without Dir.
func DefaultConfig() Config {
	return Config{MaxFileSize: 10 << 20, KeepRuns: 5, Retention: time.Hour}
}

// Store is the node's container logs.
type Store struct {
	cfg    Config
	mu     sync.Mutex
	active map[string]*Run // by instance: the run being written
}

// ErrNotFound says an instance has no logs on this node.
var ErrNotFound = errors.New("no logs")

// New opens (creating) the store in cfg.Dir.
func New(cfg Config) (*Store, error) {
	def := DefaultConfig()
	if cfg.MaxFileSize <= 0 {
		cfg.MaxFileSize = def.MaxFileSize
	}
	if cfg.KeepRuns <= 0 {
		cfg.KeepRuns = def.KeepRuns
	}
	if cfg.Retention <= 0 {
		cfg.Retention = def.Retention
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	// Container output carries secrets as often as not: root only.
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("logs: %w", err)
	}
	return &Store{cfg: cfg, active: map[string]*Run{}}, nil
}

var runFile = regexp.MustCompile(`^run-(\d{6})\.log$`)

// validInstance keeps instance ids from naming paths outside the store.
func validInstance(id string) error {
	if id == "" || id == "." || id == ".." || filepath.Base(id) != id {
		return fmt.Errorf("logs: bad instance id %q", id)
	}
	return nil
}

func (s *Store) dir(instance string) string { return filepath.Join(s.cfg.Dir, instance) }

// runs lists an instance's run numbers, oldest first.
func (s *Store) runs(instance string) ([]int, error) {
	entries, err := os.ReadDir(s.dir(instance))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("logs: %w", err)
	}
	var out []int
	for _, e := range entries {
		if m := runFile.FindStringSubmatch(e.Name()); m != nil {
			n, _ := strconv.Atoi(m[1])
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out, nil
}

func (s *Store) runPath(instance string, n int) string {
	return filepath.Join(s.dir(instance), fmt.Sprintf("run-%06d.log", n))
}

// Meta says whose an instance's logs are, so a service's logs can be
// found after its instances are gone.
type Meta struct {
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
}

const metaFile = "meta.json"

// NewRun starts the next run of an instance (a container task starting);
// the run before it ends.
func (s *Store) NewRun(instance string, meta Meta) (*Run, error) {
	return s.open(instance, meta, false)
}

// Resume goes on writing the instance's latest run (an agent restarted
// while its container ran on), or starts one if it has none.
func (s *Store) Resume(instance string, meta Meta) (*Run, error) {
	return s.open(instance, meta, true)
}

// MetaOf says whose an instance's logs are (zero when unknown).
func (s *Store) MetaOf(instance string) Meta {
	var m Meta
	if validInstance(instance) != nil {
		return m
	}
	if b, err := os.ReadFile(filepath.Join(s.dir(instance), metaFile)); err == nil {
		_ = json.Unmarshal(b, &m)
	}
	return m
}

// Instances lists the instances of a service this node has logs of,
// running or gone (within the retention).
func (s *Store) Instances(namespace, service string) []string {
	entries, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(s.cfg.Dir, e.Name(), metaFile))
		if err != nil {
			continue
		}
		var m Meta
		if json.Unmarshal(b, &m) == nil && m.Namespace == namespace && m.Service == service {
			out = append(out, e.Name())
		}
	}
	return out
}

func (s *Store) open(instance string, meta Meta, resume bool) (*Run, error) {
	if err := validInstance(instance); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if old := s.active[instance]; old != nil {
		if resume {
			return old, nil
		}
		old.end()
	}
	if err := os.MkdirAll(s.dir(instance), 0o700); err != nil {
		return nil, fmt.Errorf("logs: %w", err)
	}
	_ = os.Remove(filepath.Join(s.dir(instance), removedMarker)) // running again
	if meta != (Meta{}) {
		b, _ := json.Marshal(meta)
		if err := os.WriteFile(filepath.Join(s.dir(instance), metaFile), b, 0o600); err != nil {
			return nil, fmt.Errorf("logs: %w", err)
		}
	}
	runs, err := s.runs(instance)
	if err != nil {
		return nil, err
	}
	n := 1
	if len(runs) > 0 {
		n = runs[len(runs)-1]
		if !resume {
			n++
		}
	}
	// Only the last KeepRuns runs stay.
	for _, old := range runs {
		if old <= n-s.cfg.KeepRuns {
			os.Remove(s.runPath(instance, old))
			os.Remove(s.runPath(instance, old) + ".1")
		}
	}
	r := &Run{store: s, instance: instance, n: n, path: s.runPath(instance, n), now: s.cfg.Now, max: s.cfg.MaxFileSize}
	if err := r.openFile(); err != nil {
		return nil, err
	}
	r.stdout = &streamWriter{run: r, stream: "stdout"}
	r.stderr = &streamWriter{run: r, stream: "stderr"}
	s.active[instance] = r
	return r, nil
}

// Active reports whether run n of instance is being written.
func (s *Store) Active(instance string, n int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.active[instance]
	return r != nil && r.n == n && !r.ended
}

// Writing reports whether the instance has a run being written.
func (s *Store) Writing(instance string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active[instance] != nil
}

// EndRun ends run r if it is still its instance's run being written.
func (s *Store) EndRun(r *Run) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active[r.instance] == r {
		r.end()
		delete(s.active, r.instance)
	}
}

// End ends the instance's run being written (its task exited or was
// deleted).
func (s *Store) End(instance string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.active[instance]; r != nil {
		r.end()
		delete(s.active, instance)
	}
}

const removedMarker = "removed"

// Removed records that the instance's container is gone: its logs are
// swept Retention later.
func (s *Store) Removed(instance string) {
	if validInstance(instance) != nil {
		return
	}
	s.End(instance)
	if _, err := os.Stat(s.dir(instance)); err != nil {
		return
	}
	_ = os.WriteFile(filepath.Join(s.dir(instance), removedMarker), []byte(s.cfg.Now().UTC().Format(time.RFC3339Nano)), 0o600)
}

// Sweep removes the logs of instances removed more than Retention ago,
// and returns how many.
func (s *Store) Sweep() int {
	entries, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(s.cfg.Dir, e.Name(), removedMarker))
		if err != nil {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, string(b))
		if err != nil || s.cfg.Now().Sub(at) >= s.cfg.Retention {
			s.mu.Lock()
			if s.active[e.Name()] == nil {
				os.RemoveAll(filepath.Join(s.cfg.Dir, e.Name()))
				n++
			}
			s.mu.Unlock()
		}
	}
	return n
}
