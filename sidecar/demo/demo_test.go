package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
)

func TestMain(m *testing.M) { testkit.Main(m) }

// printed is what the demo told the operator to do, parsed from its output
// the way a shell would read the lines.
type printed struct {
	settings []string   // VAR=value, for the sidecar's environment
	pin      string     // the value of the TLS_PINS line
	sidecar  [][]string // kdig command lines against the sidecar
	direct   []string   // the kdig command line against the upstream
}

// demo is the demo's run function going in process.
type demo struct {
	out    printed
	stderr *testkit.Buffer
	cancel context.CancelFunc
	done   chan error
}

// startDemo runs the demo with args and returns once it has printed its
// instructions (its last line), stopping it at cleanup.
func startDemo(t *testing.T, args ...string) *demo {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	d := &demo{stderr: new(testkit.Buffer), cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := run(ctx, args, pw, d.stderr)
		pw.Close()
		d.done <- err
	}()
	t.Cleanup(func() {
		cancel()
		<-d.done
	})
	lines := make(chan []string, 1)
	go func() {
		var all []string
		sent := false
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			all = append(all, sc.Text())
			if strings.HasPrefix(sc.Text(), "Ctrl-C") && !sent {
				lines <- all
				sent = true
			}
		}
		if !sent {
			lines <- all
		}
	}()
	select {
	case all := <-lines:
		d.out = parsePrinted(t, all)
	case err := <-d.done:
		t.Fatalf("demo exited before printing its instructions: %v\n%s", err, d.stderr)
	case <-time.After(10 * time.Second):
		t.Fatalf("demo printed no instructions within 10s\n%s", d.stderr)
	}
	return d
}

// stop ends the demo as Ctrl-C does and returns its error.
func (d *demo) stop(t *testing.T) error {
	t.Helper()
	d.cancel()
	select {
	case err := <-d.done:
		d.done <- err // for the cleanup
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("demo still running 5s after it was stopped")
		return nil
	}
}

func parsePrinted(t *testing.T, lines []string) printed {
	t.Helper()
	var p printed
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if i := strings.Index(l, " #"); i >= 0 {
			l = strings.TrimSpace(l[:i])
		}
		switch {
		case strings.HasSuffix(l, " go run ./sidecar"):
			p.settings = shellWords(t, strings.TrimSuffix(l, " go run ./sidecar"))
		case strings.HasPrefix(l, "TLS_PINS="):
			w := shellWords(t, l)
			if len(w) != 1 {
				t.Fatalf("pin line is not one word: %q", l)
			}
			p.pin = strings.TrimPrefix(w[0], "TLS_PINS=")
		case strings.HasPrefix(l, "kdig ") && strings.Contains(l, "+tls"):
			p.direct = shellWords(t, l)
		case strings.HasPrefix(l, "kdig "):
			p.sidecar = append(p.sidecar, shellWords(t, l))
		}
	}
	if len(p.settings) == 0 || p.pin == "" || len(p.sidecar) == 0 || p.direct == nil {
		t.Fatalf("demo output lacks the settings, the pin, or kdig lines:\n%s", strings.Join(lines, "\n"))
	}
	for _, s := range p.settings {
		if k, _, ok := strings.Cut(s, "="); !ok || k != strings.ToUpper(k) {
			t.Fatalf("printed setting %q is not VAR=value", s)
		}
	}
	return p
}

// shellWords splits a command line as a POSIX shell does for the quoting
// the demo prints: words separated by spaces, single quotes, backslashes.
func shellWords(t *testing.T, line string) []string {
	t.Helper()
	var words []string
	var w strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quoted && c == '\'':
			quoted = false
		case quoted:
			w.WriteByte(c)
		case c == '\'':
			quoted, inWord = true, true
		case c == '\\' && i+1 < len(line):
			i++
			w.WriteByte(line[i])
			inWord = true
		case c == ' ':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		t.Fatalf("unterminated quote in %q", line)
	}
	if inWord {
		words = append(words, w.String())
	}
	return words
}

func (p printed) setting(t *testing.T, name string) string {
	t.Helper()
	for _, s := range p.settings {
		if v, ok := strings.CutPrefix(s, name+"="); ok {
			return v
		}
	}
	t.Fatalf("printed settings %q lack %s", p.settings, name)
	return ""
}

