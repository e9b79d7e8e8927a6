// Package check implements `dot-sidecar check`: it proves, from inside a pod,
// that the redirect rules send the pod's DNS to the sidecar. Run as an
// application would (any UID but the sidecar's), it sends a canary query to
// every nameserver of resolv.conf over UDP and TCP. The sidecar answers the
// canary name itself, so each path either reaches the sidecar (intercepted),
// reaches something else (a reply without the sidecar's mark: the rules for
// that path are missing), or gets no reply at all.
//
// The point is the known failure of mesh init steps: IPv6 or TCP rules that
// are silently missing. A per-nameserver, per-protocol table catches both.
//
// When the sidecar routes the cluster's names (Options.Cluster), check also
// resolves the API server's Service name through it (cluster.go): a pod
// whose Services do not resolve must not start as if all were well.
package check

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/resolvconf"
)

// The canary the sidecar answers by itself (a fixed project fact shared with
// sidecar/internal/server). The .invalid TLD (RFC 6761) guarantees that no
// real resolver can have a genuine answer for it.
const (
	CanaryName = "canary.dot-sidecar.invalid."
	// CanaryPrefix starts the text of the sidecar's TXT answer.
	CanaryPrefix = "dot-sidecar "
)

// Defaults for the zero values of Options.
const (
	DefaultResolvConf = "/etc/resolv.conf"
	DefaultPort       = 53
	DefaultTimeout    = 2 * time.Second
)

// Options configure Run and Probe. The zero value checks /etc/resolv.conf on
// port 53 with a 2 s timeout per query.
type Options struct {
	// ResolvConf is the file naming the nameservers; default /etc/resolv.conf.
	ResolvConf string
	// Port is the destination port of the canary queries; default 53. Only
	// tests change it: the redirect rules match port 53.
	Port int
	// Timeout bounds each query; default 2 s. All paths are probed at once,
	// so a whole check with failing paths takes about one Timeout.
	Timeout time.Duration
	// Out receives the table; nil discards it.
	Out io.Writer
	// SidecarUID, when > 0, makes Run refuse to run under that effective UID
	// (ErrRunAsSidecar): the rules exclude it, so every path would look leaky.
	SidecarUID int
	// Cluster, when not nil, also checks the route of the cluster's names,
	// retrying within Timeout.
	Cluster *Cluster

	euid func() int // tests replace os.Geteuid
}

// Outcome classifies one path (nameserver and protocol).
type Outcome int

const (
	// Intercepted: the sidecar answered the canary.
	Intercepted Outcome = iota
	// AnsweredElsewhere: a reply came, but not the sidecar's: the query left
	// the pod (or reached another local resolver) without being redirected.
	AnsweredElsewhere
	// NoAnswer: timeout, refusal or a closed connection. With fail-closed
	// rules and the sidecar down this is the expected outcome, and it still
	// means applications get no DNS.
	NoAnswer
)

func (o Outcome) String() string {
	switch o {
	case Intercepted:
		return "intercepted"
	case AnsweredElsewhere:
		return "NOT intercepted: answered by something else"
	case NoAnswer:
		return "NOT intercepted: no answer"
	}
	return fmt.Sprintf("Outcome(%d)", int(o))
}

// Result is the outcome of one canary query.
type Result struct {
	Nameserver netip.Addr
	Port       int
	Proto      string // "udp" or "tcp"
	Outcome    Outcome
	// Detail explains the outcome: the sidecar's TXT text when intercepted,
	// the rcode or answer of the impostor, or the network error.
	Detail string
	RTT    time.Duration
}

// Path names the path the way the table and error messages do, e.g.
// "[2001:db8::53]:53/tcp".
func (r Result) Path() string {
	return netip.AddrPortFrom(r.Nameserver, uint16(r.Port)).String() + "/" + r.Proto
}

// Report is the outcome of a whole check.
type Report struct {
	Results []Result
	// Ignored lists resolv.conf nameserver entries that are not IP addresses.
	Ignored []string
	// Cluster is the outcome of the cluster check, nil when none ran.
	Cluster *ClusterResult
}

// OK reports whether every path was intercepted and the cluster check, if
// any, did not fail.
func (r *Report) OK() bool {
	for _, res := range r.Results {
		if res.Outcome != Intercepted {
			return false
		}
	}
	return len(r.Results) > 0 && (r.Cluster == nil || r.Cluster.Outcome != ClusterFailed)
}

// Failed returns the paths that were not intercepted.
func (r *Report) Failed() []Result {
	var out []Result
	for _, res := range r.Results {
		if res.Outcome != Intercepted {
			out = append(out, res)
		}
	}
	return out
}

// Run probes every path, writes the table to opts.Out and reports whether
// every path was intercepted. err is non-nil only when the check could not
// run (unreadable resolv.conf, no nameserver, wrong UID); a path that is not
// intercepted is ok == false with a nil error.
func Run(ctx context.Context, opts Options) (ok bool, err error) {
	out := opts.Out
	if out == nil {
		out = io.Discard
	}
	euid := os.Geteuid
	if opts.euid != nil {
		euid = opts.euid
	}
	if opts.SidecarUID > 0 && euid() == opts.SidecarUID {
		return false, fmt.Errorf("uid %d: %w", opts.SidecarUID, ErrRunAsSidecar)
	}
	rep, err := Probe(ctx, opts)
	if err != nil {
		return false, err
	}
	if err := WriteTable(out, rep); err != nil {
		return false, fmt.Errorf("writing the table: %w", err)
	}
	return rep.OK(), nil
}

// Probe sends the canary to every nameserver of opts.ResolvConf over UDP and
// TCP, all at once, and returns the results in resolv.conf order, UDP before
// TCP. Then, with opts.Cluster, it resolves the cluster's name through the
// first intercepted path.
func Probe(ctx context.Context, opts Options) (*Report, error) {
	opts = withDefaults(opts)
	rc, err := resolvconf.Read(opts.ResolvConf)
	if err != nil {
		return nil, err
	}
	if len(rc.Nameservers) == 0 {
		return nil, fmt.Errorf("%s: %w", opts.ResolvConf, ErrNoNameservers)
	}
	rep := &Report{Results: make([]Result, 0, 2*len(rc.Nameservers)), Ignored: rc.Ignored}
	for _, ns := range rc.Nameservers {
		for _, proto := range []string{"udp", "tcp"} {
			rep.Results = append(rep.Results, Result{Nameserver: ns, Port: opts.Port, Proto: proto})
		}
	}
	var wg sync.WaitGroup
	for i := range rep.Results {
		wg.Go(func() { probe(ctx, &rep.Results[i], opts.Timeout) })
	}
	wg.Wait()
	if opts.Cluster != nil {
		for _, res := range rep.Results {
			if res.Outcome == Intercepted {
				cr := checkCluster(ctx, *opts.Cluster, res.Nameserver.String(), opts.Port, opts.Timeout)
				rep.Cluster = &cr
				break
			}
		}
	}
	return rep, nil
}

func withDefaults(opts Options) Options {
	if opts.ResolvConf == "" {
		opts.ResolvConf = DefaultResolvConf
	}
	if opts.Port == 0 {
		opts.Port = DefaultPort
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	return opts
}
