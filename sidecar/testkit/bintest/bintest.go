// Package bintest builds the dot-sidecar binary from this tree and runs it
// the way an operator would, for the end-to-end test packages under
// sidecar/e2e: each builds the binary once in TestMain, then starts it with
// settings in its environment and waits for /startupz.
package bintest

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// MainWithBinary builds ./sidecar into a temporary directory, stores its
// path in *binary, runs the tests and removes it. Use it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(bintest.MainWithBinary(m, &binary)) }
func MainWithBinary(m *testing.M, binary *string) int {
	dir, err := os.MkdirTemp("", "dot-sidecar-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	*binary = filepath.Join(dir, "dot-sidecar")
	build := exec.Command(goTool(), "build", "-o", *binary, sidecarDir())
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building dot-sidecar:", err)
		return 1
	}
	return m.Run()
}

// sidecarDir is the main package's directory, found from this file so that
// every test package builds the same thing whatever its depth.
func sidecarDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func goTool() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// FreePort returns a loopback port free for both UDP and TCP: the
// sidecar's listeners share one.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		u, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		if err == nil {
			u.Close()
			return port
		}
	}
	t.Fatal("no free port")
	return 0
}

// Buffer collects a process's output while tests read it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Sidecar is a running dot-sidecar process.
type Sidecar struct {
	Cmd    *exec.Cmd
	DNS    string // 127.0.0.1:PORT
	Admin  string // 127.0.0.1:PORT
	Stdout *Buffer
	Stderr *Buffer
	Exited chan struct{} // closed when the process has exited
	Err    error         // its exit status, once Exited is closed
	ExitAt time.Time
}

// Start runs binary on loopback ports of its own with env (after the
// defaults, so env wins), waits for /startupz and kills it at cleanup.
func Start(t testing.TB, binary string, env ...string) *Sidecar {
	t.Helper()
	dnsPort, adminPort := FreePort(t), FreePort(t)
	s := &Sidecar{
		DNS:    fmt.Sprintf("127.0.0.1:%d", dnsPort),
		Admin:  fmt.Sprintf("127.0.0.1:%d", adminPort),
		Stdout: new(Buffer),
		Stderr: new(Buffer),
		Exited: make(chan struct{}),
	}
	s.Cmd = exec.Command(binary)
	s.Cmd.Env = append([]string{
		"PATH=" + os.Getenv("PATH"),
		"BIND_ADDRESS=127.0.0.1",
		fmt.Sprintf("BIND_PORT=%d", dnsPort),
		"ADMIN_ADDRESS=" + s.Admin,
		"SHUTDOWN_LAMEDUCK=0s",
	}, env...)
	s.Cmd.Stdout, s.Cmd.Stderr = s.Stdout, s.Stderr
	if err := s.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.Err = s.Cmd.Wait()
		s.ExitAt = time.Now()
		close(s.Exited)
	}()
	t.Cleanup(func() {
		_ = s.Cmd.Process.Kill()
		<-s.Exited
		if t.Failed() {
			t.Logf("dot-sidecar stderr:\n%s", s.Stderr)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _ := s.Get("/startupz"); code == http.StatusOK {
			return s
		}
		select {
		case <-s.Exited:
			t.Fatalf("dot-sidecar exited before it was started: %v\n%s", s.Err, s.Stderr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dot-sidecar not started after 10s\n%s", s.Stderr)
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
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

// WaitExit waits for the process to exit and returns its status.
func (s *Sidecar) WaitExit(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case <-s.Exited:
		return s.Err
	case <-time.After(timeout):
		t.Fatalf("dot-sidecar still running %s later", timeout)
		return nil
	}
}
