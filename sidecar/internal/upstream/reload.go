package upstream

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ReloadMetrics counts trust reloads. It lives apart from Metrics because
// only a process that watches trust files has it.
type ReloadMetrics struct {
	Reloads *prometheus.CounterVec // {file}: a changed file read and applied
	Errors  *prometheus.CounterVec // {file}: a changed file that could not be applied
	Failing *prometheus.GaugeVec   // {file}: 1 while the file on disk is not the trust in use
}

// Trust file kinds, the `file` label of ReloadMetrics.
const (
	TrustFileCA   = "ca"
	TrustFilePins = "pins"
)

// NewReloadMetrics builds the collectors, with every series at zero, and
// registers them on reg. It panics if they are registered already (a wiring
// bug).
func NewReloadMetrics(reg prometheus.Registerer) *ReloadMetrics {
	m := &ReloadMetrics{
		Reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "trust_reloads_total",
			Help: "Trust files (TLS_CA_FILE, TLS_PINS_FILE) re-read after a change and applied.",
		}, []string{"file"}),
		Errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "trust_reload_errors_total",
			Help: "Changes to trust files that could not be applied (unreadable or malformed); the previous trust stays.",
		}, []string{"file"}),
		Failing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "trust_reload_failing",
			Help: "1 while a trust file on disk could not be applied and the previous trust is in use.",
		}, []string{"file"}),
	}
	for _, f := range []string{TrustFileCA, TrustFilePins} {
		m.Reloads.WithLabelValues(f)
		m.Errors.WithLabelValues(f)
		m.Failing.WithLabelValues(f)
	}
	reg.MustRegister(m.Reloads, m.Errors, m.Failing)
	return m
}

// ReloaderOptions configures a TrustReloader.
type ReloaderOptions struct {
	// Trust is updated in place. Required.
	Trust *Trust
	// CAFile replaces the Trust's roots when it changes; "" is not watched.
	CAFile string
	// PinsFile replaces the Trust's default pins when it changes; "" is not
	// watched. At least one of CAFile and PinsFile is required.
	PinsFile string
	// LoadCA parses CAFile; required with it. It must fail on a file that
	// holds no usable certificate rather than trust nothing.
	LoadCA func(path string) (*x509.CertPool, error)
	// LoadPins parses PinsFile; required with it. It must fail on a file
	// that holds no pin rather than turn pinning off.
	LoadPins func(path string) ([][32]byte, error)
	// Interval between checks. Required.
	Interval time.Duration
	// Reverify, when set, is called after each change applied, so that open
	// connections the new trust rejects are replaced at once (Group.Reverify).
	Reverify func() int
	// Logger is never nil.
	Logger *slog.Logger
	// Metrics is never nil.
	Metrics *ReloadMetrics
}

// TrustReloader polls the CA and pins files and applies changes to a Trust
// without a restart.
//
// Each check reads the whole file through its path and compares a SHA-256
// of the content with the last one seen. Reading through the path follows
// symlinks, so the swaps Kubernetes makes for mounted Secrets and ConfigMaps
// (a new timestamped directory, then the `..data` symlink renamed over the
// old one) are seen like a rename or an edit in place; comparing content
// rather than modification times or inode numbers catches every one of them
// and ignores a touch. The files are small, so reading them every few
// seconds costs nothing, and needs neither inotify nor a dependency.
//
// A change that cannot be applied (unreadable, malformed, empty) keeps the
// previous trust, logs why, and counts one error per distinct bad content;
// fixing the file applies it at the next check.
type TrustReloader struct {
	opts  ReloaderOptions
	files []*trustFile
}

type trustFile struct {
	kind, path string
	seen       [32]byte // digest of the content (or read error) last acted on
}

