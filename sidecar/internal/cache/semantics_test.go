package cache

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestTTLCountdown: a hit carries the remaining TTLs, never more than the
// original, and the entry lives as long as the smallest TTL, capped by
// MaxTTL and floored by MinTTL.
func TestTTLCountdown(t *testing.T) {
	tests := []struct {
		name     string
		opts     Options
		records  []string
		at       time.Duration // when the hit is asked for
		want     []uint32      // the TTLs it carries
		lifetime time.Duration // when the entry stops being fresh
	}{
		{name: "smallest TTL counts down", records: []string{"www.example.com. 300 IN CNAME web.example.com.", "web.example.com. 60 IN A 192.0.2.1"},
			at: 25 * time.Second, want: []uint32{35, 35}, lifetime: 60 * time.Second},
		{name: "MaxTTL caps", opts: Options{MaxTTL: 100 * time.Second}, records: []string{"www.example.com. 86400 IN A 192.0.2.1"},
			at: 40 * time.Second, want: []uint32{60}, lifetime: 100 * time.Second},
		{name: "MinTTL floors the lifetime, not the TTLs", opts: Options{MinTTL: 30 * time.Second}, records: []string{"www.example.com. 5 IN A 192.0.2.1"},
			at: 10 * time.Second, want: []uint32{0}, lifetime: 30 * time.Second},
		{name: "seconds are counted whole", records: []string{"www.example.com. 60 IN A 192.0.2.1"},
			at: 1999 * time.Millisecond, want: []uint32{59}, lifetime: 60 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.opts)
			h.pub.handler = func(q *dns.Msg) *dns.Msg { return replyTo(q, dns.RcodeSuccess, tt.records...) }
			first := h.mustAsk(t, query(t, "www.example.com.", dns.TypeA, false, false))
			if len(first.Answer) != len(tt.records) {
				t.Fatalf("first answer %v", first)
			}
			h.clock.advance(tt.at)
			r, ok := h.look(t, query(t, "WWW.example.com.", dns.TypeA, false, false))
			if !ok {
				t.Fatal("miss at", tt.at)
			}
			if got := ttls(r); !slices.Equal(got, tt.want) {
				t.Errorf("TTLs %v at %v, want %v", got, tt.at, tt.want)
			}
			h.clock.advance(tt.lifetime - tt.at - time.Nanosecond)
			if _, ok := h.look(t, query(t, "www.example.com.", dns.TypeA, false, false)); !ok {
				t.Errorf("miss just before %v", tt.lifetime)
			}
			h.clock.advance(time.Nanosecond)
			if _, ok := h.look(t, query(t, "www.example.com.", dns.TypeA, false, false)); ok {
				t.Errorf("hit at %v", tt.lifetime)
			}
			h.mustAsk(t, query(t, "www.example.com.", dns.TypeA, false, false))
			if n := h.pub.queries.Load(); n != 2 {
				t.Errorf("upstream got %d queries, want 2 (the first, then after expiry)", n)
			}
		})
	}
}

// TestNegativeCaching: NXDOMAIN and NODATA live for min(SOA TTL, SOA
// MINIMUM), capped by MaxNegativeTTL; a denial without an SOA is not kept.
func TestNegativeCaching(t *testing.T) {
	const soa = "example.com. %d IN SOA ns.example.com. hostmaster.example.com. 1 7200 900 1209600 %d"
	tests := []struct {
		name     string
		opts     Options
		rcode    int
		soa      string
		lifetime time.Duration // 0: not kept
	}{
		{name: "NXDOMAIN, MINIMUM below the TTL", rcode: dns.RcodeNameError, soa: fmtSOA(soa, 3600, 60), lifetime: 60 * time.Second},
		{name: "NXDOMAIN, TTL below MINIMUM", rcode: dns.RcodeNameError, soa: fmtSOA(soa, 30, 600), lifetime: 30 * time.Second},
		{name: "NODATA", rcode: dns.RcodeSuccess, soa: fmtSOA(soa, 3600, 300), lifetime: 300 * time.Second},
		{name: "MaxNegativeTTL caps", opts: Options{MaxNegativeTTL: 10 * time.Second}, rcode: dns.RcodeNameError, soa: fmtSOA(soa, 3600, 3600), lifetime: 10 * time.Second},
		{name: "NXDOMAIN without SOA", rcode: dns.RcodeNameError},
		{name: "NODATA without SOA", rcode: dns.RcodeSuccess},
		{name: "REFUSED", rcode: dns.RcodeRefused, soa: fmtSOA(soa, 3600, 60)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, tt.opts)
			h.pub.handler = func(q *dns.Msg) *dns.Msg {
				if tt.soa == "" {
					return replyTo(q, tt.rcode)
				}
				return replyTo(q, tt.rcode, tt.soa)
			}
			q := query(t, "nothing.example.com.", dns.TypeAAAA, true, false)
			first := h.mustAsk(t, q)
			if first.Rcode != tt.rcode {
				t.Fatalf("rcode %d", first.Rcode)
			}
			r, ok := h.look(t, q)
			if tt.lifetime == 0 {
				if ok {
					t.Fatalf("kept: %v", r)
				}
				return
			}
			if !ok {
				t.Fatal("not kept")
			}
			if r.Rcode != tt.rcode || len(r.Ns) != 1 || r.Ns[0].Header().Ttl != uint32(tt.lifetime/time.Second) {
				t.Errorf("cached denial %v: want the SOA with TTL %v", r, tt.lifetime)
			}
			if got := counter(h.m.hits[denial]); got != 1 {
				t.Errorf("denial hits %v, want 1", got)
			}
			h.clock.advance(tt.lifetime)
			if _, ok := h.look(t, q); ok {
				t.Errorf("still kept after %v", tt.lifetime)
			}
		})
	}
}

