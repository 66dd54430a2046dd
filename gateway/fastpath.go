package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// The fast path serves plain HTTP/1.1 keep-alive requests on the
// gateway's own connection loop: one goroutine per client connection
// parses the request head in place (in its bufio.Reader's buffer), routes
// it from the immutable table, writes the rewritten head to a pooled
// upstream connection and relays the response head and body back, with no
// per-request allocation in the common case. Anything else -- HTTP/1.0,
// HTTP/2 (prior knowledge), Upgrade (WebSocket), Expect, Transfer-Encoding
// on a request, bodies over maxFastBody, heads over the buffer, anything
// malformed -- hands the connection, with the bytes already read, to a
// net/http server whose handler is Gateway.ServeHTTP (the general path).
// A connection that has been handed off stays with net/http.

const (
	clientBufSize = 4 << 10
	// maxResponseHead bounds an upstream response head.
	maxResponseHead = 1 << 20
	// maxDiscardBody is the largest body the gateway reads through to
	// keep a connection open after answering a request itself.
	maxDiscardBody = 64 << 10
)

var (
	errHeadTooLarge  = errors.New("head too large")
	errMalformed     = errors.New("malformed message")
	errUnsupportedTE = errors.New("unsupported transfer encoding")
	errClientWrite   = errors.New("write to client failed")
)

// serverConn is one client connection on the fast path.
type serverConn struct {
	g      *Gateway
	c      net.Conn
	br     *bufio.Reader
	bw     *bufio.Writer
	isTLS  bool
	bigBuf bool   // br was grown for a large head: not pooled
	remote []byte // client IP
	readDL int64  // nanotime of the idle read deadline last set; 0: another kind is set
	state  atomic.Int32
	req    request
	out    []byte // the upstream request head (and small body)
	resp   respHead
	retry  *retryPolicy // set while a retriable status may be dropped
	// replayable: the whole request, body included, is in out.
	replayable bool
	scratch    [256]byte
	reqID      [32]byte
}

const (
	connActive int32 = iota
	connIdle
)

// request is one parsed request head; its slices point into the client
// buffer and are valid until the head is discarded.
type request struct {
	method, target, path, host []byte
	contentLength              int64 // when hasLength
	hasLength                  bool  // a Content-Length field was sent
	chunked                    bool  // Transfer-Encoding: chunked (general path)
	closeConn                  bool
	upgrade                    bool   // Connection: upgrade
	preface                    bool   // "PRI * HTTP/2.0": the HTTP/2 preface begins
	te                         []byte // TE value, kept only when "trailers"
	xff                        []byte // prior X-Forwarded-For, joined
	xffMulti                   bool
	reqID                      []byte
	connTokens                 [][]byte
	hdrs                       []header
	// cohortHeader, when set, is sent upstream with cohort: the sticky
	// cohort the gateway derived (any client value was dropped).
	cohortHeader string
	cohort       uint64
}

type header struct {
	name, value []byte
	line        []byte // the whole line without its line ending
	drop        bool
}

// headerValue implements headerSource for route header matches.
func (r *request) headerValue(name string) (string, bool) {
	var out string
	found := false
	for i := range r.hdrs {
		h := &r.hdrs[i]
		if equalFoldString(h.name, name) {
			if found {
				out += "," + string(h.value)
			} else {
				out, found = string(h.value), true
			}
		}
	}
	return out, found
}

// headerAt implements cohortHeaders. The value points into the client
// buffer: it is valid until the head is discarded.
func (r *request) headerAt(name string, i int) (string, bool) {
	for j := range r.hdrs {
		if h := &r.hdrs[j]; equalFoldString(h.name, name) {
			if i == 0 {
				return unsafeString(h.value), true
			}
			i--
		}
	}
	return "", false
}

// setCohort replaces the request's cohort header toward the upstream.
func (r *request) setCohort(name string, cohort uint64) {
	for i := range r.hdrs {
		if equalFoldString(r.hdrs[i].name, name) {
			r.hdrs[i].drop = true
		}
	}
	r.cohortHeader, r.cohort = name, cohort
}

var serverConnPool = sync.Pool{New: func() any {
	return &serverConn{
		br:  bufio.NewReaderSize(nil, clientBufSize),
		bw:  bufio.NewWriterSize(nil, clientBufSize),
		out: make([]byte, 0, 1024),
	}
}}

// serveConn runs the fast path on c until it closes or is handed off.
func (g *Gateway) serveConn(c net.Conn, isTLS bool) {
	sc := serverConnPool.Get().(*serverConn)
	sc.g, sc.c, sc.isTLS = g, c, isTLS
	sc.br.Reset(c)
	sc.bw.Reset(c)
	sc.readDL = 0
	sc.remote = sc.remote[:0]
	if ta, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		sc.remote = ta.AddrPort().Addr().Unmap().AppendTo(sc.remote)
	}
	g.conns.add(sc)
	handedOff := sc.loop()
	g.conns.remove(sc)
	if handedOff || sc.bigBuf {
		// net/http owns c and the reader now, or the reader is too big
		// to keep.
		if !handedOff {
			c.Close()
		}
		sc.br = bufio.NewReaderSize(nil, clientBufSize)
		sc.bigBuf = false
	} else {
		c.Close()
		sc.br.Reset(nil)
	}
	sc.bw.Reset(nil)
	sc.g, sc.c = nil, nil
	sc.req = request{hdrs: sc.req.hdrs[:0], connTokens: sc.req.connTokens[:0]}
	serverConnPool.Put(sc)
}

