package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
)

// trustMount is a directory of trust files updated the way operators and
// Kubernetes update them.
type trustMount struct {
	dir   string
	kind  string // "rename" or "symlink swap"
	gen   int
	files map[string][]byte
}

const (
	swapRename  = "rename"
	swapSymlink = "symlink swap"
)

var swapKinds = []string{swapRename, swapSymlink}

func newMount(t *testing.T, kind string) *trustMount {
	return &trustMount{dir: t.TempDir(), kind: kind, files: map[string][]byte{}}
}

func (m *trustMount) path(name string) string { return filepath.Join(m.dir, name) }

// write replaces file name with data. rename: write a temporary file and
// rename it over the old one. symlink swap: what kubelet's AtomicWriter
// does for Secret and ConfigMap volumes: every file of the volume in a new
// timestamped directory, a new `..data` symlink to it renamed over the old
// one, each visible name a symlink through `..data`, the old directory
// removed.
func (m *trustMount) write(t *testing.T, name string, data []byte) {
	t.Helper()
	m.files[name] = data
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	switch m.kind {
	case swapRename:
		tmp := m.path("." + name + ".tmp")
		must(os.WriteFile(tmp, data, 0o644))
		must(os.Rename(tmp, m.path(name)))
	case swapSymlink:
		old, _ := os.Readlink(m.path("..data"))
		m.gen++
		ts := fmt.Sprintf("..2025_06_01_12_00_%02d.%09d", m.gen, m.gen)
		must(os.Mkdir(m.path(ts), 0o755))
		for n, d := range m.files {
			must(os.WriteFile(filepath.Join(m.path(ts), n), d, 0o644))
		}
		must(os.Symlink(ts, m.path("..data_tmp")))
		must(os.Rename(m.path("..data_tmp"), m.path("..data")))
		for n := range m.files {
			if _, err := os.Lstat(m.path(n)); os.IsNotExist(err) {
				must(os.Symlink(filepath.Join("..data", n), m.path(n)))
			}
		}
		if old != "" {
			must(os.RemoveAll(m.path(old)))
		}
	default:
		t.Fatalf("unknown swap kind %q", m.kind)
	}
}

// reloadRig is one DoT upstream behind a Group, its Trust built from files
// in a mount, and a TrustReloader watching them.
type reloadRig struct {
	srv   *dnstest.Server
	mnt   *trustMount
	trust *Trust
	d     *DoT
	g     *Group
	r     *TrustReloader
	rm    *ReloadMetrics
	// retired receives what each Group.Reverify the reloader calls returns.
	retired chan int
}

