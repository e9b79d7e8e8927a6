package testkit

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestStallWatch stalls the test process for real: a child continues it
// 300 ms after it stops itself with SIGSTOP, as a machine that does not run
// it would.
func TestStallWatch(t *testing.T) {
	const stall = 300 * time.Millisecond
	w := WatchStalls()
	cont := exec.Command("sh", "-c", fmt.Sprintf("sleep %.1f; kill -CONT %d", stall.Seconds(), os.Getpid()))
	if err := cont.Start(); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := cont.Wait(); err != nil {
		t.Fatal(err)
	}
	WaitFor(t, "the watch to see the stall", 5*time.Second, func() error {
		if got := w.Max(); got < stall*3/4 {
			return fmt.Errorf("a stall of %s measured as %s", stall, got)
		}
		return nil
	})
	if got := w.Stop(); got < stall*3/4 || got > 10*stall {
		t.Errorf("Stop: %s, want about %s", got, stall)
	}
}