// loop serves requests; it reports whether the connection went to the
// general path.
func (sc *serverConn) loop() bool {
	g := sc.g
	for {
		if g.shuttingDown.Load() {
			return false
		}
		if sc.br.Buffered() == 0 {
			sc.state.Store(connIdle)
			if g.shuttingDown.Load() {
				return false
			}
			// Refresh the read deadline only when half of it is used:
			// it bounds the idle wait and the head and body reads.
			now := nanotime()
			if now > sc.readDL-int64(g.cfg.IdleTimeout/2) {
				sc.readDL = now + int64(g.cfg.IdleTimeout)
				sc.c.SetReadDeadline(time.Now().Add(g.cfg.IdleTimeout))
			}
			_, err := sc.br.Peek(1)
			sc.state.Store(connActive)
			if err != nil {
				return false
			}
		}
		head, err := scanRequestHead(sc.br, g.headLimits, sc.headDeadline)
		if err == errNeedBuffer {
			sc.growBuffer()
			head, err = scanRequestHead(sc.br, g.headLimits, sc.headDeadline)
		}
		if err != nil {
			if rej, ok := err.(*rejection); ok {
				return sc.reject(rej)
			}
			if isTimeout(err) { // a head begun and not finished in time
				g.metrics.closedBy(closedHeadTimeout)
				return sc.reject(rejectHeadTimeout)
			}
			return false
		}
		switch verdict, rej := sc.req.parse(head, g.headLimits); verdict {
		case headReject:
			return sc.reject(rej)
		case headHandOff:
			return sc.handoff()
		}
		keep := sc.serve(len(head))
		if !keep {
			return false
		}
	}
}

// headDeadline bounds the rest of a request head that did not arrive
// whole (slowloris): ReadHeaderTimeout from now.
func (sc *serverConn) headDeadline() { sc.readDeadline(sc.g.cfg.ReadHeaderTimeout) }

// readDeadline sets the client read deadline d from now, for a head or a
// body; the next idle wait sets its own again (readDL 0 says the deadline
// in place is not an idle one).
func (sc *serverConn) readDeadline(d time.Duration) {
	sc.readDL = 0
	sc.c.SetReadDeadline(time.Now().Add(d))
}

// growBuffer gives the connection a reader large enough for the largest
// head allowed (the pooled one holds 4 KiB), keeping what was read.
func (sc *serverConn) growBuffer() {
	buffered, _ := sc.br.Peek(sc.br.Buffered())
	prefix := bytes.Clone(buffered)
	sc.br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(prefix), sc.c), sc.g.headLimits.maxBytes+clientBufSize)
	sc.bigBuf = true
}

// reject answers a request the gateway refuses for the client's fault
// and closes the connection: what follows it cannot be framed.
func (sc *serverConn) reject(rej *rejection) bool {
	g := sc.g
	g.metrics.rejected(rej.reason).Inc()
	fillRequestID(&sc.reqID)
	if rej.status != 0 { // 0: not HTTP/1.x at all, closed without an answer
		sc.writeAnswer(rej.status, sc.reqID[:], "berth: "+rej.reason+"\n", true, true)
	}
	if g.accessLogEnabled() {
		g.writeAccess(string(sc.reqID[:]), "", "", "", string(sc.remote), "", "", "", rej.status, 0, rej)
	}
	lingerClose(sc.c)
	return false
}

// lingerClose closes c after the answer had a chance to reach the client:
// closing a socket with unread input resets it, and a reset can destroy
// the answer before the client reads it (nginx's lingering close).
func lingerClose(c net.Conn) {
	closeWrite(c)
	c.SetReadDeadline(time.Now().Add(lingerTimeout))
	io.CopyN(io.Discard, c, lingerMaxBytes)
}

const (
	lingerTimeout  = 500 * time.Millisecond
	lingerMaxBytes = 256 << 10
)

// handoff passes the connection, with what was read of it, to net/http.
func (sc *serverConn) handoff() bool {
	sc.c.SetReadDeadline(time.Time{})
	sc.g.general.push(&replayConn{Conn: sc.c, r: sc.br, isTLS: sc.isTLS, h2: sc.req.preface})
	return true
}

