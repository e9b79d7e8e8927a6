package bintest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// StartTimeout bounds Start's wait for /startupz.
const StartTimeout = 10 * time.Second

// handedOut holds the ports FreePort returned in this process. The port is
// free again when FreePort returns, and the kernel may well give it to the
// next caller (it looks for a free port from a random start, and the first
// one after a run of ports in use comes up often): two sidecars, or a
// sidecar and a test's "nothing listens here" address, would share it.
var handedOut struct {
	sync.Mutex
	ports map[int]bool
}

// FreePort returns a loopback port free for both UDP and TCP (the
// sidecar's listeners share one), and never one it returned before.
func FreePort(t testing.TB) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if handedOut.ports[port] {
			continue
		}
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			u.Close()
			if handedOut.ports == nil {
				handedOut.ports = map[int]bool{}
			}
			handedOut.ports[port] = true
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// Sidecar is a running dot-sidecar process on loopback ports of its own.
type Sidecar struct {
	*testkit.Process
	DNS   string // 127.0.0.1:PORT
	Admin string // 127.0.0.1:PORT
}

// Start runs Binary with env (after the defaults, so env wins) on loopback
// ports of its own, waits for /startupz, and stops it when the test ends.
func Start(t testing.TB, env ...string) *Sidecar {
	t.Helper()
	bin := Binary(t)
	dnsPort, adminPort := FreePort(t), FreePort(t)
	s := &Sidecar{
		DNS:   fmt.Sprintf("127.0.0.1:%d", dnsPort),
		Admin: fmt.Sprintf("127.0.0.1:%d", adminPort),
	}
	cmd := exec.Command(bin)
	cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"BIND_ADDRESS=127.0.0.1",
		fmt.Sprintf("BIND_PORT=%d", dnsPort),
		"ADMIN_ADDRESS=" + s.Admin,
		"SHUTDOWN_LAMEDUCK=0s",
	}, env...)
	s.Process = testkit.StartProcess(t, "dot-sidecar", cmd)
	testkit.WaitFor(t, "dot-sidecar's /startupz", StartTimeout, func() error {
		if s.Exited() {
			return testkit.Permanent(fmt.Errorf("exited before it was started: %v\n%s", s.Err(), s.Stderr))
		}
		if code, body := s.Get("/startupz"); code != http.StatusOK {
			return errors.New(body)
		}
		return nil
	})
	return s
}

// Get fetches an admin path; code 0 means no HTTP answer.
func (s *Sidecar) Get(path string) (code int, body string) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + s.Admin + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
