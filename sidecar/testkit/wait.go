package testkit

import (
	"testing"
	"time"
)

// PollInterval is how often WaitFor checks its condition: short beside
// what the tests wait for (a process starting, an address becoming usable),
// long beside one check.
const PollInterval = 20 * time.Millisecond

// WaitFor checks cond until it returns nil, and fails t naming what it
// waited for, with cond's last error, when timeout passes first. Tests wait
// on a condition this way, never by sleeping for a guessed time.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	if err := Poll(timeout, cond); err != nil {
		t.Fatalf("waiting %v for %s: %v", timeout, what, err)
	}
}

// Poll is WaitFor for code without a testing.TB (a TestMain, a program):
// it returns nil once cond does, or cond's last error after timeout.
func Poll(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(PollInterval)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		<-tick.C
	}
}
