package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// FuzzRequestHead is the differential test of the gateway's HTTP/1.x
// request framer (h1request.go) against a reference: net/http's request
// reader with the checks net/http's server adds to it (Host, field names
// and values), the parser every Go server trusts. For each input:
//
//   - if the framer accepts a request, the reference must accept it too,
//     with the same method, target, Host and framing: the same body
//     length (Content-Length) or chunked, and the request must end at the
//     same byte;
//   - if the framer rejects a request the reference accepts, the input
//     must break one of the framer's stricter rules, each checked here
//     independently on the raw bytes (two Content-Length lines, CL with
//     TE, obs-fold, a bare CR or LF, an HTTP version other than 1.0 and
//     1.1, an unknown expectation, a Connection option that is not a
//     token, an empty Transfer-Encoding, a size limit).
//
// Run it with `make fuzz` (go test ./gateway -fuzz FuzzRequestHead).
func FuzzRequestHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /x?y=1 HTTP/1.1\r\nHost: a.example:8080\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: b\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0005\r\n\r\nhello",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
		"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\nabc",
		"GET / HTTP/1.0\r\n\r\n",
		"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /\r\n",
		"GET / HTTP/1.1\nHost: a\n\n",
		"GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
		"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
		"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: \x80\xff\r\n\r\n",
		"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	lim := headLimits{maxBytes: 8 << 10, maxFields: 20}
	f.Fuzz(func(t *testing.T, data []byte) {
		ours := frameOurs(data, lim)
		ref := frameReference(data)
		switch {
		case ours.incomplete:
			return // more bytes would decide
		case ours.rej != nil:
			if ref.err != nil {
				return // both refuse
			}
			if !stricterRule(ours.rej, data, lim) {
				t.Fatalf("framer refuses (%s) what net/http accepts, and no stricter rule explains it:\n%q", ours.rej.reason, data)
			}
		case ours.preface:
			return // HTTP/2: not an HTTP/1.x request
		default:
			if ref.err != nil {
				if allowedReferenceRefusal(ref.err) || !strings.HasPrefix(ours.target, "/") {
					return // net/http answers the forms the framer hands it
				}
				t.Fatalf("framer accepts what net/http refuses (%v):\n%q", ref.err, data)
			}
			// An absolute-form target's authority is the Host (net/http
			// applies it; the framer hands such requests to net/http).
			if ours.method != ref.method || ours.target != ref.target || ours.host != ref.host && strings.HasPrefix(ours.target, "/") {
				t.Fatalf("request differs: ours %q %q host %q, net/http %q %q host %q\n%q", ours.method, ours.target, ours.host, ref.method, ref.target, ref.host, data)
			}
			if ours.chunked != ref.chunked {
				t.Fatalf("chunked: ours %v, net/http %v\n%q", ours.chunked, ref.chunked, data)
			}
			if ours.chunked {
				return // the general path's net/http decodes the chunks
			}
			if ours.bodyLen != ref.declared {
				t.Fatalf("body length: ours %d, net/http %d\n%q", ours.bodyLen, ref.declared, data)
			}
			if ref.bodyErr == nil && ours.end != ref.end {
				t.Fatalf("request ends at %d for the framer, %d for net/http\n%q", ours.end, ref.end, data)
			}
		}
	})
}

type framed struct {
	incomplete, preface bool
	rej                 *rejection
	method, target      string
	host                string
	chunked             bool
	bodyLen             int64
	end                 int // where the request (head and body) ends in the input
}

// frameOurs runs the fast path's reading of one request over data.
func frameOurs(data []byte, lim headLimits) framed {
	src := bytes.NewReader(data)
	br := bufio.NewReaderSize(src, clientBufSize)
	consumed := func() int { return len(data) - src.Len() - br.Buffered() }
	head, err := scanRequestHead(br, lim, nil)
	if err == errNeedBuffer {
		buffered, _ := br.Peek(br.Buffered())
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(buffered)), src), lim.maxBytes+clientBufSize)
		head, err = scanRequestHead(br, lim, nil)
	}
	var rej *rejection
	switch {
	case errors.As(err, &rej):
		return framed{rej: rej}
	case err != nil:
		return framed{incomplete: true}
	}
	start := consumed()
	var r request
	verdict, rej := r.parse(head, lim)
	switch {
	case verdict == headReject:
		return framed{rej: rej}
	case string(r.method) == "PRI":
		return framed{preface: true}
	}
	out := framed{method: string(r.method), target: string(r.target), host: string(r.host), chunked: r.chunked}
	if r.hasLength {
		out.bodyLen = r.contentLength
	}
	out.end = start + len(head) + int(out.bodyLen)
	return out
}

type referenceFramed struct {
	err            error
	method, target string
	host           string
	chunked        bool
	declared       int64
	bodyErr        error
	end            int
}