// kdigQuery is what a printed kdig line asks.
type kdigQuery struct {
	server   string // IP:PORT
	net      string // udp, tcp or tcp-tls
	caFile   string
	hostname string
	msg      *dns.Msg
}

func parseKdig(t *testing.T, words []string) kdigQuery {
	t.Helper()
	q := kdigQuery{net: "udp"}
	var host, port, name, qtype string
	for i := 1; i < len(words); i++ {
		w := words[i]
		switch {
		case strings.HasPrefix(w, "@"):
			host = w[1:]
		case w == "-p" && i+1 < len(words):
			i++
			port = words[i]
		case w == "+tcp":
			q.net = "tcp"
		case strings.HasPrefix(w, "+tls-ca="):
			q.net, q.caFile = "tcp-tls", strings.TrimPrefix(w, "+tls-ca=")
		case strings.HasPrefix(w, "+tls-hostname="):
			q.hostname = strings.TrimPrefix(w, "+tls-hostname=")
		case strings.HasPrefix(w, "+") || strings.HasPrefix(w, "-"):
			t.Fatalf("kdig line %q: option %s not understood by this test", words, w)
		case name == "":
			name = w
		default:
			qtype = w
		}
	}
	typ, ok := dns.StringToType[qtype]
	if host == "" || port == "" || name == "" || !ok {
		t.Fatalf("kdig line %q: want @IP -p PORT NAME TYPE", words)
	}
	q.server = net.JoinHostPort(host, port)
	q.msg = new(dns.Msg)
	q.msg.SetQuestion(dns.Fqdn(name), typ)
	return q
}

// exchange asks what the line asks, with a Go client.
func (q kdigQuery) exchange(t *testing.T) *dns.Msg {
	t.Helper()
	c := &dns.Client{Net: q.net, Timeout: 5 * time.Second}
	if q.net == "tcp-tls" {
		c.TLSConfig = &tls.Config{RootCAs: caPool(t, q.caFile), ServerName: q.hostname, MinVersion: tls.VersionTLS12}
	}
	r, _, err := c.Exchange(q.msg, q.server)
	if err != nil {
		t.Fatalf("%s query %s to %s: %v", q.net, q.msg.Question[0].String(), q.server, err)
	}
	return r
}

// want is the zone's own answer to the line's question.
func (q kdigQuery) want(t *testing.T) *dns.Msg {
	t.Helper()
	z, err := newZone()
	if err != nil {
		t.Fatal(err)
	}
	return z.answer(q.msg)
}

func sameAnswer(t *testing.T, what string, got, want *dns.Msg) {
	t.Helper()
	if got.Rcode != want.Rcode || !sameRecords(got.Answer, want.Answer) || !sameRecords(got.Ns, want.Ns) {
		t.Errorf("%s: got %s %v %v, want %s %v %v", what,
			dns.RcodeToString[got.Rcode], got.Answer, got.Ns, dns.RcodeToString[want.Rcode], want.Answer, want.Ns)
	}
}

// sameRecords compares records as a cache may give them: the same data,
// TTLs counted down but never above the zone's (a negative answer's SOA
// carries the negative TTL, RFC 2308 §5).
func sameRecords(got, want []dns.RR) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		g, w := dns.Copy(got[i]), dns.Copy(want[i])
		if g.Header().Ttl > w.Header().Ttl {
			return false
		}
		g.Header().Ttl, w.Header().Ttl = 0, 0
		if g.String() != w.String() {
			return false
		}
	}
	return true
}

// printedRecord matches rr as kdig prints it, with any TTL up to rr's: the
// sidecar's cache counts TTLs down.
func printedRecord(rr dns.RR) *regexp.Regexp {
	fields := strings.SplitN(rr.String(), "\t", 3)
	return regexp.MustCompile("(?m)^" + regexp.QuoteMeta(fields[0]) + "\t\\d+\t" + regexp.QuoteMeta(fields[2]) + "$")
}

