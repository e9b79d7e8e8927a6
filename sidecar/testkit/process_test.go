package testkit

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestProcessStop: Stop lets a process that exits on SIGTERM do so, and
// kills one that ignores it once the grace has passed. The script that
// exits takes several wake-ups to do so (its sleep ends, the shell runs the
// trap, prints and exits, Wait returns): on a loaded machine more than a
// short grace, so its grace only bounds a hang. The one that ignores
// SIGTERM waits the grace out whatever it is, so it keeps a short one.
func TestProcessStop(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, script string
		grace        time.Duration
		killed       bool
	}{
		{"exits on SIGTERM", `trap 'echo bye; exit 0' TERM; echo up; while :; do sleep 0.05; done`, time.Minute, false},
		{"ignores SIGTERM", `trap '' TERM; echo up; while :; do sleep 0.05; done`, 200 * time.Millisecond, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			sh := RequireTools(t, "sh")["sh"]
			p := StartProcess(t, tc.name, exec.Command(sh, "-c", tc.script))
			WaitFor(t, "the script to start", 10*time.Second, func() error {
				if !strings.Contains(p.Stdout.String(), "up") {
					return errors.New("not up yet")
				}
				return nil
			})
			if p.Exited() {
				t.Fatal("exited before Stop")
			}
			err := p.Stop(tc.grace)
			if killed := err != nil; killed != tc.killed {
				t.Errorf("Stop = %v, want killed %v", err, tc.killed)
			}
			if !p.Exited() || p.ExitAt().IsZero() {
				t.Error("Stop returned before the process exited")
			}
			if !tc.killed && (p.Err() != nil || !strings.HasSuffix(p.Stdout.String(), "bye\n")) {
				t.Errorf("exit %v, output %q; want its TERM trap's clean exit", p.Err(), p.Output())
			}
			if err := p.Stop(time.Second); err != nil {
				t.Errorf("second Stop: %v", err)
			}
		})
	}
}

func TestProcessWait(t *testing.T) {
	t.Parallel()
	sh := RequireTools(t, "sh")["sh"]
	p := StartProcess(t, "exit 3", exec.Command(sh, "-c", "echo out; echo err >&2; exit 3"))
	var ee *exec.ExitError
	if err := p.Wait(t, 10*time.Second); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("Wait = %v, want exit status 3", err)
	}
	if p.Stdout.String() != "out\n" || p.Stderr.String() != "err\n" || p.Output() != "out\nerr\n" {
		t.Errorf("stdout %q, stderr %q", p.Stdout, p.Stderr)
	}
}

func TestTail(t *testing.T) {
	if got := Tail("a\nb\nc\n", 2); got != "b\nc" {
		t.Errorf("Tail = %q", got)
	}
	if got := Tail("a\n", 5); got != "a" {
		t.Errorf("Tail = %q", got)
	}
}

// TestProcessKilledAtCleanup: a process still running when its test ends is
// killed at once, even one that ignores SIGTERM.
func TestProcessKilledAtCleanup(t *testing.T) {
	t.Parallel()
	sh := RequireTools(t, "sh")["sh"]
	var p *Process
	var start time.Time // once started: starting a process is not what is timed
	t.Run("start", func(t *testing.T) {
		p = StartProcess(t, "stubborn", exec.Command(sh, "-c", `trap '' TERM; while :; do sleep 0.05; done`))
		start = time.Now()
	})
	if p == nil {
		t.Fatal("not started")
	}
	if !p.Exited() {
		t.Fatal("still running after its test ended")
	}
	if d := time.Since(start); d > StopGrace/2 {
		t.Errorf("cleanup took %v: it waited instead of killing", d)
	}
}

func TestParseProcSize(t *testing.T) {
	const status = "Name:\tcoredns\nVmPeak:\t  900 kB\nVmHWM:\t   64000 kB\nVmRSS:\t 60000 kB\n"
	tests := []struct {
		in, field string
		want      int64
		wantErr   bool
	}{
		{status, "VmHWM", 64000 * 1024, false},
		{status, "VmRSS", 60000 * 1024, false},
		{"Name:\tx\n", "VmHWM", 0, true},
		{"VmHWM:\t 12 MB\n", "VmHWM", 0, true},
	}
	for _, tt := range tests {
		got, err := ParseProcSize(tt.in, tt.field)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseProcSize(%q, %s) = %d, %v; want %d, err %v", tt.in, tt.field, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestPeakRSSAndFDsOfSelf(t *testing.T) {
	pid := os.Getpid()
	rss, err := PeakRSS(pid)
	if err != nil || rss < 1<<20 {
		t.Errorf("PeakRSS(self) = %d, %v", rss, err)
	}
	if n, err := OpenFDs(pid); err != nil || n < 3 {
		t.Errorf("OpenFDs(self) = %d, %v", n, err)
	}
}
