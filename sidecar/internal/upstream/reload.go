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
	Failing *prometheus.GaugeVec   // {file}: files of that kind whose content on disk is not the trust in use
}

// NewReloadMetrics builds the collectors, with every series at zero, and
// registers them on reg. It panics if they are registered already (a wiring
// bug).
func NewReloadMetrics(reg prometheus.Registerer) *ReloadMetrics {
	m := &ReloadMetrics{
		Reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Subsystem: subsystem, Name: "trust_reloads_total",
			Help: "Trust files (TLS_CA_FILE, TLS_PINS_FILE, the ;ca= files of routes) re-read after a change and applied.",
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
	// Trusts are updated in place when the files they were loaded from
	// change. A Trust built by NewTrust has none, and is left alone.
	Trusts []*Trust
	// Interval between checks. Required.
	Interval time.Duration
	// Reverify, when set, is called after each check that changed a Trust,
	// so that open connections the new trust rejects are replaced at once
	// (Group.Reverify).
	Reverify func() int
	// Logger is never nil.
	Logger *slog.Logger
	// Metrics is never nil.
	Metrics *ReloadMetrics
}

// TrustReloader polls the files of Trusts and applies changes to them
// without a restart.
//
// Each check reads every file through its path and compares a SHA-256 of
// the content with the last one seen. Reading through the path follows
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
	files []*watchedFile
}

type watchedFile struct {
	trust   *Trust
	file    trustFile
	seen    [32]byte // digest of the content (or read error) last acted on
	failing bool     // the content on disk could not be applied
}

// NewTrustReloader checks the options. Each file starts as seen with the
// content its Trust was loaded from; one that has changed since is applied
// by the first check.
func NewTrustReloader(opts ReloaderOptions) (*TrustReloader, error) {
	if opts.Logger == nil || opts.Metrics == nil {
		return nil, errors.New("trust reloader needs a Logger and Metrics")
	}
	if err := positive("Interval", opts.Interval); err != nil {
		return nil, fmt.Errorf("trust reloader: %w", err)
	}
	r := &TrustReloader{opts: opts}
	for _, t := range opts.Trusts {
		if t == nil {
			return nil, errors.New("trust reloader: nil Trust")
		}
		for _, f := range t.files {
			r.files = append(r.files, &watchedFile{trust: t, file: f, seen: f.sum})
		}
	}
	return r, nil
}

// Files returns the paths watched, for logs.
func (r *TrustReloader) Files() []string {
	paths := make([]string, len(r.files))
	for i, f := range r.files {
		paths[i] = f.file.path
	}
	return paths
}

// Run checks the files every Interval until ctx is done. Without any file
// to watch it returns at once.
func (r *TrustReloader) Run(ctx context.Context) {
	if len(r.files) == 0 {
		return
	}
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

// Check reads the files once and applies what changed. It reports whether a
// Trust was updated. Not safe for concurrent use (Run calls it).
func (r *TrustReloader) Check() bool {
	var updated []reload
	for _, t := range r.opts.Trusts {
		if u, ok := r.checkTrust(t); ok {
			updated = append(updated, u)
		}
	}
	for _, kind := range []string{TrustFileCA, TrustFilePins} {
		failing := 0
		for _, f := range r.files {
			if f.file.kind == kind && f.failing {
				failing++
			}
		}
		r.opts.Metrics.Failing.WithLabelValues(kind).Set(float64(failing))
	}
	if len(updated) == 0 {
		return false
	}
	retired := 0
	if r.opts.Reverify != nil {
		retired = r.opts.Reverify()
	}
	for _, u := range updated {
		r.opts.Logger.Info("trust reloaded", "files", u.files, "roots", describeRoots(u.st.roots),
			"default_pins", len(u.st.pins), "connections_retired", retired)
	}
	return true
}

// reload is a change checkTrust applied to a Trust.
type reload struct {
	files []string
	st    *trustState
}

// checkTrust applies the changes of t's files and reports what it changed.
func (r *TrustReloader) checkTrust(t *Trust) (reload, bool) {
	st := t.load()
	roots, pins := st.roots, st.pins
	var applied []string
	for _, f := range r.files {
		if f.trust != t {
			continue
		}
		data, err := os.ReadFile(f.file.path)
		sum := sha256.Sum256(data)
		if err != nil {
			sum = sha256.Sum256([]byte("error: " + err.Error()))
		}
		if sum == f.seen {
			continue
		}
		f.seen = sum
		if err == nil {
			// Should the file change once more before the next check, that
			// check sees a new digest and loads it again, so the Trust
			// always ends on the file's last content.
			roots, pins, err = f.file.parse(data, roots, pins)
		}
		if f.failing = err != nil; f.failing {
			r.opts.Metrics.Errors.WithLabelValues(f.file.kind).Inc()
			r.opts.Logger.Error("trust file changed but cannot be used; keeping the previous trust",
				"file", f.file.path, "err", err)
			continue
		}
		r.opts.Metrics.Reloads.WithLabelValues(f.file.kind).Inc()
		applied = append(applied, f.file.path)
	}
	if len(applied) == 0 {
		return reload{}, false
	}
	if roots == st.roots && samePins(pins, st.pins) ||
		roots != nil && st.roots != nil && roots.Equal(st.roots) && samePins(pins, st.pins) {
		// Reworded, reordered or commented, but the same trust: no need to
		// re-check every connection.
		r.opts.Logger.Info("trust file re-read; trust unchanged", "files", applied)
		return reload{}, false
	}
	t.Update(roots, pins)
	return reload{files: applied, st: t.load()}, true
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
