package xds

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/berth-dev/berth/discovery"
)

// A translation is one translated snapshot held by resource name. It is
// immutable once built, and the next one shares every resource (the same
// pointer) that did not change, so "what changed" is a pointer comparison
// and an endpoint change costs one service's translation, not all of them.
//
// Its resources fall into six sets. Gateways see gwListeners, gwRoutes,
// clusters and endpoints; proxyless gRPC clients see apiListeners,
// apiRoutes, clusters and endpoints.
type translation struct {
	version uint64
	opts    TranslateOptions

	// services by "namespace/name"; nil for a translation built by
	// Publish from ready-made resources.
	services      map[string]*translatedService
	order         []string // service keys in snapshot order
	routeWarnings []string

	sets [numSets]map[string]types.Resource
}

// The six resource sets of a translation.
const (
	setGatewayListeners = iota
	setGatewayRoutes
	setClusters
	setEndpoints
	setAPIListeners
	setAPIRoutes
	numSets
)

var setTypes = [numSets]string{
	resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType,
	resource.ListenerType, resource.RouteType,
}

// A view is what one kind of client is served: a set per type URL.
type view int

const (
	viewGateway   view = iota // Berth's gateway and Envoy
	viewProxyless             // proxyless gRPC clients
	numViews
)

func (v view) String() string {
	if v == viewProxyless {
		return "proxyless"
	}
	return "gateway"
}

// viewSets maps a view's type URLs to its sets.
var viewSets = [numViews]map[string]int{
	viewGateway: {
		resource.ListenerType: setGatewayListeners, resource.RouteType: setGatewayRoutes,
		resource.ClusterType: setClusters, resource.EndpointType: setEndpoints,
	},
	viewProxyless: {
		resource.ListenerType: setAPIListeners, resource.RouteType: setAPIRoutes,
		resource.ClusterType: setClusters, resource.EndpointType: setEndpoints,
	},
}

// setChange is what changed in one set between two translations.
type setChange struct {
	updated map[string]types.Resource // new or changed
	removed []string
}

func (c setChange) empty() bool { return len(c.updated) == 0 && len(c.removed) == 0 }

// changes lists, per set, what differs from the previous translation.
type changes [numSets]setChange

