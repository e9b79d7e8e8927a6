package bintest

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func TestShellCommand(t *testing.T) {
	got := ShellCommand("${VERSION}", "/out/dot-sidecar")
	want := `CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/dot-sidecar ./sidecar`
	if got != want {
		t.Errorf("ShellCommand =\n%s\nwant\n%s", got, want)
	}
}

// TestBinary: built once, in a directory any UID can enter, and stamped
// with TestVersion.
func TestBinary(t *testing.T) {
	bin := Binary(t)
	if again := Binary(t); again != bin {
		t.Errorf("second Binary = %s, want the first build %s", again, bin)
	}
	for _, p := range []string{bin, filepath.Dir(bin)} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o005 != 0o005 {
			t.Errorf("%s mode %v: other UIDs cannot run the binary", p, fi.Mode())
		}
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "dot-sidecar "+TestVersion {
		t.Errorf("%s version = %q (%v), want dot-sidecar %s", bin, out, err, TestVersion)
	}
}

func TestStart(t *testing.T) {
	up := dnstest.New(t, dnstest.Options{})
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, up.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	s := Start(t, fmt.Sprintf("UPSTREAMS=tls://%s#%s", up.Addr, up.ServerName), "TLS_CA_FILE="+ca)
	if code, body := s.Get("/livez"); code != http.StatusOK {
		t.Errorf("/livez: %d %s", code, body)
	}
	m := new(dns.Msg)
	m.SetQuestion("start.test.", dns.TypeA)
	r, _, err := (&dns.Client{Timeout: 5 * time.Second}).Exchange(m, s.DNS)
	if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("query through the started sidecar: %v %v", r, err)
	}
	if err := s.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := s.Wait(t, 10*time.Second); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}

// TestFreePortNeverRepeats: the kernel hands out a port just closed again
// as readily as any other (a few hundred ports in 2000 draws from about
// 7000 come up twice), so FreePort must remember the ones it gave: 200 of
// them would share one most of the time otherwise.
func TestFreePortNeverRepeats(t *testing.T) {
	seen := map[int]bool{}
	for range 200 {
		p := FreePort(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}

func TestStartFailsFast(t *testing.T) {
	// Built first (the package's tests share one build, made by the first
	// that asks): the time is Start's, not the compiler's.
	Binary(t)
	ft := &fatalT{TB: t}
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		Start(ft, "BIND_PORT=70000")
	}()
	<-done
	if !strings.Contains(ft.msg, "exited before it was started") || !strings.Contains(ft.msg, "BIND_PORT") {
		t.Errorf("Start with a bad setting failed with %q, want the exit and the sidecar's message", ft.msg)
	}
	if d := time.Since(start); d > StartTimeout/2 {
		t.Errorf("Start took %v to notice the sidecar exited", d)
	}
}

// fatalT records a Fatal and ends the goroutine, as testing.T does, while
// the rest (Cleanup, Helper, TempDir) goes to the real test.
type fatalT struct {
	testing.TB
	msg string
}

func (f *fatalT) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fatalT) Fatal(args ...any) {
	f.msg = fmt.Sprint(args...)
	runtime.Goexit()
}
