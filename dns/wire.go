package dns

import (
	"encoding/binary"
	"net/netip"

	"github.com/miekg/dns"
)

// The fast path. NewTable packs every answer the table can give into wire
// format once; a common query (one question, class IN, at most an OPT
// without unusual options) is then answered by parsing its header and
// question in place, one map lookup, and copying: the reply's header is
// built from the query's id and flags, its question is the query's own
// bytes (so the 0x20 case comes back as sent), and the packed sections
// follow. The sections were packed after a question of the same length
// (the lower-cased name), so their compression pointers stay valid.
// Everything else (other opcodes and classes, ANY, zone transfers, names
// outside the zone, truncation, malformed packets) goes to the general
// path, Answer, which gives the same answers from the same records.

// wireNode is one name's packed answers.
type wireNode struct {
	sets []wireSet
	// reverse: a reverse name (in-addr.arpa, ip6.arpa) of an endpoint.
	// Only its PTR is answered here; other types go the general path.
	reverse bool
}

// wireSet is the reply to one type at one name, after the question.
type wireSet struct {
	qtype      uint16
	an, ns, ar uint16
	body       []byte // answer, authority and additional sections
	// offs are the answer records' start offsets in body plus the end of
	// the answer section, when the records may be rotated (addresses
	// whose owner is a pointer to the question); nil otherwise.
	offs []uint16
	pick *picker // shared with the rrset: both paths turn one counter
}

// buildWire packs the names of t.names that no fragment brought (the apex,
// empty non-terminals) into t.wire, and the negative SOA. Called once,
// last, by newTable.
func (t *Table) buildWire() {
	t.zoneWire = wireName(t.zone)
	soa := t.negSOA[0]
	buf := make([]byte, dns.Len(soa)+len(t.zoneWire))
	n, err := dns.PackRR(soa, buf, 0, nil, false)
	if err == nil {
		t.negTail = append([]byte(nil), buf[len(t.zoneWire):n]...)
	}
	for name, n := range t.names {
		key := wireName(name)
		if _, ok := t.wire[string(key)]; !ok {
			t.wire[string(key)] = packNode(name, n, false)
		}
	}
}

func packNode(name string, n *node, reverse bool) *wireNode {
	w := &wireNode{reverse: reverse, sets: make([]wireSet, 0, len(n.sets))}
	for i := range n.sets {
		if ws, ok := packSet(name, &n.sets[i]); ok {
			w.sets = append(w.sets, ws)
		}
	}
	return w
}

// packSet packs the reply to a query for set's type at name, in stored
// order, and keeps what follows the question.
func packSet(name string, set *rrset) (wireSet, bool) {
	m := new(dns.Msg)
	m.Response = true
	m.Authoritative = true
	m.Compress = true
	m.Question = []dns.Question{{Name: name, Qtype: set.qtype, Qclass: dns.ClassINET}}
	m.Answer = set.rrs
	m.Extra = set.extra
	b, err := m.Pack()
	if err != nil || len(b) > dns.MaxMsgSize {
		return wireSet{}, false // the general path answers (and reports) it
	}
	qEnd := 12 + len(wireName(name)) + 4
	ws := wireSet{
		qtype: set.qtype,
		an:    binary.BigEndian.Uint16(b[6:]),
		ns:    binary.BigEndian.Uint16(b[8:]),
		ar:    binary.BigEndian.Uint16(b[10:]),
		body:  append([]byte(nil), b[qEnd:]...),
		pick:  set.pick,
	}
	if set.pick != nil {
		ws.offs = rotationOffsets(ws.body, int(ws.an), qEnd)
	}
	return ws, true
}

// rotationOffsets returns the start offsets of the an answer records at
// the beginning of body, plus the end of the last one, if every record is
// an A or AAAA whose owner is a pointer to the question (offset 12): such
// records can be reordered as byte blocks. Otherwise nil.
func rotationOffsets(body []byte, an, base int) []uint16 {
	offs := make([]uint16, 0, an+1)
	off := 0
	for range an {
		if off+12 > len(body) || body[off] != 0xC0 || body[off+1] != 12 {
			return nil
		}
		typ := binary.BigEndian.Uint16(body[off+2:])
		if typ != dns.TypeA && typ != dns.TypeAAAA {
			return nil
		}
		offs = append(offs, uint16(off))
		off += 12 + int(binary.BigEndian.Uint16(body[off+10:]))
	}
	if off > len(body) || base+off > 0xFFFF {
		return nil
	}
	return append(offs, uint16(off))
}