func fmtSOA(format string, ttl, minimum int) string {
	return strings.Replace(strings.Replace(format, "%d", strconv.Itoa(ttl), 1), "%d", strconv.Itoa(minimum), 1)
}

// TestKeySeparation: the DO and CD bits and the class make separate
// entries; the letter case of the name does not.
func TestKeySeparation(t *testing.T) {
	h := newHarness(t, Options{})
	variant := func(name string, class uint16, do, cd bool) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.Question[0].Qclass = class
		m.CheckingDisabled = cd
		m.SetEdns0(1232, do)
		return m
	}
	h.pub.handler = func(q *dns.Msg) *dns.Msg {
		// Each variant gets an answer that says which it was.
		r := replyTo(q, dns.RcodeSuccess)
		txt := "do=" + strconv.Itoa(b2i(q.IsEdns0().Do())) + " cd=" + strconv.Itoa(b2i(q.CheckingDisabled)) + " class=" + strconv.Itoa(int(q.Question[0].Qclass))
		r.Answer = append(r.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeTXT, Class: q.Question[0].Qclass, Ttl: 300}, Txt: []string{txt}})
		return r
	}
	variants := []*dns.Msg{
		variant("www.example.com.", dns.ClassINET, false, false),
		variant("www.example.com.", dns.ClassINET, true, false),
		variant("www.example.com.", dns.ClassINET, false, true),
		variant("www.example.com.", dns.ClassCHAOS, false, false),
	}
	want := map[int]string{}
	for i, v := range variants {
		want[i] = h.mustAsk(t, parse(t, v)).Answer[0].(*dns.TXT).Txt[0]
	}
	if n := h.pub.queries.Load(); n != int64(len(variants)) {
		t.Fatalf("upstream got %d queries for %d variants: some shared an entry", n, len(variants))
	}
	for i, v := range variants {
		v.Question[0].Name = "WwW.ExAmPlE.cOm."
		r, ok := h.look(t, parse(t, v))
		if !ok {
			t.Fatalf("variant %d (case changed) missed", i)
		}
		if got := r.Answer[0].(*dns.TXT).Txt[0]; got != want[i] {
			t.Errorf("variant %d got %q, the answer of %q", i, want[i], got)
		}
		if r.Answer[0].Header().Name != "WwW.ExAmPlE.cOm." {
			t.Errorf("owner %q: the answer does not follow the client's spelling", r.Answer[0].Header().Name)
		}
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestNotKept: answers the upstream should not have given for the query,
// truncated ones, and SERVFAILs the sidecar makes itself stay out of the
// cache.
func TestNotKept(t *testing.T) {
	tests := []struct {
		name    string
		handler func(q *dns.Msg) *dns.Msg
		drops   float64
	}{
		{name: "another question", drops: 1, handler: func(q *dns.Msg) *dns.Msg {
			r := answerA(300)(q)
			r.Question[0].Name = "other.example.com."
			return r
		}},
		{name: "another type", drops: 1, handler: func(q *dns.Msg) *dns.Msg {
			r := answerA(300)(q)
			r.Question[0].Qtype = dns.TypeMX
			return r
		}},
		{name: "not a response", drops: 1, handler: func(q *dns.Msg) *dns.Msg {
			r := answerA(300)(q)
			r.Response = false
			return r
		}},
		{name: "truncated", handler: func(q *dns.Msg) *dns.Msg {
			r := answerA(300)(q)
			r.Truncated = true
			return r
		}},
		{name: "TTL 0", handler: answerA(0)},
		{name: "the sidecar's own SERVFAIL (a transport failure)", handler: func(*dns.Msg) *dns.Msg { return nil }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{})
			h.pub.handler = tt.handler
			q := query(t, "www.example.com.", dns.TypeA, true, false)
			_, _ = h.Exchange(context.Background(), q)
			if _, ok := h.look(t, q); ok {
				t.Error("kept")
			}
			_, _ = h.Exchange(context.Background(), q)
			if n := h.pub.queries.Load(); n != 2 {
				t.Errorf("upstream got %d queries, want 2", n)
			}
			if got := counter(h.m.drops); got != 2*tt.drops {
				t.Errorf("drops %v, want %v", got, 2*tt.drops)
			}
		})
	}
}