// replayConn is a connection whose first bytes were already read into r.
type replayConn struct {
	net.Conn
	r     *bufio.Reader
	isTLS bool
	h2    bool // it began with the HTTP/2 preface's request line (h2c)
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// scanHead returns the request or response head at the start of br
// (through its blank line) without consuming it. The slice is valid until
// br is read again. errHeadTooLarge: the head does not fit the buffer;
// errMalformed: a bare LF line ending (left to the general path).
func scanHead(br *bufio.Reader) ([]byte, error) {
	from := 0
	for {
		buf, _ := br.Peek(br.Buffered())
		for i := from; i < len(buf); i++ {
			j := bytes.IndexByte(buf[i:], '\n')
			if j < 0 {
				break
			}
			i += j
			if i == 0 || buf[i-1] != '\r' {
				return nil, errMalformed
			}
			if i >= 3 && buf[i-2] == '\n' && buf[i-3] == '\r' {
				return buf[:i+1], nil
			}
			if i == 1 { // an empty line first: tolerate as a stray CRLF
				return nil, errMalformed
			}
		}
		from = max(0, len(buf)-3)
		if len(buf) >= br.Size() {
			return nil, errHeadTooLarge
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return nil, err
		}
	}
}

// serve answers the parsed request whose head is headLen bytes; it
// reports whether the connection stays open.
func (sc *serverConn) serve(headLen int) bool {
	g := sc.g
	start := time.Now()
	r := &sc.req
	if !g.cfg.TrustRequestID || len(r.reqID) == 0 || len(r.reqID) > 128 {
		fillRequestID(&sc.reqID)
		r.reqID = sc.reqID[:]
	}
	keep := !r.closeConn
	t := g.table.Load()
	if t == nil || !t.hasListener {
		return sc.local(start, headLen, g.noRoute, nil, nil, 503, "berth: gateway has no configuration yet\n", keep)
	}
	vh := t.matchHostBytes(r.host, &sc.scratch)
	var re *routeEntry
	if vh != nil {
		re = vh.matchPath(unsafeString(r.path), r)
	}
	if re == nil {
		return sc.local(start, headLen, g.noRoute, nil, nil, 404, "berth: no route\n", keep)
	}
	if re.direct != nil {
		return sc.local(start, headLen, re.directStats, re, nil, re.direct.status, re.direct.body, keep)
	}
	wc, cohort, derived := re.pickFor(r)
	if derived {
		r.setCohort(re.sticky.header, cohort)
	}
	if wc.cluster == nil || len(wc.cluster.endpoints) == 0 {
		return sc.local(start, headLen, wc.stats, re, wc, 503, "berth: no healthy upstream\n", keep)
	}
	return sc.proxy(start, headLen, re, wc)
}

// local answers from the gateway itself, after discarding the request.
func (sc *serverConn) local(start time.Time, headLen int, stats *routeStats, re *routeEntry, wc *weightedCluster, status int, body string, keep bool) bool {
	r := &sc.req
	sc.logAccess(start, re, wc, nil, status, nil) // before the head is discarded
	sc.br.Discard(headLen)
	if r.contentLength > maxDiscardBody {
		keep = false // not worth reading through: answer and close
	} else if r.contentLength > 0 {
		if _, err := sc.br.Discard(int(r.contentLength)); err != nil {
			return false
		}
	}
	keep = keep && !sc.g.shuttingDown.Load()
	err := sc.writeAnswer(status, r.reqID, body, string(r.method) != "HEAD", !keep)
	stats.observe(status, time.Since(start))
	return keep && err == nil
}

// writeAnswer writes and flushes an answer the gateway makes itself: a
// plain-text body (sent unless withBody is false, for HEAD) and, when
// closeConn, Connection: close.
func (sc *serverConn) writeAnswer(status int, reqID []byte, body string, withBody, closeConn bool) error {
	bw := sc.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(status))
	bw.WriteByte(' ')
	bw.WriteString(statusText(status))
	bw.WriteString("\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	bw.WriteString("\r\nDate: ")
	bw.Write(httpDate())
	bw.WriteString("\r\nX-Request-Id: ")
	bw.Write(reqID)
	if closeConn {
		bw.WriteString("\r\nConnection: close")
	}
	bw.WriteString("\r\n\r\n")
	if withBody {
		bw.WriteString(body)
	}
	return bw.Flush()
}

// buildUpstreamHead writes the request head for the upstream into sc.out,
// with the body when it is already buffered (then the whole request can
// be sent again on a retry). It reports whether the body is included.
func (sc *serverConn) buildUpstreamHead(headLen int) bool {
	r := &sc.req
	out := sc.out[:0]
	out = append(out, r.method...)
	out = append(out, ' ')
	out = append(out, r.target...)
	out = append(out, " HTTP/1.1\r\n"...)
	for i := range r.hdrs {
		if h := &r.hdrs[i]; !h.drop {
			out = append(out, h.line...)
			out = append(out, '\r', '\n')
		}
	}
	if r.hasLength {
		// The gateway's own framing: one canonical Content-Length.
		out = append(out, "Content-Length: "...)
		out = strconv.AppendInt(out, r.contentLength, 10)
		out = append(out, "\r\n"...)
	}
	if r.te != nil {
		out = append(out, "Te: trailers\r\n"...)
	}
	if r.cohortHeader != "" {
		out = append(out, r.cohortHeader...)
		out = append(out, ": "...)
		out = strconv.AppendUint(out, r.cohort, 10)
		out = append(out, "\r\n"...)
	}
	out = append(out, "X-Forwarded-For: "...)
	if r.xff != nil {
		if r.xffMulti {
			for i := range r.hdrs {
				if equalFold(r.hdrs[i].name, "x-forwarded-for") {
					out = append(out, r.hdrs[i].value...)
					out = append(out, ", "...)
				}
			}
		} else {
			out = append(out, r.xff...)
			out = append(out, ", "...)
		}
	}
	out = append(out, sc.remote...)
	if sc.isTLS {
		out = append(out, "\r\nX-Forwarded-Proto: https\r\nX-Request-Id: "...)
	} else {
		out = append(out, "\r\nX-Forwarded-Proto: http\r\nX-Request-Id: "...)
	}
	out = append(out, r.reqID...)
	out = append(out, "\r\n\r\n"...)
	withBody := r.contentLength == 0
	if n := int(r.contentLength); n > 0 && sc.br.Buffered() >= headLen+n {
		b, _ := sc.br.Peek(headLen + n)
		out = append(out, b[headLen:]...)
		withBody = true
	}
	sc.out = out
	return withBody
}

// attemptResult is how one upstream attempt ended.
type attemptResult struct {
	status int     // the upstream's response status; 0 when none arrived
	fail   failure // what went wrong, if anything (outcome.go)
	answer int     // the status the gateway answered itself; 0 if none
	err    error   // the failure, for the access log
	headAt int64   // nanotime() when the response head relayed arrived; 0 if none
}

// reported is the status the access log and metrics record.
func (r *attemptResult) reported() int {
	switch {
	case r.fail == failClientGone:
		return StatusClientClosed
	case r.answer != 0:
		return r.answer
	}
	return r.status
}

// proxy forwards the request to an endpoint of wc's cluster, retrying by
// the route's policy, and relays the response.
func (sc *serverConn) proxy(start time.Time, headLen int, re *routeEntry, wc *weightedCluster) bool {
	g := sc.g
	r := &sc.req
	c := wc.cluster
	if n := headLen + int(r.contentLength); r.contentLength > 0 && sc.br.Buffered() < n && n <= sc.br.Size() {
		// A small body is read whole before an upstream is chosen, so a
		// client that trickles it holds no upstream connection.
		sc.readDeadline(g.cfg.BodyTimeout)
		if _, err := sc.br.Peek(n); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			res := sc.clientBodyFailed(err)
			wc.stats.observe(res.reported(), time.Since(start))
			if g.accessLogEnabled() {
				sc.logAccess(start, re, wc, nil, res.reported(), err)
			}
			return false
		}
	}
	replayable := sc.buildUpstreamHead(headLen)
	sc.replayable = replayable
	// The head (and any body in out) is copied: let the log see it first,
	// then drop it from the client buffer.
	var logMethod, logTarget, logHost string
	logging := g.accessLogEnabled()
	if logging {
		logMethod, logTarget, logHost = string(r.method), string(r.target), string(r.host)
	}
	methodIdempotent := idempotent(r.method)
	isHead := string(r.method) == "HEAD"
	closeAfter := r.closeConn
	sc.br.Discard(headLen)
	if replayable && r.contentLength > 0 {
		sc.br.Discard(int(r.contentLength))
	}
	bodyLeft := int64(0)
	if !replayable {
		bodyLeft = r.contentLength
	}

	var deadline time.Time
	if re.timeout > 0 {
		deadline = start.Add(re.timeout)
	}
	st := c.state
	st.issued.Add(1)
	st.active.Add(1)
	defer st.active.Add(-1)
	sent := nanotime()

	var ep *endpoint
	// The endpoints tried so far (a retry goes elsewhere); on the stack.
	var triedBuf [4]*endpoint
	tried := triedBuf[:0]
	var res attemptResult
	var keep bool
	for attempt := 0; ; attempt++ {
		ep = c.pickEndpoint(tried)
		tryDeadline := deadline
		if p := re.retry; p != nil && p.perTryTimeout > 0 {
			if d := time.Now().Add(p.perTryTimeout); tryDeadline.IsZero() || d.Before(tryDeadline) {
				tryDeadline = d
			}
		}
		budgetLeft := func() bool {
			return attempt < retries(re.retry) && re.retry.allowsMethodBytes(r.method) && (deadline.IsZero() || time.Now().Before(deadline)) && c.retries.allows(st)
		}
		// A response with a retriable status is dropped (and retried)
		// only when a retry is sure to be allowed.
		sc.retry = nil
		if re.retry != nil && replayable && methodIdempotent && budgetLeft() {
			sc.retry = re.retry
		}
		ep.active.Add(1)
		var done bool
		res, keep, done = sc.attempt(ep, c, tryDeadline, &bodyLeft, isHead, closeAfter)
		ep.active.Add(-1)
		c.observe(ep, res.status, res.fail)
		if done {
			break
		}
		if res.status == 0 {
			// No response, the upstream's fault: retry when the policy
			// covers the failure and the request can be sent again whole.
			connectFailed := res.fail == failConnect
			intact := replayable || bodyLeft == r.contentLength
			if !(re.retry.retriable(0, connectFailed) && intact && (connectFailed || methodIdempotent) && budgetLeft()) {
				status, body := 502, "berth: upstream error\n"
				if res.fail == failUpstreamTimeout {
					status, body = 504, "berth: upstream request timeout\n"
				}
				keep = sc.localAfterProxy(status, body, closeAfter || bodyLeft != 0)
				res.answer = status
				break
			}
		}
		st.activeRetries.Add(1)
		backoff(re.retry, attempt)
		st.activeRetries.Add(-1)
		if len(tried) < cap(tried) {
			tried = append(tried, ep)
		}
	}
	if res.headAt == 0 { // the gateway answered itself
		res.headAt = nanotime()
	}
	status := res.reported()
	st.finish(status, res.fail, sent, res.headAt)
	d := time.Since(start)
	wc.stats.observe(status, d)
	if logging {
		g.logAccessFields(sc, logMethod, logTarget, logHost, start, re, wc, ep, status, res.err)
	}
	return keep && !g.shuttingDown.Load()
}

