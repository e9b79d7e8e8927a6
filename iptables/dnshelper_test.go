package iptables

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// The test binary doubles as a small DNS server and client that the node-mode
// tests start inside network namespaces, the server as a non-root UID without
// capabilities, as the node's dot-sidecar runs. A helper process is chosen by
// the environment, before any test runs.
const (
	helperEnv      = "DOT_SIDECAR_TEST_HELPER"       // serve | query
	helperAddrEnv  = "DOT_SIDECAR_TEST_HELPER_ADDR"  // serve: listen address; query: server
	helperProbeEnv = "DOT_SIDECAR_TEST_HELPER_PROBE" // serve: an address to try binding first
	helperNetEnv   = "DOT_SIDECAR_TEST_HELPER_NET"   // query: udp | tcp
	helperPortEnv  = "DOT_SIDECAR_TEST_HELPER_PORT"  // query: source port (default: the kernel's choice)
	// A binary built with -race sleeps a second before exiting, by default.
	helperNoExitDelay = "GORACE=atexit_sleep_ms=0"
)

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "serve":
		os.Exit(helperServe())
	case "query":
		os.Exit(helperQuery())
	}
	testkit.Main(m)
}

// helperServe answers every query over UDP and TCP with one TXT record naming
// its UID, the transport and the client's address as the server sees it. It
// first tries to bind the probe address and reports "probe: ok" or
// "probe: EACCES" (or the error), then "ready" once both listeners serve, and
// stops on SIGTERM.
func helperServe() int {
	addr := os.Getenv(helperAddrEnv)
	if probe := os.Getenv(helperProbeEnv); probe != "" {
		pc, err := net.ListenPacket("udp4", probe)
		switch {
		case err == nil:
			pc.Close()
			fmt.Println("probe: ok")
		case errors.Is(err, syscall.EACCES):
			fmt.Println("probe: EACCES")
		default:
			fmt.Printf("probe: %v\n", err)
		}
	}
	handler := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if len(r.Question) == 1 {
			m.Answer = append(m.Answer, &dns.TXT{
				Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET},
				Txt: []string{fmt.Sprintf("uid=%d proto=%s client=%s", os.Getuid(), w.RemoteAddr().Network(), w.RemoteAddr())},
			})
		}
		_ = w.WriteMsg(m)
	})
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		fmt.Printf("error: %v\n", err)
		return 1
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Printf("error: %v\n", err)
		return 1
	}
	var started sync.WaitGroup
	started.Add(2)
	servers := []*dns.Server{
		{PacketConn: pc, Handler: handler, NotifyStartedFunc: started.Done},
		{Listener: ln, Handler: handler, NotifyStartedFunc: started.Done},
	}
	for _, s := range servers {
		go func() {
			if err := s.ActivateAndServe(); err != nil {
				fmt.Printf("error: %v\n", err)
			}
		}()
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	started.Wait()
	fmt.Println("ready")
	<-stop
	for _, s := range servers {
		_ = s.Shutdown()
	}
	return 0
}

// helperQuery sends one TXT query, from the source port helperPortEnv
// names if set, and prints "answer: TEXT" or "error: ...".
func helperQuery() int {
	c := dns.Client{Net: os.Getenv(helperNetEnv), Timeout: 3 * time.Second}
	if p := os.Getenv(helperPortEnv); p != "" {
		port, err := strconv.Atoi(p)
		if err != nil {
			fmt.Printf("error: %s=%q: %v\n", helperPortEnv, p, err)
			return 1
		}
		c.Dialer = &net.Dialer{Timeout: c.Timeout, LocalAddr: &net.UDPAddr{Port: port}}
		if c.Net == "tcp" {
			c.Dialer.LocalAddr = &net.TCPAddr{Port: port}
		}
	}
	q := new(dns.Msg)
	q.SetQuestion("node-local.test.", dns.TypeTXT)
	r, _, err := c.Exchange(q, os.Getenv(helperAddrEnv))
	if err != nil {
		fmt.Printf("error: %v\n", err)
		return 1
	}
	if len(r.Answer) != 1 {
		fmt.Printf("error: %d answers, rcode %s\n", len(r.Answer), dns.RcodeToString[r.Rcode])
		return 1
	}
	txt, ok := r.Answer[0].(*dns.TXT)
	if !ok || len(txt.Txt) != 1 {
		fmt.Printf("error: unexpected answer %v\n", r.Answer[0])
		return 1
	}
	fmt.Printf("answer: %s\n", txt.Txt[0])
	return 0
}

// helperBinary copies the test binary where any UID can run it (go test
// builds it in a directory only its owner can enter).
func helperBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "dot-sidecar-helper-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(dir, "helper.test")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// startDNSServer runs helperServe in the namespace through wrap (setpriv ...)
// and returns, once it serves, what its probe bind reported. It is stopped
// when the test ends, and must then exit cleanly.
func startDNSServer(t *testing.T, n netns, bin string, wrap []string, addr, probe string) (probed string) {
	t.Helper()
	cmd := n.Command(context.Background(), append(append([]string{}, wrap...), bin)...)
	cmd.Env = append(cmd.Env, helperNoExitDelay, helperEnv+"=serve", helperAddrEnv+"="+addr, helperProbeEnv+"="+probe)
	p := testkit.StartProcess(t, "DNS helper", cmd)
	t.Cleanup(func() { // before StartProcess's own, which finds it stopped
		if err := p.Stop(testkit.StopGrace); err != nil || p.Err() != nil {
			t.Errorf("DNS helper: stop: %v, exit status %v", err, p.Err())
		}
	})
	testkit.WaitFor(t, "the DNS helper to serve", 20*time.Second, func() error {
		out := p.Stdout.String()
		if strings.Contains(out, "error: ") || p.Exited() {
			return testkit.Permanent(fmt.Errorf("DNS helper failed: %s", p.Output()))
		}
		if !strings.HasSuffix(out, "ready\n") {
			return fmt.Errorf("not serving yet: %q", out)
		}
		return nil
	})
	for _, l := range strings.Split(p.Stdout.String(), "\n") {
		if v, ok := strings.CutPrefix(l, "probe: "); ok {
			probed = v
		}
	}
	return probed
}

// query runs helperQuery in the namespace as root; it returns the answer's
// text, or the error line with ok false.
func query(t *testing.T, n netns, bin, network, addr string) (text string, ok bool) {
	t.Helper()
	return queryFrom(t, n, bin, nil, network, addr, 0)
}

// queryFrom is query through wrap (setpriv ...), from source port port
// unless it is 0.
func queryFrom(t *testing.T, n netns, bin string, wrap []string, network, addr string, port int) (text string, ok bool) {
	t.Helper()
	env := []string{helperNoExitDelay, helperEnv + "=query", helperAddrEnv + "=" + addr, helperNetEnv + "=" + network}
	if port != 0 {
		env = append(env, helperPortEnv+"="+strconv.Itoa(port))
	}
	r := n.Run(env, append(append([]string{}, wrap...), bin)...)
	line := strings.TrimSpace(r.Stdout)
	if answer, found := strings.CutPrefix(line, "answer: "); found && r.Err == nil {
		return answer, true
	}
	if !strings.HasPrefix(line, "error: ") {
		t.Fatalf("DNS query helper: %v", r)
	}
	return line, false
}
