package admin

import "errors"

// Sentinel errors, checked with errors.Is.
var (
	// ErrNotReady: Wait gave up before /readyz answered 200. Wait returns it
	// as a *NotReadyError, which says where it asked, for how long, and what
	// it last saw.
	ErrNotReady = errors.New("sidecar not ready")
	// ErrStarted: Start was called on an Admin already started or shut down.
	ErrStarted = errors.New("admin: already started")
)
