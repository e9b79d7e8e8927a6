package iptables

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
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
	os.Exit(m.Run())
}

// helperServe answers every query over UDP and TCP with one TXT record naming
// its UID, the transport and the client's address as the server sees it. It
// first tries to bind the probe address and reports "probe: ok" or
// "probe: EACCES" (or the error), then "ready" once both listeners serve, and
// stops when its stdin closes.
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
	pc, err := net.ListenPacket("udp4", addr)
	if err != nil {
		fmt.Printf("error: %v\n", err)
		return 1
	}
	ln, err := net.Listen("tcp4", addr)
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
	started.Wait()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, s := range servers {
		_ = s.Shutdown()
	}
	return 0
}

// helperQuery sends one TXT query and prints "answer: TEXT" or "error: ...".
func helperQuery() int {
	c := dns.Client{Net: os.Getenv(helperNetEnv), Timeout: 3 * time.Second}
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

// dnsServer is a running helperServe.
type dnsServer struct {
	probe string // what the probe bind reported
}

// startDNSServer runs helperServe in the namespace through wrap (setpriv ...)
// and returns once it serves; it is stopped when the test ends.
func startDNSServer(t *testing.T, n *netns, bin string, wrap []string, addr, probe string) dnsServer {
	t.Helper()
	argv := append(append([]string{"netns", "exec", n.name}, wrap...), bin)
	cmd := exec.Command("ip", argv...)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), helperNoExitDelay, helperEnv + "=serve", helperAddrEnv + "=" + addr, helperProbeEnv + "=" + probe}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default: // nobody reads any more; keep draining
			}
		}
		close(lines)
		exited <- cmd.Wait()
	}()
	t.Cleanup(func() {
		stdin.Close() // EOF: the helper shuts down and exits
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("DNS helper exited with %v; stderr: %s", err, stderr.String())
			}
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("DNS helper did not stop within 10s of its stdin closing")
			<-exited
		}
	})
	var s dnsServer
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("DNS helper exited before serving; stderr: %s", stderr.String())
			}
			switch {
			case l == "ready":
				return s
			case strings.HasPrefix(l, "probe: "):
				s.probe = strings.TrimPrefix(l, "probe: ")
			default:
				t.Fatalf("DNS helper: %s; stderr: %s", l, stderr.String())
			}
		case <-deadline:
			t.Fatalf("DNS helper not serving after 20s; stderr: %s", stderr.String())
		}
	}
}

// query runs helperQuery in the namespace; it returns the answer's text, or
// the error line with ok false.
func query(t *testing.T, n *netns, bin, network, addr string) (text string, ok bool) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", n.name, bin)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), helperNoExitDelay, helperEnv + "=query", helperAddrEnv + "=" + addr, helperNetEnv + "=" + network}
	out, err := cmd.Output()
	line := strings.TrimSpace(string(out))
	if answer, found := strings.CutPrefix(line, "answer: "); found && err == nil {
		return answer, true
	}
	if !strings.HasPrefix(line, "error: ") {
		t.Fatalf("DNS query helper: %v, output %q", err, out)
	}
	return line, false
}