func retries(p *retryPolicy) int {
	if p == nil {
		return 0
	}
	return p.numRetries
}

// backoff sleeps Envoy's fully jittered exponential retry back-off.
func backoff(p *retryPolicy, attempt int) {
	base := p.backoffBase
	if base <= 0 {
		return
	}
	limit := base << min(attempt, 10)
	if p.backoffMax > 0 {
		limit = min(limit, p.backoffMax)
	}
	time.Sleep(time.Duration(rand.Int64N(int64(limit) + 1)))
}

// attempt sends the request to ep and, unless the answer is one to retry
// (and retrying is allowed by the policy), relays it. done reports that
// the client got an answer (or the connection is beyond saving); keep,
// whether the client connection stays open.
func (sc *serverConn) attempt(ep *endpoint, c *upstreamCluster, deadline time.Time, bodyLeft *int64, isHead, closeAfter bool) (res attemptResult, keep, done bool) {
	g := sc.g
	for fresh := false; ; fresh = true {
		uc, reused, err := ep.get(g.dialer, c.connectTimeout, g.cfg.UpstreamIdleTimeout, !idempotent(sc.req.method))
		if err != nil {
			return attemptResult{fail: failConnect, err: err}, false, false
		}
		uc.setDeadline(deadline)
		res, keep, done, stale := sc.exchange(uc, reused, bodyLeft, isHead, closeAfter, c)
		if stale && !fresh {
			continue // a kept-alive connection the upstream had closed: once more on a new one
		}
		if res.fail == failUpstream && res.err != nil && isTimeout(res.err) {
			res.fail = failUpstreamTimeout
		}
		return res, keep, done
	}
}