// translateNext translates snap, reusing from prev (which may be nil)
// every service that did not change and every resource that came out
// equal. It is pure: prev is not modified.
func translateNext(prev *translation, snap *discovery.Snapshot, opts TranslateOptions) (*translation, error) {
	if snap == nil {
		return nil, errors.New("xds: translate: nil snapshot")
	}
	if err := opts.check(); err != nil {
		return nil, err
	}
	if prev != nil && prev.opts != opts {
		prev = nil
	}
	next := &translation{
		version:  snap.Version,
		opts:     opts,
		services: make(map[string]*translatedService, len(snap.Services)),
		order:    make([]string, 0, len(snap.Services)),
	}
	var prevServices map[string]*translatedService
	if prev != nil {
		prevServices = prev.services
	}
	var sets [numSets]map[string]types.Resource
	for i := range sets {
		if prev != nil {
			sets[i] = prev.sets[i]
		} else {
			sets[i] = map[string]types.Resource{}
		}
	}
	cloned := [numSets]bool{}
	put := func(set int, name string, r types.Resource) {
		if !cloned[set] {
			sets[set] = maps.Clone(sets[set])
			cloned[set] = true
		}
		sets[set][name] = r
	}
	del := func(set int, name string) {
		if _, ok := sets[set][name]; !ok {
			return
		}
		if !cloned[set] {
			sets[set] = maps.Clone(sets[set])
			cloned[set] = true
		}
		delete(sets[set], name)
	}
	// reuse keeps the previous pointer of a resource that came out equal.
	reuse := func(set int, name string, r types.Resource) types.Resource {
		if prev == nil {
			return r
		}
		if old, ok := prev.sets[set][name]; ok && proto.Equal(old, r) {
			return old
		}
		return r
	}

	routesDirty := prev == nil || prev.services == nil
	seen := make(map[string]bool, len(snap.Services))
	for i := range snap.Services {
		svc := &snap.Services[i]
		key := svc.Namespace + "/" + svc.Name
		next.order = append(next.order, key)
		seen[key] = true
		old := prevServices[key]
		if old != nil && serviceEqual(&old.src, svc) {
			next.services[key] = old
			continue
		}
		ts, err := translateService(svc, opts)
		if err != nil {
			return nil, err
		}
		if old == nil || !routeInputsEqual(&old.src, svc) {
			routesDirty = true
		}
		// Drop what the old version of the service had and the new lacks.
		if old != nil {
			for _, c := range old.clusters {
				del(setClusters, c.GetName())
			}
			for _, e := range old.endpoints {
				del(setEndpoints, e.GetClusterName())
			}
			if old.apiListener != nil {
				del(setAPIListeners, old.apiListener.GetName())
				del(setAPIRoutes, old.apiRoute.GetName())
			}
		}
		for j, c := range ts.clusters {
			ts.clusters[j] = reuse(setClusters, c.GetName(), c).(*cluster.Cluster)
			put(setClusters, c.GetName(), ts.clusters[j])
		}
		for j, e := range ts.endpoints {
			ts.endpoints[j] = reuse(setEndpoints, e.GetClusterName(), e).(*endpoint.ClusterLoadAssignment)
			put(setEndpoints, e.GetClusterName(), ts.endpoints[j])
		}
		if ts.apiListener != nil {
			ts.apiListener = reuse(setAPIListeners, ts.apiListener.GetName(), ts.apiListener).(*listener.Listener)
			ts.apiRoute = reuse(setAPIRoutes, ts.apiRoute.GetName(), ts.apiRoute).(*route.RouteConfiguration)
			put(setAPIListeners, ts.apiListener.GetName(), ts.apiListener)
			put(setAPIRoutes, ts.apiRoute.GetName(), ts.apiRoute)
		}
		next.services[key] = ts
	}
	for key, old := range prevServices {
		if seen[key] {
			continue
		}
		routesDirty = routesDirty || old.src.Route != nil
		for _, c := range old.clusters {
			del(setClusters, c.GetName())
		}
		for _, e := range old.endpoints {
			del(setEndpoints, e.GetClusterName())
		}
		if old.apiListener != nil {
			del(setAPIListeners, old.apiListener.GetName())
			del(setAPIRoutes, old.apiRoute.GetName())
		}
	}

	if routesDirty {
		rc, warns := buildRoutes(snap.Services, opts)
		next.routeWarnings = warns
		keepSingle(&sets[setGatewayRoutes], rc.GetName(), rc)
	} else {
		next.routeWarnings = prev.routeWarnings
	}
	if prev == nil || prev.services == nil {
		l, err := httpListener(opts)
		if err != nil {
			return nil, err
		}
		keepSingle(&sets[setGatewayListeners], l.GetName(), l)
	}
	next.sets = sets
	return next, nil
}

// keepSingle makes *set hold just r under name, keeping the map (and so
// the old pointer) when it already holds an equal resource alone.
func keepSingle(set *map[string]types.Resource, name string, r types.Resource) {
	if old, ok := (*set)[name]; ok && len(*set) == 1 && proto.Equal(old, r) {
		return
	}
	*set = map[string]types.Resource{name: r}
}

// diff lists what next changed against prev (nil: everything is new).
func diff(prev, next *translation) changes {
	var ch changes
	for i := range ch {
		var old map[string]types.Resource
		if prev != nil {
			old = prev.sets[i]
		}
		cur := next.sets[i]
		if prev != nil && sameMap(old, cur) {
			continue
		}
		for name, r := range cur {
			if o, ok := old[name]; !ok || o != r {
				if ch[i].updated == nil {
					ch[i].updated = map[string]types.Resource{}
				}
				ch[i].updated[name] = r
			}
		}
		for name := range old {
			if _, ok := cur[name]; !ok {
				ch[i].removed = append(ch[i].removed, name)
			}
		}
		slices.Sort(ch[i].removed)
	}
	return ch
}

// sameMap reports whether a and b are the same map, not merely equal:
// translateNext shares the maps of sets that did not change.
func sameMap(a, b map[string]types.Resource) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer()
}

// translationFromResources indexes ready-made resources (Publish), reusing
// prev's pointers for equal resources so that diff finds only real changes.
func translationFromResources(version uint64, res *Resources, prev *translation) *translation {
	t := &translation{version: version}
	add := func(set int, name string, r types.Resource) {
		if t.sets[set] == nil {
			t.sets[set] = map[string]types.Resource{}
		}
		if prev != nil {
			if old, ok := prev.sets[set][name]; ok && proto.Equal(old, r) {
				r = old
			}
		}
		t.sets[set][name] = r
	}
	for i := range t.sets {
		t.sets[i] = map[string]types.Resource{}
	}
	for _, r := range res.Listeners {
		add(setGatewayListeners, r.GetName(), r)
	}
	for _, r := range res.Routes {
		add(setGatewayRoutes, r.GetName(), r)
	}
	for _, r := range res.Clusters {
		add(setClusters, r.GetName(), r)
	}
	for _, r := range res.Endpoints {
		add(setEndpoints, r.GetClusterName(), r)
	}
	for _, r := range res.APIListeners {
		add(setAPIListeners, r.GetName(), r)
	}
	for _, r := range res.APIRoutes {
		add(setAPIRoutes, r.GetName(), r)
	}
	t.routeWarnings = res.Warnings
	return t
}

