package gateway

// The state file: the last configuration the gateway acknowledged, kept in
// Config.StateDir so that a gateway started while the control plane is
// away serves it, marked stale, instead of answering 503 (Envoy's xDS
// failover and Consul's local cache do the same).

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/berth-dev/berth/gateway/internal/savedpb"
	"github.com/berth-dev/berth/internal/atomicfile"
)

// StateFileName is the state file's name in Config.StateDir.
const StateFileName = "config.pb"

// saveInterval is the least time between two writes of the state file:
// the ACKs of a burst of updates become one write.
const saveInterval = time.Second

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// envelopeType is the type URL of discovery.Resource, which wraps the
// resources of delta responses (and TTL'd ones of state-of-the-world).
const envelopeType = resource.APITypePrefix + "envoy.service.discovery.v3.Resource"

// savedConfig is a configuration as the state file holds it: one
// state-of-the-world response per type (resources from delta streams
// wrapped in discovery.Resource, keeping their names and versions).
type savedConfig struct {
	savedAt time.Time
	nodeID  string // of the gateway that wrote it
	version string // of the last response applied
	types   []*discoverypb.DiscoveryResponse
}

// encodeSaved is the state file's content for c (savedpb.File).
func encodeSaved(c *savedConfig) ([]byte, error) {
	pc := &savedpb.Configuration{SavedAt: timestamppb.New(c.savedAt), NodeId: c.nodeID, Version: c.version}
	for _, r := range c.types {
		a, err := anypb.New(r)
		if err != nil {
			return nil, fmt.Errorf("%s resources: %w", typeLabel(r.GetTypeUrl()), err)
		}
		pc.Types = append(pc.Types, a)
	}
	b, err := proto.Marshal(pc)
	if err != nil {
		return nil, err
	}
	return proto.Marshal(&savedpb.File{Configuration: b, Crc32C: crc32.Checksum(b, castagnoli)})
}

// decodeSaved reads a state file's content. It checks the file's framing
// only (checksum, one response per known type); the resources are checked
// when they are applied, as the control plane's are.
func decodeSaved(b []byte) (*savedConfig, error) {
	var f savedpb.File
	if err := proto.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("not a saved configuration: %w", err)
	}
	if len(f.GetConfiguration()) == 0 {
		return nil, errors.New("not a saved configuration: no configuration in it")
	}
	if sum := crc32.Checksum(f.GetConfiguration(), castagnoli); sum != f.GetCrc32C() {
		return nil, fmt.Errorf("checksum %08x, want %08x: the file is damaged or cut short", sum, f.GetCrc32C())
	}
	var pc savedpb.Configuration
	if err := proto.Unmarshal(f.GetConfiguration(), &pc); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	c := &savedConfig{savedAt: pc.GetSavedAt().AsTime(), nodeID: pc.GetNodeId(), version: pc.GetVersion()}
	seen := map[string]bool{}
	for i, a := range pc.GetTypes() {
		r := &discoverypb.DiscoveryResponse{}
		if err := anypb.UnmarshalTo(a, r, proto.UnmarshalOptions{}); err != nil {
			return nil, fmt.Errorf("resource type %d: %w", i, err)
		}
		t := r.GetTypeUrl()
		if !slices.Contains(subscribedTypes, t) {
			return nil, fmt.Errorf("resource type %d: unexpected type %q", i, t)
		}
		if seen[t] {
			return nil, fmt.Errorf("%s resources listed twice", typeLabel(t))
		}
		seen[t] = true
		c.types = append(c.types, r)
	}
	return c, nil
}

// maxSavedBytes bounds the state file read at start (a configuration of
// 10,000 endpoints is about 2 MiB): a file grown by mistake or by someone
// else is refused, not read into memory whole.
var maxSavedBytes = 256 << 20 // a variable for the tests