// exchange runs one request on uc. stale reports a reused connection that
// failed before any response byte, with the whole request (body included)
// in sc.out, so it can be sent again as it was.
func (sc *serverConn) exchange(uc *upstreamConn, reused bool, bodyLeft *int64, isHead, closeAfter bool, c *upstreamCluster) (res attemptResult, keep, done, stale bool) {
	r := &sc.req
	sentBefore := uc.sent
	if _, err := uc.Write(sc.out); err != nil {
		uc.Conn.Close()
		return attemptResult{fail: failUpstream, err: err}, false, false, reused && sc.replayable
	}
	uc.sent += uint64(len(sc.out))
	if *bodyLeft > 0 {
		clientErr, upErr := sendBody(uc.Conn, sc.br, *bodyLeft, func() { sc.readDeadline(sc.g.cfg.BodyTimeout) })
		if clientErr != nil || upErr != nil {
			// The upstream saw part of a request: its connection is
			// never reused. Part of the body is gone: no retry, and the
			// client connection cannot be reused.
			uc.Conn.Close()
			*bodyLeft = -1
			if clientErr != nil {
				return sc.clientBodyFailed(clientErr), false, true, false
			}
			return attemptResult{fail: failUpstream, err: upErr}, false, false, false
		}
		*bodyLeft = 0
	}
	p := &sc.resp
	for {
		err := readResponseHead(uc.br, p)
		if err != nil {
			// A peer gone silent (its link cut) that acknowledged none of
			// the request fails like a connect: another endpoint may have
			// it. Only an idempotent one: no acknowledgement is not proof
			// the peer never received it (its ACK rides on its response,
			// which the cut may have lost), and a POST must not run twice.
			undelivered := idempotent(r.method) && uc.undelivered(err, sentBefore)
			uc.Conn.Close()
			if undelivered {
				return attemptResult{fail: failConnect, err: err}, false, false, false
			}
			return attemptResult{fail: failUpstream, err: err}, false, false, reused && sc.replayable && uc.br.Buffered() == 0 && isEOF(err) && idempotent(r.method)
		}
		if p.status >= 100 && p.status < 200 && p.status != 101 {
			// 100 Continue, 103 Early Hints: pass on, read on.
			sc.writeResponseHead(p, false, false)
			uc.br.Discard(p.headLen)
			if err := sc.bw.Flush(); err != nil {
				uc.Conn.Close()
				return attemptResult{status: p.status, fail: failClientGone, err: errClientWrite}, false, true, false
			}
			continue
		}
		if p.status == 101 {
			uc.Conn.Close()
			return attemptResult{fail: failUpstream, err: errors.New("101 without an upgrade request")}, false, false, false
		}
		break
	}
	headAt := nanotime()
	status := p.status
	// A response to retry is dropped when its body is small and framed;
	// a larger one goes to the client as it is.
	if sc.retryWanted(status) {
		if n := p.contentLength; !p.chunked && n >= 0 && n <= upstreamBufSize && !isHead {
			uc.br.Discard(p.headLen)
			if _, err := uc.br.Discard(int(n)); err == nil && !p.close {
				uc.ep.put(uc)
			} else {
				uc.Conn.Close()
			}
			return attemptResult{status: status}, false, false, false
		}
	}

	noBody := isHead || status == 204 || status == 304
	delimitedByClose := !noBody && !p.chunked && p.contentLength < 0
	clientClose := closeAfter || delimitedByClose || sc.g.shuttingDown.Load()
	sc.writeResponseHead(p, clientClose, true)
	uc.br.Discard(p.headLen)
	var err error
	switch {
	case noBody:
	case p.chunked:
		err = relayChunked(sc.bw, uc.br)
	case p.contentLength >= 0:
		err = copyN(sc.bw, sc.bw, uc.br, p.contentLength)
	default:
		err = copyToEOF(sc.bw, uc.br)
	}
	if err == nil {
		if ferr := sc.bw.Flush(); ferr != nil {
			err = errClientWrite
		}
	}
	if err != nil {
		uc.Conn.Close()
		// The client got part of a response: close its connection.
		f := failUpstream
		if err == errClientWrite {
			f = failClientGone
		}
		return attemptResult{status: status, fail: f, err: err, headAt: headAt}, false, true, false
	}
	if p.close || delimitedByClose {
		uc.Conn.Close()
	} else {
		uc.ep.put(uc)
	}
	return attemptResult{status: status, headAt: headAt}, !clientClose, true, false
}

