package ui

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/berth-dev/berth/api"
	"github.com/berth-dev/berth/api/pb"
	"github.com/berth-dev/berth/controlplane/rollouthistory"
	"github.com/berth-dev/berth/controlplane/store"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// isDenied: the API refused the user (not: could not answer).
func isDenied(err error) bool {
	c := status.Code(err)
	return c == codes.PermissionDenied || c == codes.Unauthenticated
}

// Topics of a change event: what a page refetches.
const (
	TopicServices = "services"
	TopicNodes    = "nodes"
	TopicGateways = "gateways"
	TopicEvents   = "events"
	TopicRollouts = "rollouts"
)

var allTopics = []string{TopicServices, TopicNodes, TopicGateways, TopicEvents, TopicRollouts}

// changedTopics says what differs between two views of the cluster, a
// pure function. Events are not in the cache: they come with changes of
// services and rollouts (the controllers record them as they act).
func changedTopics(prev, next *store.View) []string {
	if prev == nil {
		return allTopics
	}
	var out []string
	services := !maps.Equal(prev.ServiceGens, next.ServiceGens) || len(prev.Services) != len(next.Services)
	if services {
		out = append(out, TopicServices)
	}
	if prev.NodesGen != next.NodesGen || !maps.Equal(prev.DNSVersions, next.DNSVersions) {
		out = append(out, TopicNodes)
	}
	if !slices.EqualFunc(prev.Gateways, next.Gateways, func(a, b api.GatewayStatus) bool {
		return a.NodeID == b.NodeID && a.Replica == b.Replica && a.Version == b.Version && a.State == b.State && a.LastNack == b.LastNack
	}) {
		out = append(out, TopicGateways)
	}
	rollouts := !maps.EqualFunc(prev.Rollouts, next.Rollouts, func(a, b store.VersionedRollout) bool { return a.ModRevision == b.ModRevision })
	if services || rollouts {
		out = append(out, TopicEvents)
	}
	if rollouts {
		out = append(out, TopicRollouts)
	}
	return out
}

// event is one server-sent event, already encoded.
type event struct {
	name string
	ns   string // a point's namespace: streams check the user may read it
	data []byte
}

// subscriber is one open stream.
type subscriber struct {
	ch chan event
	// missed: a change could not be queued; the stream sends every topic.
	mu     sync.Mutex
	missed bool
}

// hub turns the cache's wake-ups into debounced change events and the
// recorder's live points into point events, for every open stream.
type hub struct {
	cfg     Config
	metrics *metrics

	mu   sync.Mutex
	subs map[*subscriber]struct{}
}

func newHub(cfg Config, m *metrics) *hub {
	return &hub{cfg: cfg, metrics: m, subs: map[*subscriber]struct{}{}}
}

func (h *hub) subscribe() (*subscriber, func()) {
	sub := &subscriber{ch: make(chan event, 64)}
	h.mu.Lock()
	h.subs[sub] = struct{}{}
	n := len(h.subs)
	h.mu.Unlock()
	h.metrics.streams.Set(float64(n))
	return sub, func() {
		h.mu.Lock()
		delete(h.subs, sub)
		n := len(h.subs)
		h.mu.Unlock()
		h.metrics.streams.Set(float64(n))
	}
}

func (h *hub) broadcast(ev event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.subs {
		select {
		case sub.ch <- ev:
		default:
			if ev.name == "change" {
				sub.mu.Lock()
				sub.missed = true
				sub.mu.Unlock()
			}
			// A point dropped: the page's next history fetch has it.
		}
	}
}

func (h *hub) run(ctx context.Context) {
	var wake <-chan struct{}
	if h.cfg.Views != nil {
		ch, cancel := h.cfg.Views.Subscribe()
		defer cancel()
		wake = ch
	}
	points := time.NewTicker(h.cfg.PointEvery)
	defer points.Stop()
	var prev *store.View // nil: every topic changed
	var lastChange time.Time
	var debounce <-chan time.Time
	sent := map[string]int64{} // newest point sent per rollout
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
			if debounce == nil {
				debounce = time.After(max(0, h.cfg.ChangeEvery-time.Since(lastChange)))
			}
		case <-debounce:
			debounce = nil
			lastChange = time.Now()
			h.mu.Lock()
			watched := len(h.subs) > 0
			h.mu.Unlock()
			if !watched {
				// Nobody to tell: no view is built (a copy of the whole
				// cluster's state, twice a second during a deploy); the
				// next stream starts with every topic anyway.
				prev = nil
				continue
			}
			next := h.cfg.Views.View()
			topics := changedTopics(prev, next)
			prev = next
			if len(topics) > 0 {
				b, _ := json.Marshal(map[string][]string{"topics": topics})
				h.broadcast(event{name: "change", data: b})
			}
		case <-points.C:
			if h.cfg.History == nil {
				continue
			}
			seen := map[string]bool{}
			for _, l := range h.cfg.History.Live() {
				key := l.Namespace + "/" + l.Service
				seen[key] = true
				if sent[key] == l.Point.TMs {
					continue
				}
				sent[key] = l.Point.TMs
				b, _ := json.Marshal(l)
				h.broadcast(event{name: "point", ns: l.Namespace, data: b})
			}
			for key := range sent {
				if !seen[key] {
					delete(sent, key)
				}
			}
		}
	}
}

