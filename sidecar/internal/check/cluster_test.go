package check

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// fakeSidecar answers the canary like the sidecar, and the cluster's name
// as clusterRcode(try) says (0: an A record; noAnswer: nothing).
func fakeSidecar(t *testing.T, clusterRcode func(try int64) int) *dnstest.PlainServer {
	var tries atomic.Int64
	return dnstest.NewPlain(t, dnstest.PlainOptions{Handler: func(q *dns.Msg) *dns.Msg {
		r := new(dns.Msg)
		r.SetReply(q)
		name := q.Question[0].Name
		switch {
		case strings.EqualFold(name, CanaryName):
			r.Answer = []dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{"dot-sidecar test"}}}
		case strings.EqualFold(name, ClusterName("cluster.local")):
			rc := clusterRcode(tries.Add(1))
			if rc == noAnswer {
				return nil
			}
			if rc != dns.RcodeSuccess {
				r.Rcode = rc
				if rc == dns.RcodeServerFailure {
					r.SetEdns0(1232, false)
					opt := r.IsEdns0()
					opt.Option = append(opt.Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeNoReachableAuthority, ExtraText: "all upstreams down"})
				}
				return r
			}
			r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: net.IPv4(10, 96, 0, 1).To4()}}
		default:
			r.Rcode = dns.RcodeNameError
		}
		return r
	}})
}

// noAnswer, as fakeSidecar's rcode, leaves the query unanswered.
const noAnswer = -1

// TestClusterCheck: check resolves the cluster's name through the sidecar,
// retrying within its timeout, and fails only when the name reached a
// resolver that does not know it (NXDOMAIN, REFUSED) or no route exists.
//
// The cases where the check's time runs out end it by count, not by the
// clock: the check's context ends when the fake has received the case's
// endAt-th try, which the timeout would do in the field. With a short
// timeout instead, a machine that stalls the first try past it (-race on a
// loaded machine) leaves nothing but that timeout to report. The timeout
// only bounds a hang.
func TestClusterCheck(t *testing.T) {
	tests := []struct {
		name    string
		rcode   func(try int64) int
		missing string
		want    ClusterOutcome
		ok      bool
		detail  string
		tries   int // at least
		// endAt, when not 0, is the try on whose arrival the check's
		// time runs out; the other cases end on an answer.
		endAt int64
	}{
		{"resolved", func(int64) int { return dns.RcodeSuccess }, "", ClusterResolved, true, "10.96.0.1", 1, 0},
		{"kube-dns blip, then resolved", func(n int64) int {
			if n < 3 {
				return dns.RcodeServerFailure
			}
			return dns.RcodeSuccess
		}, "", ClusterResolved, true, "10.96.0.1", 3, 0},
		{"kube-dns down for the whole timeout: not a failure", func(int64) int { return dns.RcodeServerFailure }, "",
			ClusterUnsure, true, "SERVFAIL (EDE 22 No Reachable Authority: all upstreams down)", 3, 3},
		// The try the end cuts short learned nothing: the SERVFAIL before
		// it is the reason.
		{"SERVFAIL, then no answer until the timeout", func(n int64) int {
			if n == 1 {
				return dns.RcodeServerFailure
			}
			return noAnswer
		}, "", ClusterUnsure, true, "SERVFAIL (EDE 22 No Reachable Authority: all upstreams down)", 2, 2},
		{"sent to a public resolver", func(int64) int { return dns.RcodeNameError }, "", ClusterFailed, false, "NXDOMAIN", 1, 0},
		{"refused", func(int64) int { return dns.RcodeRefused }, "", ClusterFailed, false, "REFUSED", 1, 0},
		{"no route", nil, "no usable nameserver", ClusterFailed, false, "no usable nameserver", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, end := context.WithCancel(context.Background())
			defer end()
			rcode := tt.rcode
			if rcode == nil {
				rcode = func(int64) int { return dns.RcodeSuccess }
			}
			srv := fakeSidecar(t, func(try int64) int {
				if try == tt.endAt {
					end()
				}
				return rcode(try)
			})
			var out bytes.Buffer
			opts := Options{
				ResolvConf: writeResolvConf(t, "search a.svc.cluster.local svc.cluster.local cluster.local\nnameserver "+srv.Addr.Addr().String()+"\n"),
				Port:       int(srv.Addr.Port()),
				Timeout:    time.Minute,
				Out:        &out,
				Cluster:    &Cluster{Route: "cluster", Domain: "cluster.local", Missing: tt.missing},
			}
			// Run is Probe, then WriteTable, then OK.
			rep, err := Probe(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			if err := WriteTable(&out, rep); err != nil {
				t.Fatal(err)
			}
			ok, c := rep.OK(), rep.Cluster
			if ok != tt.ok || c == nil || c.Outcome != tt.want || !strings.Contains(c.Detail, tt.detail) || c.Tries < tt.tries {
				t.Errorf("ok %v, cluster %+v; want ok %v, %v with %q after %d tries or more\n%s", ok, c, tt.ok, tt.want, tt.detail, tt.tries, out.String())
			}
			table := out.String()
			if !strings.Contains(table, "route cluster: kubernetes.default.svc.cluster.local. ") {
				t.Errorf("table lacks the cluster line:\n%s", table)
			}
			if !tt.ok && !strings.Contains(table, "FAIL: route cluster does not resolve kubernetes.default.svc.cluster.local.") {
				t.Errorf("table lacks the verdict:\n%s", table)
			}
		})
	}
}
