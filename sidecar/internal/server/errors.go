package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// errOverloaded: MaxInFlight queries were in flight when the query came.
var errOverloaded = errors.New("too many queries in flight")

// errJostled: the query waited jostleAfter or more and was given up on to
// make room for newer ones (admission.go). The sidecar's own state, like
// errOverloaded, which it wraps.
var errJostled = fmt.Errorf("%w: given up on after %s for newer queries", errOverloaded, jostleAfter)

// failure is the one place where an error from the upstream side becomes
// what the client gets: SERVFAIL, with the Extended DNS Error code (RFC 8914)
// and text that go with it when the query carried EDNS. The exception is
// ErrBadQuery: the upstream found the query itself malformed and sent
// nothing, so the client gets FORMERR without EDE (asking again cannot help).
//
// TLS failures, pins included, are 23 Network Error: the upstream was
// reached but could not be trusted. The sidecar's own overload is 0 Other:
// too many queries in flight, a query given up on for newer ones, or no
// room on the upstream's connections before the deadline (ErrBusy).
// Everything else (timeouts, unreachable
// or all-down upstreams, connections lost, malformed answers, shutdown and
// errors nobody foresaw) is 22 No Reachable Authority: no usable answer
// could be had in time.
func failure(err error) (rcode int, ede int, text string) {
	rcode, ede = dnswire.RcodeServerFailure, dnswire.EDENoReachableAuthority
	switch {
	case errors.Is(err, upstream.ErrBadQuery):
		return dnswire.RcodeFormatError, noEDE, ""
	case errors.Is(err, errOverloaded), errors.Is(err, upstream.ErrBusy):
		// The sidecar's own state, not the upstream's: no code of RFC 8914
		// says "busy", so Other, with the reason in the text.
		return rcode, dnswire.EDEOther, "sidecar overloaded"
	case errors.Is(err, upstream.ErrPinMismatch):
		return rcode, dnswire.EDENetworkError, "upstream key not pinned"
	case errors.Is(err, upstream.ErrTLS):
		return rcode, dnswire.EDENetworkError, "upstream TLS failure"
	case errors.Is(err, context.DeadlineExceeded):
		return rcode, ede, "upstream did not answer in time"
	case errors.Is(err, upstream.ErrAllDown):
		return rcode, ede, "all upstreams down"
	case errors.Is(err, upstream.ErrUnreachable):
		return rcode, ede, "upstream unreachable"
	case errors.Is(err, upstream.ErrConnClosed):
		return rcode, ede, "upstream connection lost"
	case errors.Is(err, upstream.ErrBadResponse):
		return rcode, ede, "malformed upstream answer"
	case errors.Is(err, upstream.ErrClosed), errors.Is(err, context.Canceled):
		return rcode, ede, "shutting down"
	default:
		return rcode, ede, "upstream failure"
	}
}
