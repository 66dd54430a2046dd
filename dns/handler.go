package dns

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/berth-dev/berth/discovery"
)

// handler is the packet path shared by the UDP and TCP loops (and the fuzz
// target): raw query in, raw reply out. It owns no sockets.
type handler struct {
	cfg   Config
	log   *slog.Logger
	met   *metrics
	table atomic.Pointer[Table]
	fwd   *forwarder // never nil; with no upstreams the table never forwards
}

func newHandler(cfg Config, log *slog.Logger, met *metrics) *handler {
	h := &handler{cfg: cfg, log: log, met: met, fwd: newForwarder(cfg, log)}
	h.table.Store(newTable(nil, cfg, false))
	return h
}

func (h *handler) update(snap *discovery.Snapshot) {
	// Built from the current table, reusing what did not change; only
	// Update calls this, and the server's callers serialise their updates
	// (a racing pair still gives a correct table, just less reuse).
	t := newTableFrom(snap, h.cfg, true, h.table.Load())
	h.table.Store(t)
	h.met.names.Set(float64(t.Len()))
	var version uint64
	if snap != nil {
		version = snap.Version
	}
	h.log.Debug("answer table updated", "version", version, "names", t.Len())
}

// pending is a parsed query waiting for an upstream.
type pending struct {
	req    *dns.Msg
	udp    bool
	start  time.Time
	client netip.Addr
}

// fastReplyMax is the buffer handle allocates when given none: replies
// larger than it take the general path.
const fastReplyMax = 4096

// handle answers what it can without waiting for the network. It returns
// the wire reply (nil: drop the packet), or a pending query to forward.
// out is a buffer the reply may be written into (reused by the caller once
// the reply is sent); with a nil or short out the reply is allocated.
func (h *handler) handle(buf []byte, client netip.Addr, udp bool, out []byte) ([]byte, *pending) {
	start := time.Now()
	if len(buf) < 12 || buf[2]&0x80 != 0 {
		// No header, or a response: answering responses invites loops.
		h.met.dropped.Inc()
		return nil, nil
	}
	if out == nil {
		out = make([]byte, 0, fastReplyMax)
	}
	t := h.table.Load()
	if reply, qtype, rcode, ok := t.answerWire(buf, client, udp, out); ok {
		h.met.query(qtype, rcode).Inc()
		h.met.latAuthoritative.Observe(time.Since(start).Seconds())
		return reply, nil
	}
	return h.general(t, buf, client, udp, start)
}

// general is the path for every query the fast path declines: unpack,
// Table.Answer, fit to the transport, pack.
func (h *handler) general(t *Table, buf []byte, client netip.Addr, udp bool, start time.Time) ([]byte, *pending) {
	req := new(dns.Msg)
	if err := req.Unpack(buf); err != nil || malformed(req, buf) {
		return h.formErr(buf, start), nil
	}
	resp, action := t.Answer(req, client)
	if action == Forward && !forwardable(req) {
		// Only recursive (RD) class IN queries other than zone
		// transfers are forwarded; CH queries such as version.bind and
		// the rest are refused, never passed on.
		h.met.forwarded.WithLabelValues("refused").Inc()
		r := new(dns.Msg)
		r.SetRcode(req, dns.RcodeRefused)
		return h.finish(req, r, udp, sourceError, start), nil
	}
	if action == Forward {
		if r := h.fwd.cached(req, start); r != nil {
			h.met.cacheHits.Inc()
			return h.finish(req, r, udp, sourceCache, start), nil
		}
		h.met.cacheMiss.Inc()
		return nil, &pending{req: req, udp: udp, start: start, client: client}
	}
	source := sourceAuthoritative
	if !resp.Authoritative {
		source = sourceError
	}
	return h.finish(req, resp, udp, source, start), nil
}

// malformed reports what miekg/dns unpacks but RFCs refuse: more than
// one OPT record (RFC 6891 §6.1.1), a question cut before its type or
// class (miekg/dns then leaves them zero).
func malformed(req *dns.Msg, buf []byte) bool {
	opts := 0
	for _, rr := range req.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			opts++
		}
	}
	if opts > 1 {
		return true
	}
	if len(req.Question) == 1 {
		q := req.Question[0]
		if q.Qclass == 0 || questionEnd(buf) > len(buf) {
			return true
		}
	}
	return false
}

// questionEnd is the offset just past the first question's class, from
// the raw packet (so a missing class shows), or len(buf)+1 if cut.
func questionEnd(buf []byte) int {
	_, off, err := dns.UnpackDomainName(buf, headerLen)
	if err != nil {
		return len(buf) + 1
	}
	return off + 4
}

// forwardable: what may be passed to an upstream.
func forwardable(req *dns.Msg) bool {
	if !req.RecursionDesired || len(req.Question) != 1 {
		return false
	}
	q := req.Question[0]
	return q.Qclass == dns.ClassINET && q.Qtype != dns.TypeAXFR && q.Qtype != dns.TypeIXFR
}