// resources lists the translation as sorted slices, with its warnings in
// snapshot order.
func (t *translation) resources() *Resources {
	res := &Resources{}
	for _, r := range sortedValues(t.sets[setGatewayListeners]) {
		res.Listeners = append(res.Listeners, r.(*listener.Listener))
	}
	for _, r := range sortedValues(t.sets[setGatewayRoutes]) {
		res.Routes = append(res.Routes, r.(*route.RouteConfiguration))
	}
	for _, r := range sortedValues(t.sets[setClusters]) {
		res.Clusters = append(res.Clusters, r.(*cluster.Cluster))
	}
	for _, r := range sortedValues(t.sets[setEndpoints]) {
		res.Endpoints = append(res.Endpoints, r.(*endpoint.ClusterLoadAssignment))
	}
	for _, r := range sortedValues(t.sets[setAPIListeners]) {
		res.APIListeners = append(res.APIListeners, r.(*listener.Listener))
	}
	for _, r := range sortedValues(t.sets[setAPIRoutes]) {
		res.APIRoutes = append(res.APIRoutes, r.(*route.RouteConfiguration))
	}
	res.Warnings = t.warnings()
	return res
}

func (t *translation) warnings() []string {
	var out []string
	for _, key := range t.order {
		out = append(out, t.services[key].warnings...)
	}
	return append(out, t.routeWarnings...)
}

func sortedValues(m map[string]types.Resource) []types.Resource {
	out := make([]types.Resource, 0, len(m))
	for _, k := range sortedKeys(m) {
		out = append(out, m[k])
	}
	return out
}

