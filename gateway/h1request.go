package gateway

import (
	"bufio"
	"bytes"
	"errors"
)

// The HTTP/1.x request head, read strictly (RFC 9112). Every HTTP/1.x
// request the gateway receives, whichever path then forwards it, is
// framed here first, so one set of rules decides where a request ends:
//
//   - Content-Length: exactly one field line of 1*DIGIT (leading zeros are
//     read as decimal; the upstream gets the canonical number). A second
//     line, even with the same value, a list ("5, 5"), a sign or spaces
//     inside: 400.
//   - Transfer-Encoding: one field line whose value is "chunked"; any
//     other coding: 501. Together with Content-Length: 400.
//   - obs-fold (a line starting with SP or HTAB), whitespace before the
//     colon, a bare LF or CR, control characters in a value, a name that
//     is not a token: 400.
//   - HTTP/1.1 needs exactly one Host. HTTP/0.9 request lines (no
//     version) get 400 as soon as the line is read; versions other than
//     1.0 and 1.1 get 505.
//   - Empty lines (CRLF) before the request line are skipped (RFC 9112
//     §2.2).
//   - A head larger than the configured bytes, or with more field lines
//     than the configured count: 431.
//
// A rejected request is answered by the gateway and its connection
// closed, since the rest of the stream can no longer be framed. The
// upstream never sees the client's framing lines: the fast path writes
// its own Content-Length, the general path (net/http's Transport) its own
// framing. Connection options can drop only end-to-end fields that are
// not framing, routing or the gateway's own (protected below).

// headVerdict is what becomes of a request head.
type headVerdict uint8

const (
	// headServe: the fast path forwards it.
	headServe headVerdict = iota
	// headHandOff: valid, but for the general path (HTTP/1.0, upgrades,
	// Expect, chunked bodies, targets other than origin-form, the HTTP/2
	// preface). The general path serves that one request and closes.
	headHandOff
	// headReject: the client's fault; answer reject.status and close.
	headReject
)

// rejection is why a request head is refused; the reason is the answer's
// body and the metric label, so it is a fixed string.
type rejection struct {
	status int
	reason string
}

func (r *rejection) Error() string { return r.reason }

var (
	rejectBareLF      = &rejection{400, "bare LF or CR in the request head"}
	rejectRequestLine = &rejection{400, "malformed request line"}
	rejectHTTP09      = &rejection{400, "request line without an HTTP version"}
	rejectVersion     = &rejection{505, "unsupported HTTP version"}
	// rejectNotHTTP: three words whose last is no HTTP version, or a
	// broken HTTP/2 preface. On a port that also takes HTTP/2 with prior
	// knowledge this is an invalid connection preface (RFC 9113 §3.4):
	// the connection is closed without an answer.
	rejectNotHTTP       = &rejection{0, "neither an HTTP/1.x request nor the HTTP/2 preface"}
	rejectTarget        = &rejection{400, "malformed request target"}
	rejectFieldLine     = &rejection{400, "malformed header field"}
	rejectObsFold       = &rejection{400, "obsolete line folding"}
	rejectFieldValue    = &rejection{400, "invalid character in a header value"}
	rejectHost          = &rejection{400, "missing, repeated or invalid Host"}
	rejectCL            = &rejection{400, "invalid Content-Length"}
	rejectDupCL         = &rejection{400, "repeated Content-Length"}
	rejectDupTE         = &rejection{400, "repeated Transfer-Encoding"}
	rejectCLTE          = &rejection{400, "Content-Length with Transfer-Encoding"}
	rejectTE            = &rejection{501, "unsupported transfer coding"}
	rejectExpect        = &rejection{417, "unsupported expectation"}
	rejectHeadTooLarge  = &rejection{431, "request head too large"}
	rejectHeadTimeout   = &rejection{408, "request head timeout"}
	rejectTooManyFields = &rejection{431, "too many header fields"}
)

// headLimits bound a request head.
type headLimits struct {
	maxBytes  int // the head, request line through the empty line
	maxFields int // header field lines
}

// errNeedBuffer: the head is not complete and the reader's buffer is full
// but smaller than the head limit; the caller gives it a larger buffer.
var errNeedBuffer = errors.New("request head needs a larger buffer")

// scanRequestHead skips empty lines before a request and returns the
// request head at the start of br (through its empty line), without
// consuming it. It rejects, as early as the bytes allow, a bare LF, an
// HTTP/0.9 request line and a head over lim.maxBytes. Other errors are
// the reader's.
//
// beforeWait, when not nil, is called once, before the first read that
// waits for more of a head: a head that arrives whole costs no timer.
func scanRequestHead(br *bufio.Reader, lim headLimits, beforeWait func()) ([]byte, error) {
	for {
		b, err := br.Peek(2)
		if len(b) > 0 && b[0] == '\n' {
			return nil, rejectBareLF
		}
		if len(b) == 2 && b[0] == '\r' && b[1] == '\n' {
			br.Discard(2)
			continue
		}
		if err != nil {
			return nil, err
		}
		break
	}
	from, lineChecked := 0, false
	for {
		buf, _ := br.Peek(br.Buffered())
		for i := from; i < len(buf); i++ {
			j := bytes.IndexByte(buf[i:], '\n')
			if j < 0 {
				break
			}
			i += j
			if i == 0 || buf[i-1] != '\r' {
				return nil, rejectBareLF
			}
			if !lineChecked {
				if rej := checkRequestLine(buf[:i-1]); rej != nil {
					return nil, rej
				}
				lineChecked = true
			}
			if i >= 3 && buf[i-2] == '\n' && buf[i-3] == '\r' {
				if i+1 > lim.maxBytes {
					return nil, rejectHeadTooLarge
				}
				return buf[:i+1], nil
			}
		}
		from = max(0, len(buf)-3)
		if len(buf) >= lim.maxBytes {
			return nil, rejectHeadTooLarge
		}
		if len(buf) >= br.Size() {
			return nil, errNeedBuffer
		}
		if beforeWait != nil {
			beforeWait()
			beforeWait = nil
		}
		if _, err := br.Peek(len(buf) + 1); err != nil {
			return nil, err
		}
	}
}

