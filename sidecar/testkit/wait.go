package testkit

import (
	"errors"
	"testing"
	"time"
)

// PollInterval is how often WaitFor checks its condition: short beside
// what the tests wait for (a process starting, an address becoming usable),
// long beside one check.
const PollInterval = 20 * time.Millisecond

// WaitFor checks cond until it returns nil, and fails t naming what it
// waited for, with cond's last error, when timeout passes first or cond
// returns an error made by Permanent. Tests wait on a condition this way,
// never by sleeping for a guessed time.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := poll(timeout, cond); err != nil {
		t.Fatalf("waiting %v for %s: %v", timeout, what, err)
	}
}

// poll returns nil once cond does, or cond's last error after timeout or
// once it is permanent.
func poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(PollInterval)
	defer tick.Stop()
	for {
		err := cond()
		var p permanent
		if errors.As(err, &p) {
			return p.error
		}
		if err == nil || time.Now().After(deadline) {
			return err
		}
		<-tick.C
	}
}

// Permanent marks a condition's error as final: waiting longer cannot help
// (the process waited for has exited), so WaitFor fails at once.
func Permanent(err error) error { return permanent{err} }

type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }
