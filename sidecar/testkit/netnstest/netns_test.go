package netnstest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

func TestMain(m *testing.M) { testkit.Main(m) }

func TestNewIsolatedAndRemoved(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("make", func(t *testing.T) {
		ns := New(t)
		name = ns.Name
		other := New(t)
		if other.Name == ns.Name {
			t.Fatalf("two namespaces named %s", ns.Name)
		}
		if !strings.Contains(ns.Name, "TestNewIsolatedAndRemoved-make") {
			t.Errorf("name %q does not say which test made it", ns.Name)
		}
		// Loopback is up, and an address added inside stays inside.
		if out := ns.Must(t, "ip", "-o", "link", "show", "dev", "lo"); !strings.Contains(out, "LOWER_UP") {
			t.Errorf("lo not up: %s", out)
		}
		ns.Must(t, "ip", "addr", "add", "198.51.100.77/32", "dev", "lo")
		if out := other.Must(t, "ip", "-o", "addr", "show"); strings.Contains(out, "198.51.100.77") {
			t.Errorf("an address added in %s shows in %s:\n%s", ns, other, out)
		}
		if ifs, err := net.InterfaceAddrs(); err != nil || strings.Contains(fmt.Sprint(ifs), "198.51.100.77") {
			t.Errorf("an address added in %s shows in the test's own namespace: %v %v", ns, ifs, err)
		}
	})
	if _, err := os.Stat("/run/netns/" + name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("namespace %s still there after its test: %v", name, err)
	}
}

func TestRunAsUserAndCodes(t *testing.T) {
	t.Parallel()
	ns := New(t)
	for flag, want := range map[string]string{"-u": "10053", "-g": "10053", "-G": "10053"} {
		if got := strings.TrimSpace(ns.Must(t, append(AsUser(10053), "id", flag)...)); got != want {
			t.Errorf("id %s as AsUser(10053) = %q, want %q", flag, got, want)
		}
	}
	caps := ns.Must(t, append(AsUser(10053), "grep", "^CapEff", "/proc/self/status")...)
	if !strings.HasSuffix(strings.TrimSpace(caps), "0000000000000000") {
		t.Errorf("AsUser keeps capabilities: %s", caps)
	}
	if r := ns.Run([]string{"CODE=3"}, "sh", "-c", `echo out; echo err >&2; exit "$CODE"`); r.Code() != 3 || r.Stdout != "out\n" || r.Stderr != "err\n" {
		t.Errorf("Run = %v, code %d; want exit 3 with out and err", r, r.Code())
	}
	if r := ns.Run(nil, "/nonexistent/program"); r.Code() == 0 || r.Err == nil {
		t.Errorf("a missing program: %v", r)
	}
	// Only BaseEnv and what the caller adds reach the command.
	if got, want := ns.Run([]string{"A=1"}, "env").Stdout, strings.Join(append(BaseEnv, "A=1"), "\n")+"\n"; got != want {
		t.Errorf("environment in the namespace:\n%s\nwant only\n%s", got, want)
	}
}

func TestWriteEtc(t *testing.T) {
	t.Parallel()
	ns := New(t)
	const hosts = "192.0.2.9 only-in-the-namespace\n"
	ns.WriteEtc(t, "hosts", hosts)
	if got := ns.Must(t, "cat", "/etc/hosts"); got != hosts {
		t.Errorf("/etc/hosts in the namespace: %q, want %q", got, hosts)
	}
	if b, err := os.ReadFile("/etc/hosts"); err != nil || strings.Contains(string(b), "only-in-the-namespace") {
		t.Errorf("the machine's /etc/hosts changed (%v)", err)
	}
}

// TestDoAndVeth joins two namespaces and sends a datagram across from Go
// code running in each, over IPv4 and IPv6.
func TestDoAndVeth(t *testing.T) {
	t.Parallel()
	a, b := New(t), New(t)
	Veth(t, End{NS: a, Name: "eth0", Addrs: []string{"198.51.100.1/24", "2001:db8:5::1/64"}},
		End{NS: b, Name: "eth0", Addrs: []string{"198.51.100.2/24", "2001:db8:5::2/64"}})
	for _, tc := range []struct{ from, to string }{{"198.51.100.1", "198.51.100.2"}, {"2001:db8:5::1", "2001:db8:5::2"}} {
		var srv *net.UDPConn
		b.Do(t, func() error {
			var err error
			srv, err = net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(tc.to)})
			return err
		})
		defer srv.Close()
		var cl *net.UDPConn
		a.Do(t, func() error {
			var err error
			cl, err = net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP(tc.from)}, srv.LocalAddr().(*net.UDPAddr))
			return err
		})
		defer cl.Close()
		if _, err := cl.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		_ = srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 8)
		n, peer, err := srv.ReadFromUDP(buf)
		if err != nil || string(buf[:n]) != "ping" || !peer.IP.Equal(net.ParseIP(tc.from)) {
			t.Errorf("%s -> %s: got %q from %v (%v)", tc.from, tc.to, buf[:n], peer, err)
		}
	}
	// The address is not the test's own: binding it here fails.
	if c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP("198.51.100.2")}); err == nil {
		c.Close()
		t.Error("198.51.100.2 can be bound in the test's own namespace")
	}
}