// checkRequestLine rejects a request line that cannot be HTTP/1.x:
// method SP request-target SP HTTP-version, single spaces.
func checkRequestLine(line []byte) *rejection {
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 < 0 {
		return rejectHTTP09 // "GET" alone, or not HTTP at all
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 < 0 {
		return rejectHTTP09 // "GET /": HTTP/0.9
	}
	sp2 += sp1 + 1
	method, target, version := line[:sp1], line[sp1+1:sp2], line[sp2+1:]
	if !isToken(method) || len(target) == 0 || bytes.IndexByte(version, ' ') >= 0 {
		return rejectRequestLine
	}
	if !validTarget(target) {
		return rejectTarget
	}
	if len(version) < 5 || string(version[:5]) != "HTTP/" {
		return rejectNotHTTP
	}
	if len(version) != 8 || !isDigit(version[5]) || version[6] != '.' || !isDigit(version[7]) {
		return rejectRequestLine
	}
	switch string(version) {
	case "HTTP/1.1", "HTTP/1.0":
	case "HTTP/2.0":
		if string(method) != "PRI" || string(target) != "*" {
			return rejectVersion
		}
	default:
		return rejectVersion
	}
	return nil
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// parse reads head (from scanRequestHead) into r.
func (r *request) parse(head []byte, lim headLimits) (headVerdict, *rejection) {
	*r = request{hdrs: r.hdrs[:0], connTokens: r.connTokens[:0]}
	line, rest := cutLine(head)
	if rej := checkRequestLine(line); rej != nil {
		return headReject, rej
	}
	sp1 := bytes.IndexByte(line, ' ')
	sp2 := sp1 + 1 + bytes.IndexByte(line[sp1+1:], ' ')
	r.method, r.target = line[:sp1], line[sp1+1:sp2]
	version := line[sp2+1:]
	if string(r.method) == "PRI" && string(version) == "HTTP/2.0" {
		r.preface = true
		return headHandOff, nil // the HTTP/2 connection preface: h2c
	}
	http10 := string(version) == "HTTP/1.0"
	handOff := http10
	if r.target[0] == '/' {
		r.path = r.target
		if q := bytes.IndexByte(r.target, '?'); q >= 0 {
			r.path = r.target[:q]
		}
	} else {
		// absolute-form, authority-form (CONNECT) and asterisk-form
		// (OPTIONS *) go to net/http, which knows their rules.
		switch {
		case string(r.method) == "CONNECT", string(r.method) == "OPTIONS" && string(r.target) == "*", hasScheme(r.target):
			handOff = true
		default:
			return headReject, rejectTarget
		}
	}
	hosts, fields := 0, 0
	upgradeTo := false
	var expect []byte
	for len(rest) > 2 {
		line, rest = cutLine(rest)
		if fields++; fields > lim.maxFields {
			return headReject, rejectTooManyFields
		}
		if line[0] == ' ' || line[0] == '\t' {
			return headReject, rejectObsFold
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return headReject, rejectFieldLine
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		if !validValue(value) {
			return headReject, rejectFieldValue
		}
		h := header{name: name, value: value, line: line}
		switch len(name) {
		case 4:
			if equalFold(name, "host") {
				hosts++
				r.host = value
				if !validHost(value) {
					return headReject, rejectHost
				}
			}
		case 14:
			if equalFold(name, "content-length") {
				if r.hasLength {
					return headReject, rejectDupCL
				}
				n, ok := parseContentLength(value)
				if !ok {
					return headReject, rejectCL
				}
				r.hasLength, r.contentLength = true, n
				h.drop = true // the gateway writes its own
			}
		case 17:
			if equalFold(name, "transfer-encoding") {
				if r.chunked {
					return headReject, rejectDupTE
				}
				if len(value) == 0 {
					return headReject, rejectFieldValue // perhaps folded onto the next line
				}
				if !equalFold(value, "chunked") {
					return headReject, rejectTE
				}
				r.chunked, h.drop = true, true
			} else if equalFold(name, "x-forwarded-proto") {
				h.drop = true
			}
		case 12:
			if equalFold(name, "x-request-id") {
				h.drop = true
				r.reqID = value
			}
		case 7:
			if equalFold(name, "upgrade") {
				h.drop = true
				if !equalFold(value, "h2c") { // h2c upgrade is optional; served as HTTP/1.1
					upgradeTo = true
				}
			} else if equalFold(name, "trailer") {
				h.drop = true
			}
		case 6:
			if equalFold(name, "expect") {
				h.drop = true
				expect = value
			}
		case 10:
			if equalFold(name, "connection") {
				h.drop = true
				for tok := range bytes.SplitSeq(value, []byte(",")) {
					tok = trimOWS(tok)
					switch {
					case len(tok) == 0, equalFold(tok, "keep-alive"):
					case equalFold(tok, "close"):
						r.closeConn = true
					case equalFold(tok, "upgrade"):
						r.upgrade = true
					case !isToken(tok):
						return headReject, rejectFieldValue
					default:
						r.connTokens = append(r.connTokens, tok)
					}
				}
			} else if equalFold(name, "keep-alive") {
				h.drop = true
			}
		case 2:
			if equalFold(name, "te") {
				h.drop = true
				if equalFold(value, "trailers") {
					r.te = value
				}
			}
		case 16:
			if equalFold(name, "proxy-connection") {
				h.drop = true
			}
		case 19:
			if equalFold(name, "proxy-authorization") {
				h.drop = true
			}
		case 15:
			if equalFold(name, "x-forwarded-for") {
				h.drop = true
				if r.xff != nil {
					r.xffMulti = true
				} else {
					r.xff = value
				}
			}
		}
		r.hdrs = append(r.hdrs, h)
	}
	switch {
	case r.hasLength && r.chunked:
		return headReject, rejectCLTE
	case hosts > 1 || (hosts == 0 && !http10):
		return headReject, rejectHost
	}
	if expect != nil {
		if !equalFold(expect, "100-continue") {
			return headReject, rejectExpect
		}
		handOff = true
	}
	if r.upgrade && upgradeTo || r.chunked {
		handOff = true
	}
	// Connection options drop the fields they name, except the ones that
	// frame or route the request and the gateway's own: those are written
	// by the gateway or must reach the upstream as routed.
	for _, tok := range r.connTokens {
		if protectedField(tok) {
			continue
		}
		for i := range r.hdrs {
			if bytes.EqualFold(r.hdrs[i].name, tok) {
				r.hdrs[i].drop = true
			}
		}
	}
	if handOff {
		return headHandOff, nil
	}
	return headServe, nil
}

// hasScheme reports whether target starts like an absolute URI:
// scheme "://" (RFC 3986 §3.1).
func hasScheme(target []byte) bool {
	i := bytes.Index(target, []byte("://"))
	if i <= 0 {
		return false
	}
	for j, c := range target[:i] {
		alpha := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
		if !alpha && (j == 0 || !isDigit(c) && c != '+' && c != '-' && c != '.') {
			return false
		}
	}
	return true
}

// protectedField reports whether a Connection option may not remove the
// field name: framing (Content-Length, Transfer-Encoding), routing (Host)
// and the gateway's own fields.
func protectedField(name []byte) bool {
	for _, p := range [...]string{"content-length", "transfer-encoding", "host", "x-forwarded-for", "x-forwarded-proto", "x-request-id", "x-berth-cohort"} {
		if equalFold(name, p) {
			return true
		}
	}
	return false
}

// validHost accepts what net/http's Host check accepts (reg-name, IP
// literals, a port, percent-encoding), so both paths route the same Host.
func validHost(b []byte) bool {
	for _, c := range b {
		if !hostChars[c] {
			return false
		}
	}
	return true
}

var hostChars = asciiSet("!$%&'()*+,-.:;=[]_~")