// readSaved reads and decodes the state file at path; nil, nil when there
// is none.
func readSaved(path string) (*savedConfig, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(maxSavedBytes)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxSavedBytes {
		return nil, fmt.Errorf("larger than %d MiB: not a configuration this gateway wrote", maxSavedBytes>>20)
	}
	return decodeSaved(b)
}

// namedResources are resp's resources by name, each in a discovery.Resource
// (the form of a delta response): envelopes as they are, bare resources
// (saved from a state-of-the-world stream) named by their own name and
// given the type's version. Envelopes without a body are left out.
func namedResources(resp *discoverypb.DiscoveryResponse) (map[string]*discoverypb.Resource, error) {
	t := resp.GetTypeUrl()
	out := make(map[string]*discoverypb.Resource, len(resp.GetResources()))
	for i, a := range resp.GetResources() {
		r := &discoverypb.Resource{}
		if a.GetTypeUrl() == envelopeType {
			if err := anypb.UnmarshalTo(a, r, proto.UnmarshalOptions{}); err != nil {
				return nil, fmt.Errorf("%s %d: %w", typeLabel(t), i, err)
			}
			if r.GetResource() == nil {
				continue
			}
		} else {
			if a.GetTypeUrl() != t {
				return nil, fmt.Errorf("%s %d has type %s in a %s response", typeLabel(t), i, a.GetTypeUrl(), t)
			}
			name, err := resourceName(a)
			if err != nil {
				return nil, fmt.Errorf("%s %d: %w", typeLabel(t), i, err)
			}
			r = &discoverypb.Resource{Name: name, Version: resp.GetVersionInfo(), Resource: a}
		}
		if _, dup := out[r.GetName()]; dup {
			return nil, fmt.Errorf("%s %q: listed twice", typeLabel(t), r.GetName())
		}
		out[r.GetName()] = r
	}
	return out, nil
}

// resourceName is the name a resource gives itself (an endpoint
// assignment: its cluster's), as go-control-plane's cache reads it.
func resourceName(a *anypb.Any) (string, error) {
	m, err := a.UnmarshalNew()
	if err != nil {
		return "", err
	}
	name := cache.GetResourceName(m)
	if name == "" {
		return "", errors.New("no name")
	}
	return name, nil
}

// restore applies a saved configuration before the control plane has
// said anything, through the path its responses take: compileDelta and
// withDelta on delta streams, compile and with on state-of-the-world ones
// (every check included). All types are checked before any is used: a
// file that fails changes nothing. Each type with resources is then
// stale until the control plane has confirmed or replaced it:
//
//   - delta: held names those resources without a version, so the first
//     request of the type asks the control plane to send each of them
//     again or remove it (a server that kept their versions would send
//     nothing for an unchanged type, and the gateway could not tell that
//     it is current again);
//   - state of the world: the first request of the type names no version,
//     so its first response (which replaces the type) comes whatever the
//     server's version.
func (c *adsClient) restore(saved *savedConfig) error {
	if saved.nodeID != c.g.cfg.NodeID {
		return fmt.Errorf("saved by node %q, not this gateway (%q)", saved.nodeID, c.g.cfg.NodeID)
	}
	delta := c.g.cfg.XDSProtocol != XDSStateOfTheWorld
	state := newXDSState()
	held := map[string]map[string]string{}
	stale := map[string]bool{}
	named := map[string]map[string]*discoverypb.Resource{}
	lists := map[string][]*anypb.Any{}
	for _, resp := range saved.types {
		t, version := resp.GetTypeUrl(), resp.GetVersionInfo()
		if !delta {
			compiled, err := compile(resp, c.g.cfg.ListenerName)
			if err != nil {
				return err
			}
			state = state.with(t, version, compiled)
			lists[t] = resp.GetResources()
			stale[t] = len(resp.GetResources()) > 0
			continue
		}
		rs, err := namedResources(resp)
		if err != nil {
			return err
		}
		dr := &discoverypb.DeltaDiscoveryResponse{TypeUrl: t, SystemVersionInfo: version}
		for _, name := range slices.Sorted(maps.Keys(rs)) {
			dr.Resources = append(dr.Resources, rs[name])
		}
		ch, err := compileDelta(dr, c.g.cfg.ListenerName)
		if err != nil {
			return err
		}
		state = state.withDelta(t, version, ch)
		held[t] = make(map[string]string, len(rs))
		for name := range rs {
			held[t][name] = "" // unknown: see above
		}
		named[t] = rs
		stale[t] = len(rs) > 0
	}
	maps.DeleteFunc(stale, func(_ string, v bool) bool { return !v })
	c.state, c.held, c.stale = state, held, stale
	c.publish(saved.version)
	if c.saver != nil {
		c.saver.restored(saved.version, state.versions, named, lists)
	}
	if len(stale) > 0 {
		c.g.stale.Store(true)
		c.g.metrics.configStale.Set(1)
	}
	return nil
}