// sendBody streams the rest of the request body, n bytes, from the
// client to the upstream. clientErr is the client's failure (a body
// shorter than its Content-Length, too slow, a reset); upErr, the
// upstream's.
//
// beforeWait is called before each read that waits for the client.
func sendBody(dst io.Writer, src *bufio.Reader, n int64, beforeWait func()) (clientErr, upErr error) {
	for n > 0 {
		if src.Buffered() == 0 {
			beforeWait()
			if _, err := src.Peek(1); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return err, nil
			}
		}
		k := min(int64(src.Buffered()), n)
		b, _ := src.Peek(int(k))
		if _, err := dst.Write(b); err != nil {
			return nil, err
		}
		src.Discard(int(k))
		n -= k
	}
	return nil, nil
}

// clientBodyFailed answers a request whose body the client did not
// deliver: 408 when it was too slow, 400 when it ended short; a client
// whose connection broke gets nothing. The connection closes either way.
func (sc *serverConn) clientBodyFailed(err error) attemptResult {
	if !isTimeout(err) && !errors.Is(err, io.ErrUnexpectedEOF) {
		return attemptResult{fail: failClientGone, err: err}
	}
	status, body := sc.g.clientBodyAnswer(err)
	sc.c.SetWriteDeadline(time.Now().Add(lingerTimeout))
	sc.localAfterProxy(status, body, true)
	return attemptResult{fail: failClientBody, answer: status, err: err}
}

// retryWanted says whether a response with status is to be dropped and
// retried (sc.retry is set only when a retry is sure to be allowed).
func (sc *serverConn) retryWanted(status int) bool {
	return sc.retry != nil && sc.retry.retriable(status, false)
}

// localAfterProxy answers a failed proxy attempt from the gateway.
func (sc *serverConn) localAfterProxy(status int, body string, closeConn bool) bool {
	return sc.writeAnswer(status, sc.req.reqID, body, true, closeConn) == nil && !closeConn
}

// response is one parsed upstream response head.
type respHead struct {
	head          []byte
	headLen       int
	status        int
	http10        bool
	contentLength int64 // -1: none
	chunked       bool
	close         bool
	hasDate       bool
	hasRequestID  bool
	connTokens    [][]byte
	big           []byte // a head larger than the buffer, read here
}