func TestDoReportsErrors(t *testing.T) {
	t.Parallel()
	ns := New(t)
	ft := &fakeT{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ns.Do(ft, func() error { return errors.New("boom") })
	}()
	<-done
	if !strings.Contains(ft.msg, "boom") || !strings.Contains(ft.msg, ns.Name) {
		t.Errorf("Do's failure %q does not carry f's error and the namespace", ft.msg)
	}
}

// fakeT records a Fatalf and ends the goroutine, as testing.T does.
type fakeT struct {
	testing.TB
	msg string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func TestProcessInNamespace(t *testing.T) {
	t.Parallel()
	ns := New(t)
	ns.Must(t, "ip", "addr", "add", "192.0.2.5/32", "dev", "lo")
	// A program that sees the namespace's address, then waits for SIGTERM
	// (its trap set before it prints anything the test waits for).
	p := testkit.StartProcess(t, "waiter", ns.Command(context.Background(), "sh", "-c",
		`trap 'echo term; exit 0' TERM; ip -o addr show dev lo; while :; do sleep 0.05; done`))
	testkit.WaitFor(t, "the waiter to print its addresses", 10*time.Second, func() error {
		if !strings.Contains(p.Stdout.String(), "192.0.2.5") {
			return fmt.Errorf("output so far %q", p.Output())
		}
		return nil
	})
	if err := p.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if p.Err() != nil || !strings.HasSuffix(p.Stdout.String(), "term\n") {
		t.Errorf("stopped with %v, output %q; want exit 0 after its TERM trap", p.Err(), p.Output())
	}
}

func TestNATTable(t *testing.T) {
	t.Parallel()
	testkit.RequireTools(t, "iptables-nft-save", "iptables-nft-restore")
	ns := New(t)
	empty := ns.NATTable(t, "iptables-nft-save")
	if r := ns.RunInput(nil, "*nat\n:T_CHAIN - [0:0]\n-A OUTPUT -p tcp --dport 9 -j T_CHAIN\nCOMMIT\n", "iptables-nft-restore", "--noflush"); r.Err != nil {
		t.Fatal(r)
	}
	got := ns.NATTable(t, "iptables-nft-save")
	for _, want := range []string{"*nat", ":T_CHAIN -", "-A OUTPUT -p tcp -m tcp --dport 9 -j T_CHAIN", "COMMIT"} {
		if !strings.Contains(got, want+"\n") && !strings.HasSuffix(got, want) {
			t.Errorf("NATTable lacks %q:\n%s", want, got)
		}
	}
	// iptables-save prints a comment header and chain counters ([0:0]).
	if strings.Contains(got, "#") || strings.Contains(got, "[0:0]") || got == empty {
		t.Errorf("NATTable kept comments or counters, or missed the change:\n%s", got)
	}
	if again := ns.NATTable(t, "iptables-nft-save"); again != got {
		t.Errorf("two dumps of the same state differ:\n%s\n---\n%s", got, again)
	}
}

// TestDialContext: a connection dialed from inside reaches an address only
// the namespace has, and is usable from the test's goroutine.
func TestDialContext(t *testing.T) {
	t.Parallel()
	ns := New(t)
	ns.Must(t, "ip", "addr", "add", "192.0.2.77/32", "dev", "lo")
	var l net.Listener
	ns.Do(t, func() error {
		var err error
		l, err = net.Listen("tcp", "192.0.2.77:0")
		return err
	})
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			_, _ = c.Write([]byte("hello"))
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := make([]byte, 5)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "hello" {
		t.Errorf("read %q, %v", b, err)
	}
	var d net.Dialer
	if c, err := d.DialContext(ctx, "tcp", l.Addr().String()); err == nil {
		c.Close()
		t.Error("the namespace's address is reachable from the test's own namespace")
	}
}