// stream is GET /api/stream: server-sent events until the client goes.
// Points are sent only for namespaces the user may read (asked of the
// API, remembered for a while); change events carry no data.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, sess *session) {
	_, ok := w.(http.Flusher)
	if !ok {
		writeError(w, http.StatusInternalServerError, "Internal", "streaming unsupported")
		return
	}
	if !sess.openStream(s.cfg.StreamsPerSession) {
		writeError(w, http.StatusTooManyRequests, "ResourceExhausted", fmt.Sprintf("at most %d event streams per session", s.cfg.StreamsPerSession))
		return
	}
	defer sess.closeStream()
	// A stream outlives the server's read timeout.
	rc := http.NewResponseController(w)
	_ = rc.SetReadDeadline(time.Time{})
	_ = rc.SetWriteDeadline(time.Time{})
	sub, unsubscribe := s.hub.subscribe()
	defer unsubscribe()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	id := time.Now().UnixMilli()
	// Each write has a deadline: a client that stops reading (its socket
	// buffers full) would otherwise hold this goroutine, its session's
	// stream slot and the buffers for ever, and neither the heartbeat
	// nor a logout could end it.
	deadline := func() { _ = rc.SetWriteDeadline(time.Now().Add(2 * s.cfg.Heartbeat)) }
	write := func(name string, data []byte) bool {
		id++
		deadline()
		if _, err := fmt.Fprintf(w, "id: %d\nevent: %s\ndata: %s\n\n", id, name, data); err != nil {
			return false
		}
		return rc.Flush() == nil
	}
	// The first event says: fetch everything (also after a reconnect:
	// Last-Event-ID is honoured loosely, the history covers the gap).
	all, _ := json.Marshal(map[string][]string{"topics": allTopics})
	deadline()
	if _, err := fmt.Fprintf(w, "retry: 2000\n\n"); err != nil || !write("change", all) {
		return
	}
	allowed := map[string]time.Time{} // namespace -> readable until
	denied := map[string]time.Time{}
	revoked := false
	// mayRead fails closed: only an answer past the API's authorisation
	// (the rollout, or NotFound) lets the point through; a refusal is
	// remembered, an API that did not answer is asked again next time.
	mayRead := func(ns, service string) bool {
		now := time.Now()
		if now.Before(allowed[ns]) {
			return true
		}
		if now.Before(denied[ns]) {
			return false
		}
		ctx, cancel := context.WithTimeout(r.Context(), apiTimeout)
		defer cancel()
		_, err := s.cfg.API.RolloutStatus(ctx, &pb.RolloutRequest{Namespace: ns, Name: service}, pb.TokenCall(sess.token))
		switch code := status.Code(err); {
		case err == nil || code == codes.NotFound:
			allowed[ns] = now.Add(30 * time.Second)
			return true
		case code == codes.Unauthenticated:
			// Revoked or expired: the session ends, as on any call.
			s.sessions.drop(sess.id)
			revoked = true
		case isDenied(err):
			denied[ns] = now.Add(30 * time.Second)
		}
		return false
	}
	heartbeat := time.NewTicker(s.cfg.Heartbeat)
	defer heartbeat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-heartbeat.C:
			deadline()
			if _, err := fmt.Fprintf(w, ": heartbeat\n\n"); err != nil || rc.Flush() != nil {
				return
			}
			if s.sessions.get(sess.id, time.Now()) == nil {
				return // logged out or expired
			}
		case ev := <-sub.ch:
			sub.mu.Lock()
			missed := sub.missed
			sub.missed = false
			sub.mu.Unlock()
			if missed && !write("change", all) {
				return
			}
			if ev.name == "point" {
				var l rollouthistory.Live
				if json.Unmarshal(ev.data, &l) != nil || !mayRead(l.Namespace, l.Service) {
					if revoked {
						return
					}
					continue
				}
			}
			if !write(ev.name, ev.data) {
				return
			}
		}
	}
}
