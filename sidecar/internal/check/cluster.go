package check

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Cluster asks check to prove the route of the cluster's names too: the
// sidecar must send them to the cluster's resolver, not to the public
// upstreams, or every Service lookup of the pod fails.
type Cluster struct {
	// Route names the route in messages ("cluster").
	Route string
	// Domain is the cluster domain; the name asked is
	// kubernetes.default.svc.<Domain>, the API server's Service, which
	// every cluster has.
	Domain string
	// Missing, when not empty, says why the sidecar has no such route
	// although resolv.conf is the kubelet's: the check fails with it.
	Missing string
}

// ClusterOutcome classifies the cluster check.
type ClusterOutcome int

const (
	// ClusterResolved: the name was answered (NOERROR): the route works.
	ClusterResolved ClusterOutcome = iota
	// ClusterUnsure: only SERVFAIL or no answer until the timeout: the
	// cluster's resolver may be briefly away. Not a failure: a blip of
	// kube-dns must not crash-loop every new pod.
	ClusterUnsure
	// ClusterFailed: NXDOMAIN or REFUSED, an answer from a resolver that
	// does not know the cluster, or no route at all.
	ClusterFailed
)

// ClusterResult is the outcome of the cluster check.
type ClusterResult struct {
	Route, Name string
	Outcome     ClusterOutcome
	Detail      string
	Tries       int
}

// ClusterName is the name the cluster check asks for in domain.
func ClusterName(domain string) string {
	return "kubernetes.default.svc." + strings.TrimSuffix(domain, ".") + "."
}

// retryEvery spaces the cluster check's tries.
const retryEvery = 200 * time.Millisecond

// checkCluster asks for the cluster's name through nameserver, as an
// application would, until it is answered or timeout passes.
func checkCluster(ctx context.Context, c Cluster, nameserver string, port int, timeout time.Duration) ClusterResult {
	res := ClusterResult{Route: c.Route, Name: ClusterName(c.Domain)}
	if c.Missing != "" {
		res.Outcome, res.Detail = ClusterFailed, c.Missing
		return res
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	addr := net.JoinHostPort(nameserver, strconv.Itoa(port))
	q := new(dns.Msg)
	q.SetQuestion(res.Name, dns.TypeA)
	q.SetEdns0(1232, false) // so that a SERVFAIL says why (EDE)
	res.Outcome, res.Detail = ClusterUnsure, "no answer"
	for {
		res.Tries++
		client := &dns.Client{Net: "udp", Timeout: min(timeout, time.Second)}
		r, _, err := client.ExchangeContext(ctx, q, addr)
		if err == nil && r.Truncated {
			client.Net = "tcp"
			r, _, err = client.ExchangeContext(ctx, q, addr)
		}
		switch {
		case err != nil && res.Tries > 1 && (ctx.Err() != nil || !time.Now().Before(deadline)):
			// The check's time ran out during this try (the socket's
			// deadline, ctx's, may pass before ctx's timer fires): it
			// learned nothing, and what the earlier ones saw (a SERVFAIL
			// and its reason) is what the operator needs, not "timeout".
			return res
		case err != nil:
			res.Detail = networkReason(err)
		case r.Rcode == dns.RcodeSuccess:
			res.Outcome, res.Detail = ClusterResolved, answerText(r)
			return res
		case r.Rcode == dns.RcodeNameError || r.Rcode == dns.RcodeRefused:
			res.Outcome = ClusterFailed
			res.Detail = dns.RcodeToString[r.Rcode] + ": the name did not reach the cluster's resolver"
			return res
		default:
			res.Detail = dns.RcodeToString[r.Rcode] + ede(r)
		}
		t := time.NewTimer(retryEvery)
		select {
		case <-ctx.Done():
			t.Stop()
			return res
		case <-t.C:
		}
	}
}

func answerText(r *dns.Msg) string {
	var addrs []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			addrs = append(addrs, a.A.String())
		}
	}
	if len(addrs) == 0 {
		return "NOERROR, no address (the name exists)"
	}
	return strings.Join(addrs, ", ")
}

// ede is the Extended DNS Error of r, if any, for the table.
func ede(r *dns.Msg) string {
	if opt := r.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok {
				what := dns.ExtendedErrorCodeToString[e.InfoCode]
				if e.ExtraText != "" {
					what += ": " + e.ExtraText
				}
				return fmt.Sprintf(" (EDE %d %s)", e.InfoCode, what)
			}
		}
	}
	return ""
}

func (o ClusterOutcome) String() string {
	switch o {
	case ClusterResolved:
		return "resolved"
	case ClusterUnsure:
		return "not resolved in time (not counted as a failure)"
	case ClusterFailed:
		return "FAILED"
	}
	return fmt.Sprintf("ClusterOutcome(%d)", int(o))
}
