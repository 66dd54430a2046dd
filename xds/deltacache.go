package xds

import (
	"context"
	"fmt"
	"maps"
	"strconv"
	"sync"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// deltaCache serves one resource type to delta (incremental) streams.
//
// go-control-plane's LinearCache does the same job but compares every
// resource of the type with what each wildcard client holds, on every
// change and on every ACK: 100 gateways x 1,000 load assignments is 200,000
// map look-ups for one moved endpoint. deltaCache keeps a log of which
// names changed at which snapshot version, and knows (from the stream's
// last response) which version a client's held resources reflect, so it
// looks only at the names changed since: one endpoint change costs one
// look-up per watch, plus the copy of the client's version map that the
// delta server keeps.
//
// Versions are snapshot versions: a resource's version is the snapshot
// that last changed it, and a response's system_version_info the snapshot
// it reflects. Every resource is marshalled once per change and shared by
// every response that carries it.
//
// All methods run under the Server's pubMu (Update holding it for writing,
// createWatch for reading) and deltaCache.mu.
type deltaCache struct {
	typeURL string

	mu        sync.Mutex // also taken by cancel, which runs outside pubMu
	version   uint64     // snapshot the cache holds
	floor     uint64     // the log covers every change after floor
	resources map[string]*discoverypb.Resource
	log       []deltaLogEntry // oldest first
	watches   map[*deltaWatch]struct{}
}

type deltaLogEntry struct {
	version uint64
	names   []string // updated or removed at version
}

// deltaWatch is a delta stream waiting for a change of one type: its
// client held everything it subscribed to when the watch opened.
type deltaWatch struct {
	req   *discoverypb.DeltaDiscoveryRequest
	sub   cachev3.Subscription
	ch    chan cachev3.DeltaResponse
	known uint64 // the snapshot version the client's held resources reflect

	ts      *typeState // the stream's record, for ACK tracking
	current bool       // the client had seen every response when the watch opened
}

func newDeltaCache(typeURL string) *deltaCache {
	return &deltaCache{typeURL: typeURL, resources: map[string]*discoverypb.Resource{}, watches: map[*deltaWatch]struct{}{}}
}

// update applies one snapshot's changes and answers every watch they
// concern. It returns the watches that stayed open (their clients already
// hold version). The caller holds pubMu for writing.
func (c *deltaCache) update(version uint64, updated map[string]types.Resource, removed []string) (answered, open []*deltaWatch, err error) {
	v := strconv.FormatUint(version, 10)
	names := make([]string, 0, len(updated)+len(removed))
	for name, r := range updated {
		a, err := anypb.New(r)
		if err != nil {
			return nil, nil, fmt.Errorf("xds: %s %q: %w", typeLabel(c.typeURL), name, err)
		}
		c.resources[name] = &discoverypb.Resource{Name: name, Version: v, Resource: a}
		names = append(names, name)
	}
	for _, name := range removed {
		delete(c.resources, name)
		names = append(names, name)
	}
	c.version = version
	if len(names) > 0 {
		c.log = append(c.log, deltaLogEntry{version: version, names: names})
		if len(c.log) > historyLimit {
			c.floor = c.log[0].version
			c.log = c.log[1:]
		}
	}
	for w := range c.watches {
		if resp := c.respond(w.req, w.sub, w.known, false); resp != nil {
			w.ch <- resp // buffered by the delta server: never blocks
			delete(c.watches, w)
			answered = append(answered, w)
			continue
		}
		w.known = version
		open = append(open, w)
	}
	return answered, open, nil
}

// createWatch answers at once when the client lacks something, or opens a
// watch. known is the snapshot version of the last response sent on the
// stream for this type, 0 when unknown (first request, subscription
// change); then every subscribed name is compared.
func (c *deltaCache) createWatch(req *discoverypb.DeltaDiscoveryRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse, known uint64, ts *typeState, current bool) (cachev3.DeltaResponse, *deltaWatch) {
	if len(req.GetResourceNamesSubscribe()) > 0 || len(req.GetResourceNamesUnsubscribe()) > 0 || len(req.GetInitialResourceVersions()) > 0 {
		known = 0
	}
	// Before the first snapshot there is nothing to compare with: an
	// answer now would tell a client that reconnected to a restarted
	// control plane to remove everything it holds. It waits, as on the
	// state-of-the-world path, for the first publish.
	if c.version > 0 {
		// The first request of a wildcard subscription gets an answer even
		// if empty: Envoy waits for one to finish initializing.
		replyEmpty := sub.IsWildcard() && req.GetResponseNonce() == ""
		if resp := c.respond(req, sub, known, replyEmpty); resp != nil {
			return resp, nil
		}
	}
	w := &deltaWatch{req: req, sub: sub, ch: ch, known: c.version, ts: ts, current: current}
	c.watches[w] = struct{}{}
	return nil, w
}

func (c *deltaCache) cancel(w *deltaWatch) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.watches, w)
}