// wireName is name (presentation format, fully qualified, lower case) in
// wire format. Names in the table are plain labels, so no escapes.
func wireName(name string) []byte {
	out := make([]byte, 0, len(name)+1)
	for name != "" && name != "." {
		i := 0
		for i < len(name) && name[i] != '.' {
			i++
		}
		out = append(out, byte(i))
		out = append(out, name[:i]...)
		if i == len(name) {
			break
		}
		name = name[i+1:]
	}
	return append(out, 0)
}

// Limits of the fast path: anything larger takes the general path.
const (
	headerLen = 12
	optLen    = 11 // root name, type, class (size), TTL, rdlength 0
)

// wireQuery is what the fast path read from a query.
type wireQuery struct {
	qEnd     int // end of the question (offset after qclass)
	nameEnd  int // end of the qname
	qtype    uint16
	zoneOff  int    // offset of the zone's first label in the qname, -1 if outside the zone
	edns     bool   // the query had an OPT
	do       bool   // its DNSSEC OK bit, copied into the reply (RFC 3225 §3)
	udpSize  uint16 // its buffer size, clamped to [512, MaxUDPSize]
	keyLen   int
	keyBytes [255]byte // the qname, lower-cased
}

// parseQuery reads a query the fast path can answer. ok is false for
// anything unusual; the general path then handles it.
func (t *Table) parseQuery(req []byte, q *wireQuery) bool {
	if len(req) < headerLen+5 {
		return false
	}
	// QR=0, opcode QUERY; one question, no answers or authority, at most
	// one additional record (the OPT).
	if req[2]&0xF8 != 0 || req[4] != 0 || req[5] != 1 || req[6]|req[7]|req[8]|req[9] != 0 || req[10] != 0 || req[11] > 1 {
		return false
	}
	off := headerLen
	n := 0
	for {
		if off >= len(req) {
			return false
		}
		l := int(req[off])
		if l == 0 {
			break
		}
		if l&0xC0 != 0 || off+1+l >= len(req) || n+1+l+1 > 255 {
			return false // pointer or extended label, or too long
		}
		q.keyBytes[n] = byte(l)
		for i := 1; i <= l; i++ {
			c := req[off+i]
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			q.keyBytes[n+i] = c
		}
		n += 1 + l
		off += 1 + l
	}
	q.keyBytes[n] = 0
	n++
	off++
	q.keyLen = n
	q.nameEnd = off
	if off+4 > len(req) {
		return false
	}
	q.qtype = binary.BigEndian.Uint16(req[off:])
	qclass := binary.BigEndian.Uint16(req[off+2:])
	off += 4
	q.qEnd = off
	switch {
	case qclass != dns.ClassINET:
		return false
	case q.qtype == dns.TypeANY, q.qtype == dns.TypeAXFR, q.qtype == dns.TypeIXFR, q.qtype == dns.TypeOPT:
		return false
	}
	q.edns, q.do = false, false
	q.udpSize = dns.MinMsgSize
	if req[11] == 1 {
		// The OPT: root owner, type OPT, EDNS version 0, and no options
		// but cookies and padding (which the general path ignores too).
		if off+optLen > len(req) || req[off] != 0 || binary.BigEndian.Uint16(req[off+1:]) != dns.TypeOPT || req[off+6] != 0 {
			return false
		}
		size := binary.BigEndian.Uint16(req[off+3:])
		q.do = req[off+7]&0x80 != 0
		rdlen := int(binary.BigEndian.Uint16(req[off+9:]))
		off += optLen
		if off+rdlen != len(req) {
			return false
		}
		for o := off; o < off+rdlen; {
			if o+4 > off+rdlen {
				return false
			}
			code := binary.BigEndian.Uint16(req[o:])
			l := int(binary.BigEndian.Uint16(req[o+2:]))
			if (code != dns.EDNS0COOKIE && code != dns.EDNS0PADDING) || o+4+l > off+rdlen {
				return false
			}
			o += 4 + l
		}
		off += rdlen
		q.edns = true
		q.udpSize = min(max(size, dns.MinMsgSize), MaxUDPSize)
	}
	if off != len(req) {
		return false // trailing bytes: let the general path judge
	}
	// Where the zone starts, if the name is in it.
	q.zoneOff = -1
	zl := len(t.zoneWire)
	for p := 0; p < n; p += 1 + int(q.keyBytes[p]) {
		if n-p == zl {
			if string(q.keyBytes[p:n]) == string(t.zoneWire) {
				q.zoneOff = p
			}
			break
		}
		if n-p < zl {
			break
		}
	}
	return true
}