// readResponseHead reads and parses a response head from br into p,
// without consuming it (p.headLen bytes) unless it was too large for the
// buffer (then p.head is a copy, already consumed, and headLen is 0).
func readResponseHead(br *bufio.Reader, p *respHead) error {
	*p = respHead{connTokens: p.connTokens[:0], big: p.big[:0], contentLength: -1}
	head, err := scanHead(br)
	switch err {
	case nil:
		p.head, p.headLen = head, len(head)
	case errHeadTooLarge, errMalformed:
		// Rare: read line by line into a private buffer.
		big := p.big[:0]
		for {
			line, err := br.ReadSlice('\n')
			if err != nil && err != bufio.ErrBufferFull {
				return err
			}
			big = append(big, line...)
			if len(big) > maxResponseHead {
				return errHeadTooLarge
			}
			if err == nil && (len(line) == 1 || (len(line) == 2 && line[0] == '\r')) && len(big) > len(line) {
				break
			}
		}
		p.big, p.head, p.headLen = big, big, 0
	default:
		return err
	}
	line, rest := cutLine(p.head)
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return errMalformed
	}
	p.http10 = line[7] == '0'
	st, err := strconv.Atoi(string(line[9:12]))
	if err != nil || st < 100 || st > 999 || (len(line) > 12 && line[12] != ' ') {
		return errMalformed
	}
	p.status = st
	keepAlive10 := false
	for len(rest) > 0 {
		line, rest = cutLine(rest)
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return errMalformed
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		switch {
		case equalFold(name, "content-length"):
			n, ok := parseContentLength(value)
			if !ok || (p.contentLength >= 0 && n != p.contentLength) {
				return errMalformed
			}
			p.contentLength = n
		case equalFold(name, "transfer-encoding"):
			if !equalFold(value, "chunked") {
				return errUnsupportedTE
			}
			p.chunked = true
		case equalFold(name, "connection"):
			for tok := range bytes.SplitSeq(value, []byte(",")) {
				tok = trimOWS(tok)
				switch {
				case equalFold(tok, "close"):
					p.close = true
				case equalFold(tok, "keep-alive"):
					keepAlive10 = true
				case len(tok) > 0:
					p.connTokens = append(p.connTokens, tok)
				}
			}
		case equalFold(name, "date"):
			p.hasDate = true
		case equalFold(name, "x-request-id"):
			p.hasRequestID = true
		}
	}
	if p.chunked {
		p.contentLength = -1
	}
	if p.http10 && !keepAlive10 {
		p.close = true
	}
	return nil
}

// writeResponseHead writes p's head to the client without hop-by-hop
// headers. final adds the gateway's own headers.
func (sc *serverConn) writeResponseHead(p *respHead, closeConn, final bool) {
	bw := sc.bw
	line, rest := cutLine(p.head)
	bw.WriteString("HTTP/1.1")
	bw.Write(line[8:])
	bw.WriteString("\r\n")
	for len(rest) > 0 {
		line, rest = cutLine(rest)
		if len(line) == 0 {
			break
		}
		name := line[:bytes.IndexByte(line, ':')]
		if isHopByHop(name) && !(p.chunked && equalFold(name, "transfer-encoding")) {
			continue
		}
		if namedIn(name, p.connTokens) || (p.chunked && equalFold(name, "content-length")) {
			continue // Transfer-Encoding overrides Content-Length (RFC 9112 6.3)
		}
		bw.Write(line)
		bw.WriteString("\r\n")
	}
	if final {
		if !p.hasDate {
			bw.WriteString("Date: ")
			bw.Write(httpDate())
			bw.WriteString("\r\n")
		}
		if !p.hasRequestID {
			bw.WriteString("X-Request-Id: ")
			bw.Write(sc.req.reqID)
			bw.WriteString("\r\n")
		}
		if closeConn {
			bw.WriteString("Connection: close\r\n")
		}
	}
	bw.WriteString("\r\n")
}

func isHopByHop(name []byte) bool {
	switch len(name) {
	case 2:
		return equalFold(name, "te")
	case 7:
		return equalFold(name, "trailer") || equalFold(name, "upgrade")
	case 10:
		return equalFold(name, "connection") || equalFold(name, "keep-alive")
	case 16:
		return equalFold(name, "proxy-connection")
	case 17:
		return equalFold(name, "transfer-encoding")
	case 18:
		return equalFold(name, "proxy-authenticate")
	case 19:
		return equalFold(name, "proxy-authorization")
	}
	return false
}

func namedIn(name []byte, tokens [][]byte) bool {
	for _, t := range tokens {
		if bytes.EqualFold(name, t) {
			return true
		}
	}
	return false
}

// copyN copies n bytes from src to dst, flushing flush (if not nil)
// before it would wait for src, so streamed bodies are not held back.
func copyN(dst io.Writer, flush *bufio.Writer, src *bufio.Reader, n int64) error {
	for n > 0 {
		if src.Buffered() == 0 {
			if flush != nil && flush.Buffered() > 0 {
				if err := flush.Flush(); err != nil {
					return errClientWrite
				}
			}
			if _, err := src.Peek(1); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
		}
		k := min(int64(src.Buffered()), n)
		b, _ := src.Peek(int(k))
		if _, err := dst.Write(b); err != nil {
			if flush != nil {
				return errClientWrite
			}
			return err
		}
		src.Discard(int(k))
		n -= k
	}
	return nil
}