// confirmed notes that the control plane has confirmed or replaced the
// saved resources of type t; when no type is left, the configuration is
// the control plane's again.
func (c *adsClient) confirmed(t string) {
	if !c.stale[t] {
		return
	}
	delete(c.stale, t)
	if len(c.stale) == 0 {
		c.g.stale.Store(false)
		c.g.metrics.configStale.Set(0)
		c.g.log.Info("the control plane's configuration replaces the saved one", "versions", c.state.versions)
	}
}

// restoreFile loads the state file and serves it, or logs why not (the
// gateway then starts without configuration, answering 503 until the
// control plane's arrives).
func (c *adsClient) restoreFile(path string) {
	saved, err := readSaved(path)
	if maxAge := c.g.cfg.StateMaxAge; err == nil && saved != nil && maxAge > 0 && time.Since(saved.savedAt) > maxAge {
		// Addresses that old may belong to other services by now.
		err = fmt.Errorf("saved %s ago, more than the %s a saved configuration is trusted (StateMaxAge)", time.Since(saved.savedAt).Round(time.Second), maxAge)
	}
	if err == nil && saved != nil {
		err = c.restore(saved)
	}
	switch {
	case err != nil:
		c.g.log.Warn("saved configuration refused; starting without configuration", "file", path, "error", err)
	case saved == nil:
		c.g.log.Info("no saved configuration; starting without configuration", "file", path)
	default:
		c.g.log.Warn("serving the saved configuration until the control plane answers (stale)",
			"file", path, "version", saved.version, "saved_at", saved.savedAt, "age", time.Since(saved.savedAt).Round(time.Second))
	}
}

// configSaver keeps the state file: the ADS client tells it each
// configuration it accepts, and its run goroutine writes what it holds at
// most once per interval, and once more when it stops.
type configSaver struct {
	path     string
	nodeID   string
	log      *slog.Logger
	writes   *prometheus.CounterVec // by result
	interval time.Duration
	kick     chan struct{} // buffered 1: something changed

	mu       sync.Mutex
	version  string            // of the last response applied
	versions map[string]string // type URL -> accepted version
	// named (delta) or lists (state of the world) hold each type's
	// resources. Their *Resource and *Any values are never changed after
	// they arrive, so a write may use them outside mu.
	named map[string]map[string]*discoverypb.Resource
	lists map[string][]*anypb.Any
	dirty bool
	// failing is set after a failed write, so that a failure is logged once
	// until a write succeeds.
	failing bool
}

func newConfigSaver(path, nodeID string, log *slog.Logger, writes *prometheus.CounterVec) *configSaver {
	return &configSaver{
		path: path, nodeID: nodeID, log: log, writes: writes, interval: saveInterval, kick: make(chan struct{}, 1),
		versions: map[string]string{},
		named:    map[string]map[string]*discoverypb.Resource{},
		lists:    map[string][]*anypb.Any{},
	}
}

