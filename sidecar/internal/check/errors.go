package check

import "errors"

// Errors Run returns when it cannot test interception at all (as opposed to a
// test that ran and found a path not intercepted, which is ok == false).
var (
	// ErrNoNameservers means the resolv.conf names no usable nameserver, so
	// there is nothing to test; glibc would fall back to the local host.
	ErrNoNameservers = errors.New("no nameserver in resolv.conf")
	// ErrRunAsSidecar means check runs under the sidecar's own UID, whose
	// traffic the rules deliberately leave alone: the result would say nothing
	// about applications.
	ErrRunAsSidecar = errors.New("check runs as the sidecar's UID, which the redirect rules exclude")
)