// NewTrustReloader checks the options and takes the files as they are now
// as the starting point: the caller built the Trust from them moments ago.
// If a file already differs from the Trust (changed in between), the first
// check applies it.
func NewTrustReloader(opts ReloaderOptions) (*TrustReloader, error) {
	switch {
	case opts.Trust == nil || opts.Logger == nil || opts.Metrics == nil:
		return nil, errors.New("trust reloader needs a Trust, a Logger and Metrics")
	case opts.CAFile == "" && opts.PinsFile == "":
		return nil, errors.New("trust reloader needs a CA file or a pins file to watch")
	case opts.CAFile != "" && opts.LoadCA == nil, opts.PinsFile != "" && opts.LoadPins == nil:
		return nil, errors.New("trust reloader needs a parser for each file it watches")
	}
	if err := positive("Interval", opts.Interval); err != nil {
		return nil, fmt.Errorf("trust reloader: %w", err)
	}
	r := &TrustReloader{opts: opts}
	st := opts.Trust.load()
	if opts.CAFile != "" {
		f := &trustFile{kind: TrustFileCA, path: opts.CAFile}
		// Seen only if it still says what the Trust holds; otherwise the
		// first check applies it.
		if data, err := os.ReadFile(f.path); err == nil {
			if roots, err := opts.LoadCA(f.path); err == nil && st.roots != nil && roots.Equal(st.roots) {
				f.seen = sha256.Sum256(data)
			}
		}
		r.files = append(r.files, f)
	}
	if opts.PinsFile != "" {
		f := &trustFile{kind: TrustFilePins, path: opts.PinsFile}
		if data, err := os.ReadFile(f.path); err == nil {
			if pins, err := opts.LoadPins(f.path); err == nil && samePins(pins, st.pins) {
				f.seen = sha256.Sum256(data)
			}
		}
		r.files = append(r.files, f)
	}
	return r, nil
}

// Run checks the files every Interval until ctx is done.
func (r *TrustReloader) Run(ctx context.Context) {
	t := time.NewTicker(r.opts.Interval)
	defer t.Stop()
	r.Check()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.Check()
		}
	}
}

// Check reads the files once and applies what changed. It reports whether
// the Trust was updated. Not safe for concurrent use (Run calls it).
func (r *TrustReloader) Check() bool {
	st := r.opts.Trust.load()
	roots, pins := st.roots, st.pins
	var applied []string
	for _, f := range r.files {
		data, err := os.ReadFile(f.path)
		sum := sha256.Sum256(data)
		if err != nil {
			sum = sha256.Sum256([]byte("error: " + err.Error()))
		}
		if sum == f.seen {
			continue
		}
		f.seen = sum
		if err == nil {
			// The parser reads the file again; should it have changed once
			// more in between, the next check sees a new digest and loads
			// it again, so the Trust always ends on the file's last content.
			switch f.kind {
			case TrustFileCA:
				var p *x509.CertPool
				if p, err = r.opts.LoadCA(f.path); err == nil {
					roots = p
				}
			case TrustFilePins:
				var p [][32]byte
				if p, err = r.opts.LoadPins(f.path); err == nil {
					pins = p
				}
			}
		}
		if err != nil {
			r.opts.Metrics.Errors.WithLabelValues(f.kind).Inc()
			r.opts.Metrics.Failing.WithLabelValues(f.kind).Set(1)
			r.opts.Logger.Error("trust file changed but cannot be used; keeping the previous trust",
				"file", f.path, "err", err)
			continue
		}
		r.opts.Metrics.Reloads.WithLabelValues(f.kind).Inc()
		r.opts.Metrics.Failing.WithLabelValues(f.kind).Set(0)
		applied = append(applied, f.path)
	}
	if len(applied) == 0 {
		return false
	}
	if roots == st.roots && samePins(pins, st.pins) ||
		roots != nil && st.roots != nil && roots.Equal(st.roots) && samePins(pins, st.pins) {
		// Reworded, reordered or commented, but the same trust: no need to
		// re-check every connection.
		r.opts.Logger.Info("trust file re-read; trust unchanged", "files", applied)
		return false
	}
	r.opts.Trust.Update(roots, pins)
	retired := 0
	if r.opts.Reverify != nil {
		retired = r.opts.Reverify()
	}
	r.opts.Logger.Info("trust reloaded", "files", applied, "roots", describeRoots(roots),
		"default_pins", len(pins), "connections_retired", retired)
	return true
}

// samePins compares pin sets; order does not matter.
func samePins(a, b [][32]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for _, p := range a {
		if !slices.Contains(b, p) {
			return false
		}
	}
	return true
}

func describeRoots(p *x509.CertPool) string {
	if p == nil {
		return "system"
	}
	return "file"
}