// restored holds what the state file held; nothing is written for it.
func (s *configSaver) restored(version string, versions map[string]string, named map[string]map[string]*discoverypb.Resource, lists map[string][]*anypb.Any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.version, s.versions, s.named, s.lists = version, maps.Clone(versions), named, lists
}

// acceptedList records a state-of-the-world response the gateway applied.
func (s *configSaver) acceptedList(t, version string, resources []*anypb.Any) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.lists[t] = resources
	s.versions[t], s.version = version, version
	s.changed()
	s.mu.Unlock()
}

// acceptedDelta records a delta response the gateway applied. Resources
// without a body (TTL heartbeats) keep what is held.
func (s *configSaver) acceptedDelta(t, version string, updated []*discoverypb.Resource, removed []string) {
	if s == nil {
		return
	}
	s.mu.Lock()
	held := s.named[t]
	if held == nil {
		held = map[string]*discoverypb.Resource{}
		s.named[t] = held
	}
	for _, name := range removed {
		delete(held, name)
	}
	for _, r := range updated {
		if r.GetResource() != nil {
			held[r.GetName()] = r
		}
	}
	s.versions[t], s.version = version, version
	s.changed()
	s.mu.Unlock()
}

// changed marks the configuration to be written. The caller holds mu.
func (s *configSaver) changed() {
	s.dirty = true
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// run writes the state file after changes, at most once per interval,
// until ctx ends; then once more if anything is left unwritten.
func (s *configSaver) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			s.flush()
			return
		case <-s.kick:
		}
		// Wait out the interval first: the rest of a burst of updates (the
		// four types of a first configuration) goes into the same write.
		select {
		case <-ctx.Done():
			s.flush()
			return
		case <-time.After(s.interval):
		}
		s.flush()
	}
}

// flush writes the state file if something changed since the last write.
func (s *configSaver) flush() {
	s.mu.Lock()
	if !s.dirty {
		s.mu.Unlock()
		return
	}
	s.dirty = false
	c := &savedConfig{savedAt: time.Now(), nodeID: s.nodeID, version: s.version}
	type typeSnapshot struct {
		t, version string
		list       []*anypb.Any
		named      []*discoverypb.Resource
	}
	var snaps []typeSnapshot
	for _, t := range subscribedTypes {
		v, ok := s.versions[t]
		if !ok {
			continue // nothing accepted of this type yet
		}
		snaps = append(snaps, typeSnapshot{t: t, version: v, list: s.lists[t], named: slices.Collect(maps.Values(s.named[t]))})
	}
	s.mu.Unlock()

	err := func() error {
		for _, ts := range snaps {
			resp := &discoverypb.DiscoveryResponse{TypeUrl: ts.t, VersionInfo: ts.version, Resources: ts.list}
			if ts.list == nil {
				slices.SortFunc(ts.named, func(a, b *discoverypb.Resource) int { return cmp.Compare(a.GetName(), b.GetName()) })
				resp.Resources = make([]*anypb.Any, 0, len(ts.named))
				for _, r := range ts.named {
					a, err := anypb.New(r)
					if err != nil {
						return fmt.Errorf("%s %q: %w", typeLabel(ts.t), r.GetName(), err)
					}
					resp.Resources = append(resp.Resources, a)
				}
			}
			c.types = append(c.types, resp)
		}
		b, err := encodeSaved(c)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(filepath.Dir(s.path), 0o700); err != nil {
			return err
		}
		return atomicfile.Write(s.path, b, 0o600)
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.writes.WithLabelValues("error").Inc()
		s.dirty = true // tried again with the next change or at shutdown
		if !s.failing {
			s.log.Warn("cannot save the configuration; a restart without the control plane will start empty", "file", s.path, "error", err)
		}
		s.failing = true
		return
	}
	s.writes.WithLabelValues("ok").Inc()
	if s.failing {
		s.log.Info("configuration saved again", "file", s.path)
	}
	s.failing = false
	s.log.Debug("configuration saved", "file", s.path, "version", c.version)
}
