package gateway

import (
	"fmt"
	"maps"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// deltaChange is one delta response, checked and compiled: what changes in
// one type's resources.
type deltaChange struct {
	// updated is the added and updated resources the gateway uses, as the
	// type's map in xdsState (the same form compile returns).
	updated any
	// versions has the version of every added or updated resource, used or
	// not (listeners for other proxies), by name.
	versions map[string]string
	removed  []string
}

// compileDelta checks one delta response and compiles the resources it
// adds or updates; nothing else is compiled again. An error is the NACK's
// error_detail: it names the resource and the reason.
func compileDelta(resp *discoverypb.DeltaDiscoveryResponse, listenerName string) (*deltaChange, error) {
	t := resp.GetTypeUrl()
	ch := &deltaChange{versions: make(map[string]string, len(resp.GetResources())), removed: resp.GetRemovedResources()}
	listeners := map[string]*compiledListener{}
	routes := map[string]*compiledRouteConfig{}
	clusters := map[string]*compiledCluster{}
	endpoints := map[string][]upstreamAddr{}
	switch t {
	case resource.ListenerType:
		ch.updated = listeners
	case resource.RouteType:
		ch.updated = routes
	case resource.ClusterType:
		ch.updated = clusters
	case resource.EndpointType:
		ch.updated = endpoints
	default:
		return nil, fmt.Errorf("unexpected resource type %s", t)
	}
	label := typeLabel(t)
	seen := make(map[string]bool, len(resp.GetResources()))
	for i, r := range resp.GetResources() {
		name := r.GetName()
		if name == "" {
			return nil, fmt.Errorf("%s %d: resource without a name", label, i)
		}
		if seen[name] {
			return nil, fmt.Errorf("%s %q: listed twice", label, name)
		}
		seen[name] = true
		a := r.GetResource()
		if a == nil {
			continue // a TTL heartbeat: what is held stays
		}
		if a.GetTypeUrl() != t {
			return nil, fmt.Errorf("%s %q has type %s in a %s response", label, name, a.GetTypeUrl(), t)
		}
		var inner string // the name inside the resource, which must agree
		switch t {
		case resource.ListenerType:
			l, err := decodeResource(a, &listener.Listener{})
			if err != nil {
				return nil, fmt.Errorf("%s %q: %w", label, name, err)
			}
			inner = l.GetName()
			compiled, err := compileListeners([]*listener.Listener{l}, listenerName)
			if err != nil {
				return nil, err
			}
			maps.Copy(listeners, compiled)
		case resource.RouteType:
			rc, err := decodeResource(a, &route.RouteConfiguration{})
			if err != nil {
				return nil, fmt.Errorf("%s %q: %w", label, name, err)
			}
			inner = rc.GetName()
			if routes[name], err = compileRouteConfig(rc); err != nil {
				return nil, err
			}
		case resource.ClusterType:
			c, err := decodeResource(a, &cluster.Cluster{})
			if err != nil {
				return nil, fmt.Errorf("%s %q: %w", label, name, err)
			}
			inner = c.GetName()
			if clusters[name], err = compileCluster(c); err != nil {
				return nil, err
			}
		case resource.EndpointType:
			cla, err := decodeResource(a, &endpointv3.ClusterLoadAssignment{})
			if err != nil {
				return nil, fmt.Errorf("%s %q: %w", label, name, err)
			}
			inner = cla.GetClusterName()
			if endpoints[name], err = compileLoadAssignment(cla); err != nil {
				return nil, err
			}
		}
		if inner != name {
			return nil, fmt.Errorf("%s %q: the resource is named %q", label, name, inner)
		}
		ch.versions[name] = r.GetVersion()
	}
	for _, name := range ch.removed {
		if seen[name] {
			return nil, fmt.Errorf("%s %q: both updated and removed", label, name)
		}
	}
	return ch, nil
}

// decodeResource unpacks and validates one resource into m.
func decodeResource[T validator](a *anypb.Any, m T) (T, error) {
	if err := anypb.UnmarshalTo(a, m, proto.UnmarshalOptions{}); err != nil {
		return m, err
	}
	if err := m.ValidateAll(); err != nil {
		return m, err
	}
	return m, nil
}

// withDelta returns a copy of s with ch applied to typeURL's resources:
// the type's map is copied, the updated entries set, the removed deleted.
// Other types' maps are shared.
func (s *xdsState) withDelta(typeURL, version string, ch *deltaChange) *xdsState {
	n := *s
	n.versions = maps.Clone(s.versions)
	n.versions[typeURL] = version
	switch typeURL {
	case resource.ListenerType:
		n.listeners = merged(s.listeners, ch.updated.(map[string]*compiledListener), ch.removed)
	case resource.RouteType:
		n.routes = merged(s.routes, ch.updated.(map[string]*compiledRouteConfig), ch.removed)
	case resource.ClusterType:
		n.clusters = merged(s.clusters, ch.updated.(map[string]*compiledCluster), ch.removed)
	case resource.EndpointType:
		n.endpoints = merged(s.endpoints, ch.updated.(map[string][]upstreamAddr), ch.removed)
	}
	return &n
}

// merged is a new map: old with updated set and removed deleted.
func merged[V any](old, updated map[string]V, removed []string) map[string]V {
	n := make(map[string]V, len(old)+len(updated))
	maps.Copy(n, old)
	for _, name := range removed {
		delete(n, name)
	}
	maps.Copy(n, updated)
	return n
}