// TestServfail: an upstream's SERVFAIL is kept for ServfailTTL only, and not
// at all with 0.
func TestServfail(t *testing.T) {
	for _, ttl := range []time.Duration{5 * time.Second, 0} {
		h := newHarness(t, Options{ServfailTTL: ttl})
		h.pub.handler = func(q *dns.Msg) *dns.Msg { return replyTo(q, dns.RcodeServerFailure) }
		q := query(t, "broken.example.com.", dns.TypeA, true, false)
		if r := h.mustAsk(t, q); r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("rcode %d", r.Rcode)
		}
		r, ok := h.look(t, q)
		if ttl == 0 {
			if ok {
				t.Error("SERVFAIL kept with ServfailTTL 0")
			}
			continue
		}
		if !ok || r.Rcode != dns.RcodeServerFailure {
			t.Fatalf("SERVFAIL not kept: %v", r)
		}
		h.clock.advance(ttl)
		if _, ok := h.look(t, q); ok {
			t.Errorf("SERVFAIL kept past %v", ttl)
		}
	}
}

// TestBypass: a query with EDNS Client Subnet, a zone transfer and names
// the router answers itself neither come from nor go into the cache.
func TestBypass(t *testing.T) {
	h := newHarness(t, Options{})
	ecs := new(dns.Msg)
	ecs.SetQuestion("www.example.com.", dns.TypeA)
	ecs.SetEdns0(1232, false)
	ecs.IsEdns0().Option = append(ecs.IsEdns0().Option, &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: []byte{198, 51, 100, 0}})
	for name, q := range map[string]*dns.Msg{"ECS": ecs, "AXFR": new(dns.Msg).SetQuestion("example.com.", dns.TypeAXFR)} {
		before := h.pub.queries.Load()
		for range 2 {
			_, _ = h.ask(t, parse(t, q))
			if _, ok := h.look(t, parse(t, q)); ok {
				t.Errorf("%s: answered from the cache", name)
			}
		}
		if n := h.pub.queries.Load() - before; n != 2 {
			t.Errorf("%s: upstream got %d queries, want 2", name, n)
		}
	}
	// localhost is the router's: its answer is not kept.
	q := query(t, "localhost.", dns.TypeA, false, false)
	if r := h.mustAsk(t, q); len(r.Answer) != 1 {
		t.Fatalf("localhost: %v", r)
	}
	if _, ok := h.look(t, q); ok {
		t.Error("a local answer was kept")
	}
	if h.store.len() != 0 {
		t.Errorf("%d entries kept", h.store.len())
	}
}

// TestHitShaping: a hit is the client's: its ID, its EDNS or none, AD only
// when it set DO or AD, the upstream's COOKIE gone.
func TestHitShaping(t *testing.T) {
	h := newHarness(t, Options{})
	h.pub.handler = func(q *dns.Msg) *dns.Msg {
		r := answerA(300)(q)
		r.AuthenticatedData = true
		r.IsEdns0().Option = append(r.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0123456789abcdef0123456789abcdef"})
		return r
	}
	h.mustAsk(t, query(t, "www.example.com.", dns.TypeA, true, false))

	r, ok := h.look(t, query(t, "www.example.com.", dns.TypeA, false, false))
	if !ok || r.IsEdns0() != nil || r.AuthenticatedData {
		t.Errorf("client without EDNS nor AD: hit %v, answer %v", ok, r)
	}
	adq := new(dns.Msg)
	adq.SetQuestion("www.example.com.", dns.TypeA)
	adq.AuthenticatedData = true
	adq.SetEdns0(4096, false)
	r, ok = h.look(t, parse(t, adq))
	if !ok || !r.AuthenticatedData || r.IsEdns0() == nil || r.IsEdns0().UDPSize() != 1232 {
		t.Fatalf("client with EDNS and AD: hit %v, answer %v", ok, r)
	}
	for _, o := range r.IsEdns0().Option {
		if o.Option() == dns.EDNS0COOKIE {
			t.Errorf("the upstream's cookie reached another client: %v", o)
		}
	}
}

// TestLookupDoesNotAllocate: the hit path costs no allocation once its
// buffer has room.
func TestLookupDoesNotAllocate(t *testing.T) {
	h := newHarness(t, Options{PrefetchHits: 10})
	q := query(t, "www.example.com.", dns.TypeA, true, false)
	h.mustAsk(t, q)
	buf := make([]byte, 0, 512)
	allocs := testing.AllocsPerRun(1000, func() {
		out, ok := h.Lookup(buf[:0], &q)
		if !ok || len(out) == 0 {
			t.Fatal("miss")
		}
	})
	if allocs != 0 {
		t.Errorf("Lookup allocates %v times per hit", allocs)
	}
	miss := query(t, "nothing.example.com.", dns.TypeA, true, false)
	if allocs := testing.AllocsPerRun(1000, func() { _, _ = h.Lookup(buf[:0], &miss) }); allocs != 0 {
		t.Errorf("Lookup allocates %v times per miss", allocs)
	}
}