// answerWire answers the query in req into out (of which it uses up to
// cap(out) bytes) and returns the reply with its qtype and rcode, or ok
// false when the general path must answer: an unusual query, a name
// outside the zone that is not an endpoint's reverse name, a table that is
// not ready, or a reply that would not fit (truncation).
func (t *Table) answerWire(req []byte, client netip.Addr, udp bool, out []byte) (reply []byte, qtype uint16, rcode int, ok bool) {
	if !t.ready {
		return nil, 0, 0, false
	}
	var q wireQuery
	if !t.parseQuery(req, &q) {
		return nil, 0, 0, false
	}
	wn := t.wire[string(q.keyBytes[:q.keyLen])]
	var set *wireSet
	if wn != nil {
		for i := range wn.sets {
			if wn.sets[i].qtype == q.qtype {
				set = &wn.sets[i]
				break
			}
		}
		if wn.reverse && set == nil {
			return nil, 0, 0, false // not ours: forward or refuse
		}
	} else if q.zoneOff < 0 {
		return nil, 0, 0, false // outside the zone
	}
	if set == nil && (q.zoneOff < 0 || t.negTail == nil) {
		return nil, 0, 0, false
	}

	limit := dns.MaxMsgSize
	if udp {
		limit = int(q.udpSize)
	}
	limit = min(limit, cap(out))
	size := q.qEnd
	if set != nil {
		size += len(set.body)
	} else {
		size += 2 + len(t.negTail)
	}
	if q.edns {
		size += optLen
	}
	if size > limit {
		return nil, 0, 0, false
	}
	out = out[:size]

	rcode = dns.RcodeSuccess
	var an, ns, ar uint16
	if set != nil {
		an, ns, ar = set.an, set.ns, set.ar
	} else {
		ns = 1
		if wn == nil {
			rcode = dns.RcodeNameError
		}
	}
	if q.edns {
		ar++
	}
	out[0], out[1] = req[0], req[1]
	out[2] = 0x80 | 0x04 | req[2]&0x01 // QR, AA, RD as asked
	out[3] = req[3]&0x10 | byte(rcode) // CD as asked
	if t.MayRecurse(client) {
		out[3] |= 0x80
	}
	out[4], out[5] = 0, 1
	binary.BigEndian.PutUint16(out[6:], an)
	binary.BigEndian.PutUint16(out[8:], ns)
	binary.BigEndian.PutUint16(out[10:], ar)
	copy(out[headerLen:q.qEnd], req[headerLen:q.qEnd])
	w := q.qEnd
	if set != nil {
		if set.offs != nil && set.pick != nil {
			k := set.pick.next()
			start := int(set.offs[k])
			end := int(set.offs[len(set.offs)-1])
			w += copy(out[w:], set.body[start:end])
			w += copy(out[w:], set.body[:start])
			w += copy(out[w:], set.body[end:])
		} else {
			w += copy(out[w:], set.body)
		}
	} else {
		// NODATA or NXDOMAIN: the SOA, owned by the zone's labels in the
		// question.
		binary.BigEndian.PutUint16(out[w:], 0xC000|uint16(headerLen+q.zoneOff))
		w += 2
		w += copy(out[w:], t.negTail)
	}
	if q.edns {
		o := out[w : w+optLen]
		o[0] = 0
		binary.BigEndian.PutUint16(o[1:], dns.TypeOPT)
		binary.BigEndian.PutUint16(o[3:], q.udpSize)
		clear(o[5:])
		if q.do {
			o[7] = 0x80
		}
	}
	return out, q.qtype, rcode, true
}
