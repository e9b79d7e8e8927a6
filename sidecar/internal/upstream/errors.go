package upstream

import (
	"errors"
	"fmt"
)

// Sentinel errors. The server chooses the response code and Extended DNS
// Error from these with errors.Is, in one place.
var (
	// ErrUnreachable: the upstream could not be reached (dial refused or timed
	// out, no route), or it completed the TLS handshake and then closed or
	// reset the connection before answering anything on it, for the third
	// new connection in a row (a server at its connection limit, or broken;
	// newconn.go). Counts against the upstream's health. Answers get EDE 22
	// (No Reachable Authority).
	ErrUnreachable = errors.New("upstream unreachable")
	// ErrTLS: the TLS handshake or certificate verification failed. Answers
	// get EDE 23 (Network Error). Never retried in plaintext.
	ErrTLS = errors.New("upstream TLS failure")
	// ErrPinMismatch wraps ErrTLS: the verified chain holds no pinned key.
	ErrPinMismatch = fmt.Errorf("%w: no pinned key in the verified chain", ErrTLS)
	// ErrConnClosed: a pooled connection that had answered queries before
	// died under a query (the upstream closed or reset it, RFC 7858 §3.4),
	// or a new one did before answering anything, fewer than three in a row
	// (errNewConnLost). The query is resent on a fresh connection and the
	// upstream is not blamed.
	ErrConnClosed = errors.New("upstream connection closed")
	// ErrSlowAnswer wraps the context's error when a query timed out while
	// the upstream answered other queries, on its connection or another:
	// the upstream is up, and this name is slow to resolve (long recursion,
	// a lame delegation). A Group retries it elsewhere but does not hold it
	// against the upstream's health, unless over a window most names time
	// out (partial.go). Answers get EDE 22, like any timeout.
	ErrSlowAnswer = errors.New("upstream answering other queries, but not this one in time")
	// ErrBusy wraps the context's error when a query's deadline came while
	// it waited for room on the upstream's connections: every one the pool
	// may open was open and full (UPSTREAM_MAX_INFLIGHT queries, or the
	// upstream's own limit per connection). That is the sidecar's own
	// limit, and the query never reached the upstream: a Group holds it
	// neither against the upstream's health nor in its partial failure's
	// window. Answers get EDE 0, as the sidecar's own overload does.
	ErrBusy = errors.New("no room on the upstream's connections")
	// ErrAllDown: every upstream is marked down; answers get SERVFAIL at once
	// with EDE 22.
	ErrAllDown = errors.New("all upstreams are down")
	// ErrBadResponse: the upstream answered the query (its ID and question)
	// with a message that does not parse whole, or the server found the
	// answer unusable for the client. Final like any answer: not retried,
	// and not held against the upstream.
	ErrBadResponse = errors.New("malformed upstream response")
	// ErrHTTP: a DNS-over-HTTPS upstream answered the HTTP request without a
	// usable DNS answer: a status other than 200, another content type, a
	// body truncated, oversized or not a DNS message, an answer to another
	// question, or a reset stream. A transport failure like a timeout,
	// never passed to the client: a Group retries it on the next upstream
	// and holds it against this one's health. Answers get EDE 22.
	ErrHTTP = errors.New("upstream HTTP failure")
	// ErrClosed: the Upstream was closed (shutdown).
	ErrClosed = errors.New("upstream closed")
	// ErrBadQuery: the caller handed Exchange something that is not a DNS
	// query it can relay (a Msg that dnswire.Parse did not accept whole, or
	// one without exactly one question). Nothing was sent; answers get
	// FORMERR.
	ErrBadQuery = errors.New("malformed query")
)