func newReloadRig(t *testing.T, kind string, watchCA, watchPins bool) *reloadRig {
	t.Helper()
	rr := &reloadRig{srv: dnstest.New(t, dnstest.Options{}), mnt: newMount(t, kind)}
	var src TrustSource
	if watchCA {
		rr.mnt.write(t, "ca.pem", rr.srv.CAPEM)
		src.CAFile = rr.mnt.path("ca.pem")
	}
	if watchPins {
		rr.mnt.write(t, "pins", []byte("# the leaf\n"+rr.srv.LeafPin+"\n"))
		src.PinsFile = rr.mnt.path("pins")
	}
	var err error
	if rr.trust, err = LoadTrust(src); err != nil {
		t.Fatal(err)
	}
	if !watchCA {
		// The server's CA, given rather than read from a file.
		rr.trust.Update(rr.srv.CAPool, rr.trust.load().pins)
	}
	m := NewMetrics(prometheus.NewRegistry())
	rr.d = newTestDoT(t, rr.srv, func(o *DoTOptions) { o.Trust, o.Metrics = rr.trust, m })
	g, err := NewGroup(testGroupOptions(GroupOptions{Upstreams: []Upstream{rr.d}, Logger: testLogger(), Metrics: m}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	rr.g = g
	rr.rm = NewReloadMetrics(prometheus.NewRegistry())
	rr.retired = make(chan int, 16)
	reverify := func() int {
		n := g.Reverify()
		rr.retired <- n
		return n
	}
	opts := ReloaderOptions{Trusts: []*Trust{rr.trust}, Interval: 20 * time.Millisecond, Reverify: reverify,
		Logger: testLogger(), Metrics: rr.rm}
	if rr.r, err = NewTrustReloader(opts); err != nil {
		t.Fatal(err)
	}
	return rr
}

// run starts the reloader's poll loop until the test ends.
func (rr *reloadRig) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		rr.r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func (rr *reloadRig) query(t *testing.T) error {
	t.Helper()
	q := packQuery(t, "reload.example.", 1)
	resp, err := rr.g.Exchange(ctxTimeout(t, answerTimeout), q)
	if err != nil {
		return err
	}
	return checkAnswer(resp, q)
}

// presentedChain is what the server presents on a new handshake now.
func presentedChain(t *testing.T, srv *dnstest.Server) []*x509.Certificate {
	t.Helper()
	// Test-only: we want whatever the server presents, trusted or not.
	c, err := tls.Dial("tcp", srv.Addr.String(), &tls.Config{ServerName: srv.ServerName, InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates
}

func pemOf(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
}

// A CA or pins file replaced on disk, by rename or by a Kubernetes symlink
// swap, is picked up by the poll; the open connection, which the new trust
// rejects, is retired and replaced by one verified under the new trust.
func TestTrustReloadSwap(t *testing.T) {
	tests := []struct {
		file string
		// rotate makes the server present a new certificate and returns the
		// trust file content that accepts it and rejects the old one.
		rotate func(t *testing.T, srv *dnstest.Server) []byte
	}{
		{TrustFileCA, func(t *testing.T, srv *dnstest.Server) []byte {
			srv.Behavior.SetCert(dnstest.CertOtherCA)
			chain := presentedChain(t, srv)
			return pemOf(chain[len(chain)-1]) // the foreign CA, sent after the leaf
		}},
		{TrustFilePins, func(t *testing.T, srv *dnstest.Server) []byte {
			srv.Behavior.SetCert(dnstest.CertOtherKey)
			return []byte(testpki.Pin(presentedChain(t, srv)[0]) + "\n")
		}},
	}
	for _, tt := range tests {
		for _, kind := range swapKinds {
			t.Run(tt.file+"/"+kind, func(t *testing.T) {
				rr := newReloadRig(t, kind, tt.file == TrustFileCA, tt.file == TrustFilePins)
				name := map[string]string{TrustFileCA: "ca.pem", TrustFilePins: "pins"}[tt.file]
				rr.run(t)
				if err := rr.query(t); err != nil {
					t.Fatal(err)
				}
				content := tt.rotate(t, rr.srv)
				// The server counts the look at its certificate once its side
				// of the handshake is done, which may be after ours.
				eventually(t, 2*time.Second, "the look at the new certificate to end", func() bool {
					return rr.srv.Handshakes() == 2 && rr.srv.Open() == 1
				})
				handshakes := rr.srv.Handshakes()
				if err := rr.query(t); err != nil {
					t.Fatalf("the open connection stopped serving before the trust changed: %v", err)
				}
				if rr.srv.Handshakes() != handshakes {
					t.Fatal("a new connection was made before the trust changed")
				}

				before := rr.trust.load()
				rr.mnt.write(t, name, content)
				eventually(t, 2*time.Second, "the reload", func() bool {
					return counterValue(rr.rm.Reloads.WithLabelValues(tt.file)) == 1
				})
				select {
				case n := <-rr.retired:
					if n != 1 {
						t.Fatalf("the reload retired %d connections, want 1", n)
					}
				case <-time.After(2 * time.Second):
					t.Fatal("the reload did not re-check the open connections")
				}
				if rr.trust.load() == before {
					t.Fatal("reload counted but the Trust was not updated")
				}
				// The old connection no longer passes: retired, it closes.
				eventually(t, 2*time.Second, "the old connection to close", func() bool { return rr.srv.Open() == 0 })
				if err := rr.query(t); err != nil {
					t.Fatalf("query under the new trust: %v", err)
				}
				if got := rr.srv.Handshakes() - handshakes; got != 1 {
					t.Errorf("%d new handshakes, want 1 (the replacement)", got)
				}
				if tt.file == TrustFilePins && counterValue(rr.d.m.pinFails) == 0 {
					t.Error("pin_failures_total did not count the connection the new pins reject")
				}
				if got := counterValue(rr.rm.Errors.WithLabelValues(tt.file)); got != 0 {
					t.Errorf("trust_reload_errors_total = %v, want 0", got)
				}
			})
		}
	}
}

// A change that cannot be used keeps the previous trust, counts one error
// per bad content, and shows in the failing gauge until a good file comes.
func TestTrustReloadMalformedKeepsOld(t *testing.T) {
	tests := []struct {
		name, file string
		bad        []byte // nil: remove the file
	}{
		{"CA garbage", TrustFileCA, []byte("not a certificate\n")},
		{"CA bad PEM block", TrustFileCA, []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")},
		{"CA empty", TrustFileCA, []byte{}},
		{"CA removed", TrustFileCA, nil},
		{"pins garbage", TrustFilePins, []byte("not-a-pin\n")},
		{"pins short", TrustFilePins, []byte("AAAA\n")},
		{"pins only comments", TrustFilePins, []byte("# nothing\n")},
		{"pins removed", TrustFilePins, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rr := newReloadRig(t, swapRename, tt.file == TrustFileCA, tt.file == TrustFilePins)
			name := map[string]string{TrustFileCA: "ca.pem", TrustFilePins: "pins"}[tt.file]
			if rr.r.Check() {
				t.Fatal("first check changed the trust the files were loaded into")
			}
			if err := rr.query(t); err != nil {
				t.Fatal(err)
			}
			before, handshakes := rr.trust.load(), rr.srv.Handshakes()
			if tt.bad == nil {
				if err := os.Remove(rr.mnt.path(name)); err != nil {
					t.Fatal(err)
				}
			} else {
				rr.mnt.write(t, name, tt.bad)
			}
			for range 3 { // the same bad content counts once
				if rr.r.Check() {
					t.Fatal("a bad file changed the trust")
				}
			}
			if rr.trust.load() != before {
				t.Fatal("the Trust changed")
			}
			if got := counterValue(rr.rm.Errors.WithLabelValues(tt.file)); got != 1 {
				t.Errorf("trust_reload_errors_total = %v, want 1", got)
			}
			if got := counterValue(rr.rm.Failing.WithLabelValues(tt.file)); got != 1 {
				t.Errorf("trust_reload_failing = %v, want 1", got)
			}
			if err := rr.query(t); err != nil {
				t.Fatalf("query after a bad trust file: %v", err)
			}
			if rr.srv.Handshakes() != handshakes {
				t.Error("the open connection was replaced after a bad trust file")
			}

			// A good file again: applied (the same trust, so nothing to
			// re-check), and the gauge clears.
			good := rr.srv.CAPEM
			if tt.file == TrustFilePins {
				good = []byte(rr.srv.LeafPin + "\n" + rr.srv.CAPin + "\n")
			}
			rr.mnt.write(t, name, good)
			rr.r.Check()
			if got := counterValue(rr.rm.Reloads.WithLabelValues(tt.file)); got != 1 {
				t.Errorf("trust_reloads_total = %v after the fix, want 1", got)
			}
			if got := counterValue(rr.rm.Failing.WithLabelValues(tt.file)); got != 0 {
				t.Errorf("trust_reload_failing = %v after the fix, want 0", got)
			}
			if err := rr.query(t); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Rewriting a file with the same trust (comments, order) re-checks nothing;
// a file that changed between start-up and the reloader's start is applied
// by the first check.
func TestTrustReloadSameTrustAndStart(t *testing.T) {
	t.Run("same trust", func(t *testing.T) {
		rr := newReloadRig(t, swapSymlink, true, true)
		before := rr.trust.load()
		rr.mnt.write(t, "pins", []byte("# reworded\n"+rr.srv.LeafPin+"  # leaf\n"))
		rr.mnt.write(t, "ca.pem", append([]byte("# bundle\n"), rr.srv.CAPEM...))
		if rr.r.Check() || rr.trust.load() != before || len(rr.retired) != 0 {
			t.Error("the same trust was applied again")
		}
		if got := counterValue(rr.rm.Reloads.WithLabelValues(TrustFilePins)); got != 1 {
			t.Errorf("trust_reloads_total{pins} = %v, want 1", got)
		}
	})
	t.Run("changed before start", func(t *testing.T) {
		srv := dnstest.New(t, dnstest.Options{})
		mnt := newMount(t, swapRename)
		mnt.write(t, "pins", []byte(srv.LeafPin+"\n"))
		trust, err := LoadTrust(TrustSource{PinsFile: mnt.path("pins")})
		if err != nil {
			t.Fatal(err)
		}
		mnt.write(t, "pins", []byte(srv.CAPin+"\n"))
		rm := NewReloadMetrics(prometheus.NewRegistry())
		r, err := NewTrustReloader(ReloaderOptions{Trusts: []*Trust{trust}, Interval: time.Hour, Logger: testLogger(), Metrics: rm})
		if err != nil {
			t.Fatal(err)
		}
		if !r.Check() {
			t.Fatal("first check did not apply a file changed since the Trust was built")
		}
		if p := trust.load().pins; len(p) != 1 || p[0] != srv.CAPinSum {
			t.Errorf("pins %x, want the CA pin", p)
		}
	})
}

func TestNewTrustReloaderValidates(t *testing.T) {
	base := func() ReloaderOptions {
		return ReloaderOptions{Trusts: []*Trust{NewTrust(nil, nil)}, Interval: time.Second, Logger: testLogger(),
			Metrics: NewReloadMetrics(prometheus.NewRegistry())}
	}
	tests := map[string]func(*ReloaderOptions){
		"nil trust":   func(o *ReloaderOptions) { o.Trusts = []*Trust{nil} },
		"no logger":   func(o *ReloaderOptions) { o.Logger = nil },
		"no metrics":  func(o *ReloaderOptions) { o.Metrics = nil },
		"negative":    func(o *ReloaderOptions) { o.Interval = -time.Second },
		"no interval": func(o *ReloaderOptions) { o.Interval = 0 },
	}
	for name, mod := range tests {
		o := base()
		mod(&o)
		if _, err := NewTrustReloader(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewTrustReloader(base()); err != nil {
		t.Errorf("valid options refused: %v", err)
	}
}

// Several Trusts, each from files of its own, are watched by one reloader
// the same way: a change applies to the Trust whose file changed, only the
// connections verified against that Trust are checked again, and the files
// that cannot be used are counted.
func TestTrustReloadSeveralTrusts(t *testing.T) {
	mnt := newMount(t, swapRename)
	m := NewMetrics(prometheus.NewRegistry())
	var (
		srvs   [2]*dnstest.Server
		trusts [2]*Trust
		dots   [2]*DoT
	)
	for i := range 2 {
		srvs[i] = dnstest.New(t, dnstest.Options{})
		name := fmt.Sprintf("pins%d", i)
		mnt.write(t, name, []byte(srvs[i].LeafPin+"\n"))
		tr, err := LoadTrust(TrustSource{PinsFile: mnt.path(name)})
		if err != nil {
			t.Fatal(err)
		}
		tr.Update(srvs[i].CAPool, tr.load().pins)
		trusts[i] = tr
		dots[i] = newTestDoT(t, srvs[i], func(o *DoTOptions) { o.Trust, o.Metrics = tr, m })
	}
	g, err := NewGroup(testGroupOptions(GroupOptions{Upstreams: []Upstream{dots[0], dots[1]}, Logger: testLogger(), Metrics: m}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	ask := func(i int) error {
		q := packQuery(t, "several.example.", dns.TypeA)
		resp, err := dots[i].Exchange(ctxTimeout(t, answerTimeout), q)
		if err != nil {
			return err
		}
		return checkAnswer(resp, q)
	}
	for i := range 2 {
		if err := ask(i); err != nil {
			t.Fatalf("upstream %d: %v", i, err)
		}
	}
	rm := NewReloadMetrics(prometheus.NewRegistry())
	r, err := NewTrustReloader(ReloaderOptions{Trusts: trusts[:], Interval: time.Hour, Reverify: g.Reverify,
		Logger: testLogger(), Metrics: rm})
	if err != nil {
		t.Fatal(err)
	}
	if got := len(r.Files()); got != 2 {
		t.Fatalf("watching %d files, want 2", got)
	}
	if r.Check() {
		t.Fatal("a check with no file changed updated a Trust")
	}

	// Trust 0's pin changes to a key its server lacks.
	other := trusts[1].load()
	mnt.write(t, "pins0", []byte(config.FormatPin(foreignPin)+"\n"))
	if !r.Check() {
		t.Fatal("the changed pins file was not applied")
	}
	if trusts[1].load() != other {
		t.Error("a Trust whose files did not change was updated")
	}
	eventually(t, 3*time.Second, "trust 0's connection to close", func() bool { return srvs[0].Open() == 0 })
	if err := ask(0); !errors.Is(err, ErrPinMismatch) {
		t.Errorf("upstream 0 after its pin changed: %v, want ErrPinMismatch", err)
	}
	if err := ask(1); err != nil || srvs[1].Accepted() != 1 {
		t.Errorf("upstream 1: %v after %d connections, want its first connection still serving", err, srvs[1].Accepted())
	}

	// Both files broken: two pins files failing.
	mnt.write(t, "pins0", []byte("not a pin\n"))
	mnt.write(t, "pins1", []byte("\n"))
	if r.Check() {
		t.Error("broken files updated a Trust")
	}
	if got := counterValue(rm.Failing.WithLabelValues(TrustFilePins)); got != 2 {
		t.Errorf("trust_reload_failing{pins} = %v, want 2", got)
	}
	mnt.write(t, "pins1", []byte(srvs[1].LeafPin+"\n"))
	r.Check()
	if got := counterValue(rm.Failing.WithLabelValues(TrustFilePins)); got != 1 {
		t.Errorf("trust_reload_failing{pins} = %v after one file was fixed, want 1", got)
	}
}