// forward asks the upstreams for p and returns the wire reply. The caller
// holds a forwarding slot.
func (h *handler) forward(ctx context.Context, p *pending) []byte {
	r, err := h.fwd.exchange(ctx, p.req)
	if err != nil {
		h.met.forwarded.WithLabelValues("error").Inc()
		h.log.Debug("forward failed", "name", p.req.Question[0].Name, "client", p.client, "err", err)
		r = new(dns.Msg)
		r.SetRcode(p.req, dns.RcodeServerFailure)
		r.RecursionAvailable = true
		return h.finish(p.req, r, p.udp, sourceError, p.start)
	}
	h.met.forwarded.WithLabelValues("ok").Inc()
	return h.finish(p.req, r, p.udp, sourceForwarded, p.start)
}

// limited answers SERVFAIL to a query that found no forwarding slot
// (why: limitedServer or limitedClient).
func (h *handler) limited(p *pending, why string) []byte {
	h.met.forwarded.WithLabelValues(why).Inc()
	r := new(dns.Msg)
	r.SetRcode(p.req, dns.RcodeServerFailure)
	r.RecursionAvailable = true
	return h.finish(p.req, r, p.udp, sourceError, p.start)
}

// startForward forwards p in a goroutine of wg, which hands send the
// reply (nil when none could be packed), holding a forwarding slot of
// the client's and the server's share meanwhile. When none is free it
// starts nothing and returns the SERVFAIL to send at once.
func (h *handler) startForward(ctx context.Context, wg *sync.WaitGroup, p *pending, send func([]byte)) []byte {
	if why := h.fwd.tryAcquire(p.client); why != "" {
		return h.limited(p, why)
	}
	wg.Go(func() {
		defer h.fwd.release(p.client)
		send(h.forward(ctx, p))
	})
	return nil
}

// serve is the whole path for one query, forwarding included, for callers
// that may block (tests, fuzzing).
func (h *handler) serve(ctx context.Context, buf []byte, client netip.Addr, udp bool, out []byte) []byte {
	out, p := h.handle(buf, client, udp, out)
	if p == nil {
		return out
	}
	if why := h.fwd.tryAcquire(p.client); why != "" {
		return h.limited(p, why)
	}
	defer h.fwd.release(p.client)
	return h.forward(ctx, p)
}

// finish fits resp to the client's transport, packs it and counts it.
func (h *handler) finish(req, resp *dns.Msg, udp bool, source string, start time.Time) []byte {
	fit(resp, req, udp)
	out, err := resp.Pack()
	if err != nil {
		h.log.Debug("pack reply", "name", req.Question[0].Name, "err", err)
		fail := new(dns.Msg)
		fail.SetRcode(req, dns.RcodeServerFailure)
		fit(fail, req, udp)
		if out, err = fail.Pack(); err != nil {
			return nil
		}
		resp = fail
	}
	if len(req.Question) > 0 {
		h.met.query(req.Question[0].Qtype, resp.Rcode).Inc()
	} else {
		h.met.queries.WithLabelValues("none", rcodeLabel(resp.Rcode)).Inc()
	}
	h.met.latency.WithLabelValues(source).Observe(time.Since(start).Seconds())
	return out
}

// formErr answers a packet whose header parsed but whose body did not:
// the header echoed with QR set and FORMERR, no sections.
func (h *handler) formErr(buf []byte, start time.Time) []byte {
	out := make([]byte, 12)
	copy(out[:2], buf[:2])              // id
	out[2] = 0x80 | buf[2]&0x79         // QR, opcode, RD
	out[3] = byte(dns.RcodeFormatError) // RA=0, Z=0, rcode; counts stay zero
	h.met.queries.WithLabelValues("none", rcodeLabel(dns.RcodeFormatError)).Inc()
	h.met.latency.WithLabelValues(sourceError).Observe(time.Since(start).Seconds())
	return out
}

// fit adds the OPT record when the query had one (RFC 6891: an EDNS query
// gets an EDNS reply, never otherwise) and truncates the reply to what the
// client can take: over UDP its EDNS buffer size capped at MaxUDPSize, or
// 512 without EDNS; over TCP 64 KiB. Truncation sets TC.
func fit(resp, req *dns.Msg, udp bool) {
	extra := make([]dns.RR, 0, len(resp.Extra)+1)
	for _, rr := range resp.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	size := dns.MaxMsgSize
	if udp {
		size = dns.MinMsgSize
	}
	if opt := req.IsEdns0(); opt != nil {
		bufSize := min(max(opt.UDPSize(), dns.MinMsgSize), MaxUDPSize)
		o := new(dns.OPT)
		o.Hdr.Name = "."
		o.Hdr.Rrtype = dns.TypeOPT
		o.SetUDPSize(bufSize)
		if opt.Do() {
			o.SetDo() // RFC 3225 §3: the DO bit comes back as sent
		}
		extra = append(extra, o)
		if udp {
			size = int(bufSize)
		}
	}
	resp.Extra = extra
	tc, an, ns := resp.Truncated, len(resp.Answer), len(resp.Ns)
	resp.Truncate(size)
	// TC says the answer or authority was cut; dropped additional (glue)
	// records alone do not set it (RFC 2181 §9).
	resp.Truncated = tc || len(resp.Answer) < an || len(resp.Ns) < ns
}