func copyToEOF(dst *bufio.Writer, src *bufio.Reader) error {
	for {
		if src.Buffered() == 0 {
			if dst.Buffered() > 0 {
				if err := dst.Flush(); err != nil {
					return errClientWrite
				}
			}
			if _, err := src.Peek(1); err != nil {
				if err == io.EOF {
					return nil
				}
				return err
			}
		}
		b, _ := src.Peek(src.Buffered())
		if _, err := dst.Write(b); err != nil {
			return errClientWrite
		}
		src.Discard(len(b))
	}
}

// relayChunked passes a chunked body through as it is (sizes, extensions,
// trailers), checking its framing to know where it ends.
func relayChunked(dst *bufio.Writer, src *bufio.Reader) error {
	for {
		line, err := readChunkLine(dst, src)
		if err != nil {
			return err
		}
		size, ok := parseChunkSize(line)
		if !ok {
			return errMalformed
		}
		if _, err := dst.Write(line); err != nil {
			return errClientWrite
		}
		if size == 0 {
			for { // trailers, then the final CRLF
				line, err := readChunkLine(dst, src)
				if err != nil {
					return err
				}
				if _, err := dst.Write(line); err != nil {
					return errClientWrite
				}
				if len(line) <= 2 {
					return nil
				}
			}
		}
		if err := copyN(dst, dst, src, size); err != nil {
			return err
		}
		line, err = readChunkLine(dst, src)
		if err != nil {
			return err
		}
		if len(line) != 2 {
			return errMalformed
		}
		if _, err := dst.Write(line); err != nil {
			return errClientWrite
		}
	}
}

// readChunkLine reads one CRLF-terminated line; the slice is valid until
// src is read again.
func readChunkLine(dst *bufio.Writer, src *bufio.Reader) ([]byte, error) {
	if src.Buffered() == 0 && dst.Buffered() > 0 {
		if err := dst.Flush(); err != nil {
			return nil, errClientWrite
		}
	}
	line, err := src.ReadSlice('\n')
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, errMalformed
	}
	return line, nil
}

func parseChunkSize(line []byte) (int64, bool) {
	line = line[:len(line)-2]
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	line = trimOWS(line)
	if len(line) == 0 || len(line) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range line {
		switch {
		case '0' <= c && c <= '9':
			n = n<<4 | int64(c-'0')
		case 'a' <= c && c <= 'f':
			n = n<<4 | int64(c-'a'+10)
		case 'A' <= c && c <= 'F':
			n = n<<4 | int64(c-'A'+10)
		default:
			return 0, false
		}
	}
	return n, true
}

// cutLine splits b at its first CRLF.
func cutLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return b, nil
	}
	line = b[:i]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	return line, b[i+1:]
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// equalFold compares b with the lowercase ASCII s, ignoring case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

func equalFoldString(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c, d := b[i], s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if 'A' <= d && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

// tokenChars are RFC 9110 tchar.
var tokenChars = asciiSet("!#$%&'*+-.^_`|~")

// asciiSet is the set of ASCII letters, digits and the bytes of extra.
func asciiSet(extra string) (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range extra {
		t[c] = true
	}
	return t
}

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tokenChars[c] {
			return false
		}
	}
	return true
}

// validValue rejects control characters (tab aside) in a header value.
func validValue(b []byte) bool {
	for _, c := range b {
		if (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// validTarget accepts visible ASCII only in an origin-form target.
func validTarget(b []byte) bool {
	for _, c := range b {
		if c <= 0x20 || c >= 0x7f {
			return false
		}
	}
	return true
}

func parseContentLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

func unsafeString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) || isConnReset(err)
}

func isConnReset(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && !oe.Timeout()
}

// fillRequestID writes 32 random hex digits.
func fillRequestID(b *[32]byte) {
	hi, lo := rand.Uint64(), rand.Uint64()
	for i := 0; i < 16; i++ {
		b[i] = hexDigits[hi>>(60-4*i)&0xf]
		b[16+i] = hexDigits[lo>>(60-4*i)&0xf]
	}
}

// httpDate returns the current time in HTTP date format, cached per second.
func httpDate() []byte {
	now := time.Now()
	sec := now.Unix()
	if d := dateCache.Load(); d != nil && d.sec == sec {
		return d.b
	}
	d := &cachedDate{sec: sec, b: now.UTC().AppendFormat(nil, "Mon, 02 Jan 2006 15:04:05 GMT")}
	dateCache.Store(d)
	return d.b
}

type cachedDate struct {
	sec int64
	b   []byte
}

var dateCache atomic.Pointer[cachedDate]

func statusText(code int) string {
	switch code {
	case 404:
		return "Not Found"
	case 502:
		return "Bad Gateway"
	case 503:
		return "Service Unavailable"
	case 504:
		return "Gateway Timeout"
	}
	if t := http.StatusText(code); t != "" {
		return t
	}
	return "Status"
}
