package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

// control checks that a target gives the right answers over UDP and TCP
// before it is measured, retrying until ctx ends so that a relay still
// starting (or still connecting to the upstream) gets its chance. A relay that
// never answers correctly is a harness error: measuring it would report the
// speed of failure.
func control(ctx context.Context, addr string, recs []unboundtest.Record, p *proc) error {
	probes := []struct {
		rec   unboundtest.Record
		qtype uint16
	}{{recs[0], dns.TypeA}, {recs[len(recs)-1], dns.TypeTXT}}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for _, proto := range []string{"udp", "tcp"} {
		for _, pr := range probes {
			for {
				if last = controlOnce(ctx, addr, proto, pr.rec, pr.qtype); last == nil {
					break
				}
				if p != nil {
					if err := p.alive(); err != nil {
						return err
					}
				}
				select {
				case <-ctx.Done():
					return fmt.Errorf("control query %s %s over %s to %s: %w", pr.rec.Name, dns.TypeToString[pr.qtype], proto, addr, last)
				case <-tick.C:
				}
			}
		}
	}
	return nil
}

func controlOnce(ctx context.Context, addr, proto string, rec unboundtest.Record, qtype uint16) error {
	m := new(dns.Msg)
	m.SetQuestion(rec.Name, qtype)
	c := &dns.Client{Net: proto, Timeout: time.Second}
	r, _, err := c.ExchangeContext(ctx, m, addr)
	if err != nil {
		return err
	}
	return checkAnswer(r, rec, qtype)
}

// checkAnswer requires a NOERROR answer carrying exactly the served data.
func checkAnswer(r *dns.Msg, rec unboundtest.Record, qtype uint16) error {
	if r.Rcode != dns.RcodeSuccess {
		return fmt.Errorf("rcode %s", dns.RcodeToString[r.Rcode])
	}
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *dns.A:
			if qtype == dns.TypeA && v.A.Equal(rec.A) {
				return nil
			}
		case *dns.TXT:
			if qtype == dns.TypeTXT && strings.Join(v.Txt, "") == rec.TXT {
				return nil
			}
		}
	}
	return fmt.Errorf("answer %v lacks the served %s data of %s", r.Answer, dns.TypeToString[qtype], rec.Name)
}

// expectNoAnswer waits for a relay to listen, then watches it for three
// seconds (ample to dial and fail the handshake) and requires that it never
// returns the served data. SERVFAIL or silence pass; a relay that never
// listens fails, so the check cannot pass by accident.
func expectNoAnswer(ctx context.Context, addr string, rec unboundtest.Record) error {
	const watch = 3 * time.Second
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var upSince time.Time
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if upSince.IsZero() {
			var d net.Dialer
			if c, err := d.DialContext(ctx, "tcp", addr); err == nil {
				c.Close()
				upSince = time.Now()
			}
		}
		if !upSince.IsZero() {
			qctx, qcancel := context.WithTimeout(ctx, time.Second)
			err := controlOnce(qctx, addr, "udp", rec, dns.TypeA)
			qcancel()
			if err == nil {
				return fmt.Errorf("answered %s A with the served data", rec.Name)
			}
			if time.Since(upSince) >= watch {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if upSince.IsZero() {
				return fmt.Errorf("never listened on %s", addr)
			}
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// waitStartupz polls http://admin/startupz until it returns 200 and reports
// the time since the process was started.
func waitStartupz(ctx context.Context, p *proc, admin string) (time.Duration, error) {
	client := &http.Client{Timeout: 200 * time.Millisecond}
	url := "http://" + admin + "/startupz"
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(p.started), nil
			}
		}
		if err := p.alive(); err != nil {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("%s never returned 200: %w", url, ctx.Err())
		case <-tick.C:
		}
	}
}