// frameReference reads one request with net/http, as its server does:
// leading CRLFs skipped, then ReadRequest, then the server's own checks.
func frameReference(data []byte) referenceFramed {
	skipped := 0
	for bytes.HasPrefix(data, []byte("\r\n")) {
		data, skipped = data[2:], skipped+2
	}
	src := bytes.NewReader(data)
	br := bufio.NewReader(src)
	req, err := http.ReadRequest(br)
	if err != nil {
		return referenceFramed{err: err}
	}
	if err := serverChecks(req, data); err != nil {
		return referenceFramed{err: err}
	}
	out := referenceFramed{method: req.Method, target: req.RequestURI, host: req.Host, declared: max(req.ContentLength, 0)}
	out.chunked = len(req.TransferEncoding) > 0 && req.TransferEncoding[0] == "chunked"
	_, out.bodyErr = io.Copy(io.Discard, req.Body)
	out.end = skipped + len(data) - src.Len() - br.Buffered()
	return out
}

// serverChecks are what net/http's server checks after ReadRequest
// (which moves Host out of the header map: its lines are counted in raw).
func serverChecks(req *http.Request, raw []byte) error {
	hosts := 0
	if i := bytes.Index(raw, []byte("\r\n\r\n")); i >= 0 {
		for _, l := range strings.Split(string(raw[:i]), "\r\n")[1:] {
			if k, _, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, "host") {
				hosts++
			}
		}
	}
	if req.ProtoAtLeast(1, 1) && hosts == 0 && req.Method != "CONNECT" {
		return errors.New("missing required Host header")
	}
	if hosts > 1 {
		return errors.New("too many Host headers")
	}
	if !httpguts.ValidHostHeader(req.Host) {
		return errors.New("malformed Host header")
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return errors.New("invalid header name")
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return errors.New("invalid header value")
			}
		}
	}
	if req.ProtoMajor != 1 {
		return errors.New("unsupported protocol version")
	}
	return nil
}

// allowedReferenceRefusal: net/http refuses, the framer forwards, and
// that is by design: the framer passes a target's percent-encoding
// through as sent (Envoy does too), where net/http parses it into a URL.
func allowedReferenceRefusal(err error) bool {
	return strings.Contains(err.Error(), "invalid URL escape") || strings.Contains(err.Error(), "invalid port") ||
		strings.Contains(err.Error(), "invalid character") && strings.Contains(err.Error(), "in host name")
}

// stricterRule checks, on the raw bytes and independently of the framer,
// that the input breaks the rule the framer refused it for.
func stricterRule(rej *rejection, data []byte, lim headLimits) bool {
	for bytes.HasPrefix(data, []byte("\r\n")) {
		data = data[2:]
	}
	head := data
	if i := bytes.Index(data, []byte("\r\n\r\n")); i >= 0 {
		head = data[:i+2]
	}
	lines := strings.Split(string(head), "\r\n")
	count := func(name string) (n int) {
		for _, l := range lines[1:] {
			if k, _, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, name) {
				n++
			}
		}
		return n
	}
	value := func(name string) string {
		for _, l := range lines[1:] {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, name) {
				return strings.Trim(v, " \t")
			}
		}
		return ""
	}
	switch rej {
	case rejectDupCL:
		return count("content-length") > 1
	case rejectCLTE:
		return count("content-length") > 0 && count("transfer-encoding") > 0
	case rejectDupTE:
		return count("transfer-encoding") > 1
	case rejectObsFold:
		for _, l := range lines[1:] {
			if strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t") {
				return true
			}
		}
	case rejectBareLF:
		for i, c := range data {
			if c == '\n' && (i == 0 || data[i-1] != '\r') || c == '\r' && (i+1 == len(data) || data[i+1] != '\n') {
				return true
			}
		}
	case rejectVersion:
		f := strings.Split(lines[0], " ")
		return len(f) == 3 && f[2] != "HTTP/1.1" && f[2] != "HTTP/1.0"
	case rejectExpect:
		return count("expect") > 0 && !strings.EqualFold(value("expect"), "100-continue")
	case rejectFieldValue:
		if count("transfer-encoding") > 0 && value("transfer-encoding") == "" {
			return true
		}
		for _, l := range lines[1:] {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, "connection") {
				for _, tok := range strings.Split(v, ",") {
					if tok = strings.Trim(tok, " \t"); tok != "" && !httpguts.ValidHeaderFieldName(tok) {
						return true
					}
				}
			}
		}
	case rejectTE:
		return count("transfer-encoding") > 0 // net/http reads some codings the framer does not
	case rejectHeadTooLarge:
		return len(head)+2 > lim.maxBytes || !bytes.Contains(data, []byte("\r\n\r\n"))
	case rejectTooManyFields:
		return len(lines)-2 > lim.maxFields
	case rejectHost:
		// RFC 9112 §3.2: an invalid or repeated Host is refused even
		// when an absolute-form target (which net/http prefers) has one.
		return count("host") > 1 || count("host") == 1 && !httpguts.ValidHostHeader(value("host"))
	case rejectTarget:
		// RFC 9112 §3.2: a target is ASCII URI characters; net/http
		// passes other bytes on.
		f := strings.Split(lines[0], " ")
		if len(f) != 3 {
			return false
		}
		for _, c := range []byte(f[1]) {
			if c <= 0x20 || c >= 0x7f {
				return true
			}
		}
		return !strings.HasPrefix(f[1], "/")
	case rejectCL:
		// net/http trims and accepts some spellings the framer does not
		// ("5 " is trimmed by both; a tab inside is not).
		return count("content-length") > 0
	}
	return false
}