// validateChanged runs ValidateAll on every new or changed resource. The
// unchanged ones passed when they were published.
func validateChanged(ch *changes) error {
	var errs []error
	for set := range ch {
		for _, name := range sortedKeys(ch[set].updated) {
			v, ok := ch[set].updated[name].(validator)
			if !ok {
				errs = append(errs, fmt.Errorf("%s %q: not a validatable resource", setTypes[set], name))
				continue
			}
			if err := v.ValidateAll(); err != nil {
				errs = append(errs, fmt.Errorf("%s %q: %w", typeLabel(setTypes[set]), name, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("xds: invalid resources: %w", err)
	}
	return nil
}

// checkConsistent is go-control-plane's Snapshot.Consistent for both views,
// extended to API listeners (which Consistent reports as inconsistent) and
// to route -> cluster references, and limited to what changed: a changed
// listener's route configurations exist, a changed route configuration's
// clusters exist, a changed EDS cluster's load assignment exists, and
// nothing left refers to a removed resource.
func checkConsistent(t *translation, ch *changes) error {
	var errs []error
	routeSetOf := map[int]int{setGatewayListeners: setGatewayRoutes, setAPIListeners: setAPIRoutes}
	for ls, rs := range routeSetOf {
		for name, r := range ch[ls].updated {
			for _, rc := range listenerRouteNames(r.(*listener.Listener)) {
				if _, ok := t.sets[rs][rc]; !ok {
					errs = append(errs, fmt.Errorf("listener %q: route configuration %q does not exist", name, rc))
				}
			}
		}
		if len(ch[rs].removed) > 0 {
			removed := setOf(ch[rs].removed)
			for name, r := range t.sets[ls] {
				for _, rc := range listenerRouteNames(r.(*listener.Listener)) {
					if removed[rc] {
						errs = append(errs, fmt.Errorf("listener %q: route configuration %q was removed", name, rc))
					}
				}
			}
		}
	}
	for _, rs := range []int{setGatewayRoutes, setAPIRoutes} {
		for name, r := range ch[rs].updated {
			for _, c := range routeClusterNames(r.(*route.RouteConfiguration)) {
				if _, ok := t.sets[setClusters][c]; !ok {
					errs = append(errs, fmt.Errorf("route configuration %q: cluster %q does not exist", name, c))
				}
			}
		}
	}
	if len(ch[setClusters].removed) > 0 {
		removed := setOf(ch[setClusters].removed)
		for _, rs := range []int{setGatewayRoutes, setAPIRoutes} {
			for name, r := range t.sets[rs] {
				if _, changed := ch[rs].updated[name]; changed {
					continue // checked above
				}
				for _, c := range routeClusterNames(r.(*route.RouteConfiguration)) {
					if removed[c] {
						errs = append(errs, fmt.Errorf("route configuration %q: cluster %q was removed", name, c))
					}
				}
			}
		}
	}
	for name, r := range ch[setClusters].updated {
		if eds := edsName(r.(*cluster.Cluster)); eds != "" {
			if _, ok := t.sets[setEndpoints][eds]; !ok {
				errs = append(errs, fmt.Errorf("cluster %q: load assignment %q does not exist", name, eds))
			}
		}
	}
	if len(ch[setEndpoints].removed) > 0 {
		removed := setOf(ch[setEndpoints].removed)
		for name, r := range t.sets[setClusters] {
			if eds := edsName(r.(*cluster.Cluster)); eds != "" && removed[eds] {
				errs = append(errs, fmt.Errorf("cluster %q: load assignment %q was removed", name, eds))
			}
		}
	}
	if len(errs) > 0 {
		slices.SortFunc(errs, func(a, b error) int { return cmp.Compare(a.Error(), b.Error()) })
		return fmt.Errorf("inconsistent: %w", errors.Join(errs...))
	}
	return nil
}

func setOf(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

func edsName(c *cluster.Cluster) string {
	if c.GetType() != cluster.Cluster_EDS {
		return ""
	}
	if n := c.GetEdsClusterConfig().GetServiceName(); n != "" {
		return n
	}
	return c.GetName()
}

// listenerRouteNames are the RDS names of a listener's connection managers,
// in filter chains or in its api_listener.
func listenerRouteNames(l *listener.Listener) []string {
	var out []string
	visit := func(a *anypb.Any) {
		m := &hcm.HttpConnectionManager{}
		if a == nil || !a.MessageIs(m) {
			return
		}
		if err := a.UnmarshalTo(m); err != nil {
			return
		}
		if n := m.GetRds().GetRouteConfigName(); n != "" {
			out = append(out, n)
		}
	}
	if api := l.GetApiListener(); api != nil {
		visit(api.GetApiListener())
	}
	chains := l.GetFilterChains()
	if d := l.GetDefaultFilterChain(); d != nil {
		chains = append(chains[:len(chains):len(chains)], d)
	}
	for _, fc := range chains {
		for _, f := range fc.GetFilters() {
			visit(f.GetTypedConfig())
		}
	}
	return out
}

// routeClusterNames are the clusters a route configuration sends to.
func routeClusterNames(rc *route.RouteConfiguration) []string {
	var out []string
	for _, vh := range rc.GetVirtualHosts() {
		for _, r := range vh.GetRoutes() {
			a := r.GetRoute()
			if a == nil {
				continue
			}
			if c := a.GetCluster(); c != "" {
				out = append(out, c)
			}
			for _, w := range a.GetWeightedClusters().GetClusters() {
				out = append(out, w.GetName())
			}
		}
	}
	return out
}

// serviceEqual reports whether two services translate the same.
func serviceEqual(a, b *discovery.Service) bool {
	if a.Namespace != b.Namespace || a.Name != b.Name || !slices.Equal(a.Ports, b.Ports) || !routeEqual(a.Route, b.Route) {
		return false
	}
	return slices.EqualFunc(a.Revisions, b.Revisions, func(x, y discovery.Revision) bool {
		return x.Number == y.Number && x.Weight == y.Weight && slices.Equal(x.Endpoints, y.Endpoints)
	})
}

// routeInputsEqual reports whether two services give the same routes:
// the same route and the same revisions with the same weights.
func routeInputsEqual(a, b *discovery.Service) bool {
	if !routeEqual(a.Route, b.Route) {
		return false
	}
	if a.Route == nil {
		return true
	}
	return slices.EqualFunc(a.Revisions, b.Revisions, func(x, y discovery.Revision) bool {
		return x.Number == y.Number && x.Weight == y.Weight
	})
}

func routeEqual(a, b *discovery.Route) bool {
	if a == nil || b == nil {
		return a == b
	}
	return slices.Equal(a.Hosts, b.Hosts) && slices.Equal(a.Paths, b.Paths) &&
		a.CanaryHeader == b.CanaryHeader && a.CanaryValue == b.CanaryValue && a.CanaryRevision == b.CanaryRevision &&
		a.StickyHeader == b.StickyHeader && a.StickyCookie == b.StickyCookie
}
