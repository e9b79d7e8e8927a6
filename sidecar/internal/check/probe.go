package check

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// probe sends one canary query along res's path and fills in the outcome.
func probe(ctx context.Context, res *Result, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	q := new(dns.Msg)
	q.SetQuestion(CanaryName, dns.TypeTXT)
	// A fresh connection per query on purpose: each path is tested exactly as
	// a stub resolver would use it.
	c := &dns.Client{Net: res.Proto, Timeout: timeout}
	addr := net.JoinHostPort(res.Nameserver.String(), fmt.Sprint(res.Port))
	start := time.Now()
	reply, _, err := c.ExchangeContext(ctx, q, addr)
	res.RTT = time.Since(start)
	res.Outcome, res.Detail = classify(q, reply, err)
}

// classify decides what answered a canary query. Only a reply carrying the
// sidecar's TXT counts as intercepted; a malformed or mismatched reply still
// proves that something other than the sidecar is reachable on that path.
func classify(q, reply *dns.Msg, err error) (Outcome, string) {
	if err != nil {
		var dnsErr *dns.Error
		if errors.As(err, &dnsErr) {
			return AnsweredElsewhere, "malformed reply: " + err.Error()
		}
		return NoAnswer, networkReason(err)
	}
	if reply == nil {
		return NoAnswer, "empty reply"
	}
	if len(reply.Question) != 1 || !strings.EqualFold(reply.Question[0].Name, q.Question[0].Name) ||
		reply.Question[0].Qtype != q.Question[0].Qtype {
		return AnsweredElsewhere, "reply to another question"
	}
	if reply.Rcode != dns.RcodeSuccess {
		return AnsweredElsewhere, "rcode " + dns.RcodeToString[reply.Rcode]
	}
	for _, rr := range reply.Answer {
		txt, ok := rr.(*dns.TXT)
		if !ok || !strings.EqualFold(txt.Hdr.Name, CanaryName) {
			continue
		}
		text := strings.Join(txt.Txt, "")
		if strings.HasPrefix(text, CanaryPrefix) {
			return Intercepted, text
		}
		return AnsweredElsewhere, fmt.Sprintf("TXT %q is not the sidecar's", text)
	}
	return AnsweredElsewhere, fmt.Sprintf("no TXT answer (%d answer records)", len(reply.Answer))
}

// networkReason shortens a dial or read error to what an operator acts on.
func networkReason(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	}
	return err.Error()
}