// openWatches lists the watches waiting for a change.
func (c *deltaCache) openWatches() []*deltaWatch {
	out := make([]*deltaWatch, 0, len(c.watches))
	for w := range c.watches {
		out = append(out, w)
	}
	return out
}

// respond builds the response that brings a client holding
// sub.ReturnedResources() (which reflect snapshot known, if known > 0) up
// to date, or nil when nothing is to be sent.
func (c *deltaCache) respond(req *discoverypb.DeltaDiscoveryRequest, sub cachev3.Subscription, known uint64, replyEmpty bool) cachev3.DeltaResponse {
	wild := sub.IsWildcard()
	subscribed := sub.SubscribedResources()
	returned := sub.ReturnedResources()
	var updated []*discoverypb.Resource
	var removed []string
	check := func(name string) {
		_, named := subscribed[name]
		covered := wild || named
		r, exists := c.resources[name]
		held, isHeld := returned[name]
		switch {
		case exists && covered && (!isHeld || held != r.GetVersion()):
			updated = append(updated, r)
		case !exists && isHeld:
			removed = append(removed, name)
		}
	}
	incremental := known > 0 && known >= c.floor
	if incremental {
		seen := map[string]bool{}
		for i := len(c.log) - 1; i >= 0 && c.log[i].version > known; i-- {
			for _, name := range c.log[i].names {
				if !seen[name] {
					seen[name] = true
					check(name)
				}
			}
		}
	} else {
		if wild {
			for name := range c.resources {
				check(name)
			}
		} else {
			for name := range subscribed {
				check(name)
			}
		}
		for name := range returned {
			if _, exists := c.resources[name]; !exists {
				check(name)
			}
		}
	}
	if len(updated) == 0 && len(removed) == 0 && !replyEmpty {
		return nil
	}
	// The delta server replaces the subscription's version map with next
	// when it sends the response. On the incremental path returned is a
	// map this cache made for an earlier response of the same stream and
	// type, which nothing else reads or writes while the stream waits on
	// its watch (the stream goroutine cancels the watch, under c.mu, before
	// touching its subscription), so it is brought up to date in place:
	// copying 1,000 versions per gateway per change was most of the cost
	// of a change. Elsewhere (first request, subscription change) it is
	// copied.
	next := returned
	if !incremental || next == nil {
		next = make(map[string]string, len(returned)+len(updated))
		maps.Copy(next, returned)
	}
	for _, r := range updated {
		next[r.GetName()] = r.GetVersion()
	}
	for _, name := range removed {
		delete(next, name)
	}
	v := strconv.FormatUint(c.version, 10)
	return &deltaResponse{
		req:  req,
		next: next,
		resp: &discoverypb.DeltaDiscoveryResponse{
			SystemVersionInfo: v,
			TypeUrl:           c.typeURL,
			Resources:         updated,
			RemovedResources:  removed,
		},
	}
}

// deltaResponse is a built response; the delta server sets its nonce.
type deltaResponse struct {
	req  *discoverypb.DeltaDiscoveryRequest
	resp *discoverypb.DeltaDiscoveryResponse
	next map[string]string
}

var _ cachev3.DeltaResponse = (*deltaResponse)(nil)

func (r *deltaResponse) GetDeltaDiscoveryResponse() (*discoverypb.DeltaDiscoveryResponse, error) {
	return r.resp, nil
}
func (r *deltaResponse) GetDeltaRequest() *discoverypb.DeltaDiscoveryRequest { return r.req }
func (r *deltaResponse) GetSystemVersion() (string, error)                   { return r.resp.SystemVersionInfo, nil }
func (r *deltaResponse) GetResponseVersion() string                          { return r.resp.SystemVersionInfo }
func (r *deltaResponse) GetNextVersionMap() map[string]string                { return r.next }
func (r *deltaResponse) GetReturnedResources() map[string]string             { return r.next }
func (r *deltaResponse) GetContext() context.Context                         { return context.Background() }