// TestDemoThroughTheSidecar does what the demo prints: it starts the built
// sidecar with the printed settings and asks every printed question through
// it, over UDP and TCP, then with the printed pin, then ends the demo as
// Ctrl-C does and checks that its files are gone.
func TestDemoThroughTheSidecar(t *testing.T) {
	port := bintest.FreePort(t)
	d := startDemo(t, "--listen", "127.0.0.1:0", "--sidecar-port", strconv.Itoa(port))
	p := d.out
	if got := p.setting(t, "BIND_PORT"); got != strconv.Itoa(port) {
		t.Fatalf("printed BIND_PORT=%s, want the --sidecar-port %d", got, port)
	}
	sc := bintest.Start(t, p.settings...)

	nets := map[string]bool{}
	rcodes := map[int]bool{}
	for _, line := range p.sidecar {
		q := parseKdig(t, line)
		if _, qport, _ := net.SplitHostPort(q.server); qport != strconv.Itoa(port) {
			t.Fatalf("kdig line %q does not ask the sidecar's port %d", line, port)
		}
		want := q.want(t)
		sameAnswer(t, strings.Join(line, " "), q.exchange(t), want)
		nets[q.net], rcodes[want.Rcode] = true, true
	}
	if !nets["udp"] || !nets["tcp"] || !rcodes[dns.RcodeSuccess] || !rcodes[dns.RcodeNameError] {
		t.Errorf("the printed kdig lines cover protocols %v and rcodes %v; want UDP, TCP, an answer and an NXDOMAIN", nets, rcodes)
	}

	t.Run("direct", func(t *testing.T) {
		q := parseKdig(t, p.direct)
		if q.caFile != p.setting(t, "TLS_CA_FILE") {
			t.Errorf("direct line trusts %s, the settings %s", q.caFile, p.setting(t, "TLS_CA_FILE"))
		}
		sameAnswer(t, strings.Join(p.direct, " "), q.exchange(t), q.want(t))
	})

	t.Run("kdig", func(t *testing.T) {
		tools := testkit.RequireTools(t, "kdig")
		for _, line := range append(append([][]string(nil), p.sidecar...), p.direct) {
			out, err := exec.Command(tools["kdig"], line[1:]...).CombinedOutput()
			if err != nil {
				t.Fatalf("%q: %v\n%s", line, err, out)
			}
			want := parseKdig(t, line).want(t)
			if status := "status: " + dns.RcodeToString[want.Rcode]; !strings.Contains(string(out), status) {
				t.Errorf("%q printed no %q:\n%s", line, status, out)
			}
			for _, rr := range append(append([]dns.RR(nil), want.Answer...), want.Ns...) {
				if !printedRecord(rr).Match(out) {
					t.Errorf("%q printed no %q:\n%s", line, rr, out)
				}
			}
		}
	})

	t.Run("pin", func(t *testing.T) {
		// The printed pin is the key the upstream serves...
		q := parseKdig(t, p.direct)
		conn, err := tls.Dial("tcp", q.server, &tls.Config{ServerName: q.hostname, RootCAs: caPool(t, q.caFile), MinVersion: tls.VersionTLS12})
		if err != nil {
			t.Fatal(err)
		}
		leaf := conn.ConnectionState().PeerCertificates[0]
		conn.Close()
		if got := testpki.Pin(leaf); got != p.pin {
			t.Errorf("printed pin %s; the upstream's key has %s", p.pin, got)
		}
		// ...and a sidecar started with it, on the printed port, answers.
		if err := sc.Cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-sc.Done()
		bintest.Start(t, append(append([]string(nil), p.settings...), "TLS_PINS="+p.pin)...)
		for _, line := range p.sidecar {
			q := parseKdig(t, line)
			sameAnswer(t, "pinned: "+strings.Join(line, " "), q.exchange(t), q.want(t))
		}
	})

	if err := d.stop(t); err != nil {
		t.Fatalf("demo stopped with %v", err)
	}
	dir := filepath.Dir(p.setting(t, "TLS_CA_FILE"))
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after Ctrl-C, %s is still there (%v)", dir, err)
	}
	if !strings.Contains(d.stderr.String(), "removed "+dir) {
		t.Errorf("demo did not say it removed %s:\n%s", dir, d.stderr)
	}
}

func caPool(t *testing.T, file string) *x509.CertPool {
	t.Helper()
	pem, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("%s holds no certificate", file)
	}
	return pool
}
