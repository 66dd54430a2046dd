package gateway

import "time"

// How a proxied request ended, decided in one place for both forwarding
// paths: the fast path and the general (net/http) path describe what
// happened as a status and a failure, and everything that counts the
// request -- outlier detection, the load reports that canary analysis
// reads, the metrics and the access log -- asks the functions below.
//
// The rule: only what the upstream did counts against it. A client that
// aborts, times out or sends a malformed or short body is the client's
// fault: the endpoint stays in rotation, the request is not an error in
// the load reports, and the status is 499 (the client left before the
// answer) or 400/408 (its body was bad or too slow), as nginx reports.

// failure is what went wrong in an attempt, if anything.
type failure uint8

const (
	failNone failure = iota
	// failConnect: the upstream could not be reached.
	failConnect
	// failUpstream: the upstream broke the exchange before its answer
	// was relayed (reset, EOF, a malformed response).
	failUpstream
	// failUpstreamTimeout: the route's or the try's deadline passed
	// waiting for the upstream.
	failUpstreamTimeout
	// failClientGone: the client went away (closed, reset, stopped
	// reading) before its answer was delivered.
	failClientGone
	// failClientBody: the client's body was malformed, shorter than its
	// Content-Length or too slow.
	failClientBody
)

// upstreamFault reports whether the failure is the upstream's: it counts
// toward outlier ejection and may be retried by the route's policy.
func (f failure) upstreamFault() bool {
	return f == failConnect || f == failUpstream || f == failUpstreamTimeout
}

// clientFault reports whether the failure is the client's.
func (f failure) clientFault() bool { return f == failClientGone || f == failClientBody }

// StatusClientClosed is what the access log and the metrics record for a
// request whose client left before its answer (nginx's 499).
const StatusClientClosed = 499

// countsAsError reports whether a finished request is an error in the
// load reports (and so in canary analysis): a 5xx answer, whether the
// upstream sent it or the gateway answered for a failed upstream. Client
// faults are never errors.
func countsAsError(status int, f failure) bool {
	if f.clientFault() {
		return false
	}
	return status >= 500 || status == 0
}

// observe records one attempt's outcome on endpoint e for outlier
// detection: status is the upstream's response status (0 if none).
func (c *upstreamCluster) observe(e *endpoint, status int, f failure) {
	if f.clientFault() && status == 0 {
		return // nothing was learned about the upstream
	}
	c.outcome(e, status, f.upstreamFault())
}

// finish records a request's end in its cluster's load counters.
func (st *clusterState) finish(status int, f failure, sent, headAt int64) {
	st.latency.observe(time.Duration(headAt - sent))
	if countsAsError(status, f) {
		st.failed.Add(1)
	} else {
		st.succeeded.Add(1)
	}
}

// clientBodyAnswer is the gateway's answer, on either path, to a request
// whose body the client did not deliver: 408 when it was too slow (a
// close by the body timeout), else 400 (malformed or short). The
// connection closes after it.
func (g *Gateway) clientBodyAnswer(err error) (status int, body string) {
	if isTimeout(err) {
		g.metrics.closedBy(closedBodyTimeout)
		return 408, "berth: request body timeout\n"
	}
	return 400, "berth: malformed or short request body\n"
}
