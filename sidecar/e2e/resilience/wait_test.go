package resilience

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// runWait runs `dot-sidecar wait` with env and args and returns its exit
// code, output and duration.
func runWait(t *testing.T, env []string, args ...string) (code int, stdout, stderr string, took time.Duration) {
	t.Helper()
	cmd := exec.Command(bintest.Binary(t), append([]string{"wait"}, args...)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	var out, errb testkit.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	took = time.Since(start)
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String(), errb.String(), took
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String(), errb.String(), took
}

// `dot-sidecar wait` returns at once against a ready sidecar, and fails
// with a line naming the URL and what it saw after --timeout against one
// that is not ready (draining, or not listening at all). Without LOG_LEVEL
// it logs its outcome alone, in slog's text form.
func TestWaitCommand(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})

	t.Run("ready", func(t *testing.T) {
		t.Parallel()
		s := startSidecar(t, upstreamEnv(t, srv)...)
		port := s.Admin[strings.LastIndex(s.Admin, ":")+1:]
		// A wildcard host means loopback.
		code, out, errOut, took := runWait(t, []string{"ADMIN_ADDRESS=:" + port}, "--timeout", "5s")
		if code != 0 || !strings.Contains(errOut, `level=INFO msg="sidecar ready" url=http://127.0.0.1:`+port+"/readyz") {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 0 and a ready line", code, out, errOut)
		}
		if took > 2*time.Second {
			t.Errorf("wait took %s against a ready sidecar", took)
		}
	})

	t.Run("draining", func(t *testing.T) {
		t.Parallel()
		s := startSidecar(t, append(upstreamEnv(t, srv), "SHUTDOWN_LAMEDUCK=20s", "SHUTDOWN_GRACE=25s")...)
		if err := s.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		testkit.WaitFor(t, "/readyz to turn 503 after SIGTERM", 2*time.Second, func() error {
			if code, body := s.Get("/readyz"); code != http.StatusServiceUnavailable {
				return fmt.Errorf("still %d %q", code, body)
			}
			return nil
		})
		code, out, errOut, took := runWait(t, nil, "--admin-address", s.Admin, "--timeout", "1s")
		want := fmt.Sprintf(`level=ERROR msg="sidecar not ready" url=http://%s/readyz waited=1s last="status 503: shutting down"`, s.Admin)
		if code != 1 || !strings.Contains(errOut, want) {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 1 and %q", code, out, errOut, want)
		}
		if took < time.Second || took > 4*time.Second {
			t.Errorf("wait gave up after %s, want about its 1s timeout", took)
		}
	})

	t.Run("nothing listening", func(t *testing.T) {
		t.Parallel()
		addr := fmt.Sprintf("127.0.0.1:%d", bintest.FreePort(t))
		code, out, errOut, _ := runWait(t, []string{"ADMIN_ADDRESS=" + addr}, "--timeout", "1s")
		if code != 1 || !strings.Contains(errOut, `msg="sidecar not ready" url=http://`+addr+"/readyz waited=1s") ||
			!strings.Contains(errOut, "connection refused") {
			t.Fatalf("exit %d, stdout %q, stderr %q; want 1 and a message saying the connection was refused", code, out, errOut)
		}
		if n := strings.Count(strings.TrimSpace(errOut), "\n"); n != 0 {
			t.Errorf("stderr has %d lines, want one:\n%s", n+1, errOut)
		}
	})
}
