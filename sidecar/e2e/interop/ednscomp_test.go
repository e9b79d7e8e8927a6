package interop

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/unboundtest"
)

// The probes of ISC's EDNS compliance reports (ednscomp, the genreport
// tool) and of RFC 8906 §8, which describes them, sent to the relay and,
// the same bytes, to Unbound as the reference resolver. Where the relay
// answers by itself (an unknown opcode, EDNS version 1, malformed queries,
// a route that cannot be reached, the special-use names), its answer must
// equal Unbound's field by field: rcode, header flags, OPT record and
// question, and the kinds of records in each section (the records' data
// differ: the relay's special-use zones have TTLs and SOAs of their own).
// Where the relay forwards, Unbound's answer to it must reach the client as
// Unbound sends it directly, record for record. The few fields where the
// relay deliberately answers otherwise are listed per probe, with the
// relay's value and the reason.
//
// The probes set RD, as a stub resolver does and RFC 8906 §8 asks of tests
// of recursive servers (ISC's own, meant for authoritative servers, clear
// it); one probe clears it.

// ednscompZone is a zone served with RRSIG records, for the "signed" probe:
// Unbound serves it from a zone file (auth-zone), so that the signatures
// come back for DO queries as a signed zone's would. Nothing validates them.
const ednscompZone = `signed.example. 3600 IN SOA ns.signed.example. hostmaster.signed.example. 1 3600 600 86400 60
signed.example. 3600 IN RRSIG SOA 13 2 3600 20300101000000 20200101000000 12345 signed.example. dGVzdHNpZ25hdHVyZXRlc3RzaWduYXR1cmV0ZXN0c2lnbmF0dXJldGVzdHNpZ25hdHVyZXRlc3RzaWduYQ==
signed.example. 3600 IN NS ns.signed.example.
signed.example. 3600 IN RRSIG NS 13 2 3600 20300101000000 20200101000000 12345 signed.example. dGVzdHNpZ25hdHVyZXRlc3RzaWduYXR1cmV0ZXN0c2lnbmF0dXJldGVzdHNpZ25hdHVyZXRlc3RzaWduYQ==
ns.signed.example. 3600 IN A 192.0.2.53
`

// ednsProbe is one probe and what it demands.
type ednsProbe struct {
	name   string
	qname  string
	qtype  uint16
	mod    func(*dns.Msg)         // the query, as miekg/dns builds it
	raw    func(b []byte) []byte  // its wire form, for what miekg/dns will not build
	tcp    bool                   // sent over TCP (else UDP)
	local  bool                   // the relay answers itself, Unbound never sees it
	cut    bool                   // the answer exceeds the client's 512 bytes: records are not compared
	expect map[string]string      // what the probe's description demands, of both answers
	differ map[string]fieldReason // where the relay deliberately differs from Unbound
}

// fieldReason is the relay's value of a field where it differs from
// Unbound's, and why.
type fieldReason struct{ relay, why string }

// The reasons for the few differences, each the same for every probe it
// applies to.
const (
	whyEcho = "Unbound rejects this message in its first checks by echoing the query back with QR and the rcode set, OPT record (options, version, payload size) included; the relay writes a reply of its own, whose OPT record echoes no option (RFC 6891 §6.1.2: ednscomp counts an echoed option as a fault) and advertises its own size, as BIND does"
	whyQD   = "Unbound echoes the two questions it refused; the relay returns no question it did not read as the query's"
	whyRA   = "Unbound sets RA in the FORMERR of its EDNS parser and not in that of its first checks; the relay never sets RA in a FORMERR or NOTIMP, which are no queries it serves (BIND sets RA for opcode QUERY only)"
)

// ednsProbes are ISC's probe set, then the relay's other local answers.
var ednsProbes = []ednsProbe{
	// Plain DNS, no EDNS: no OPT record in the answer.
	{name: "dns", qname: "bench.test.", qtype: dns.TypeSOA,
		expect: map[string]string{"rcode": "NOERROR", "OPT": "false", "answer": "SOA"}},
	{name: "dns, RD clear", qname: "bench.test.", qtype: dns.TypeSOA, mod: func(m *dns.Msg) { m.RecursionDesired = false },
		expect: map[string]string{"rcode": "NOERROR", "RD": "false", "answer": "SOA"}},
	// EDNS version 0: an OPT record of version 0 comes back.
	{name: "edns", qname: "bench.test.", qtype: dns.TypeSOA, mod: withEDNS(4096, false),
		expect: map[string]string{"rcode": "NOERROR", "OPT": "true", "version": "0", "answer": "SOA"}},
	// EDNS version 1: BADVERS, version 0, and no answer.
	{name: "edns1", qname: "bench.test.", qtype: dns.TypeSOA, mod: mods(withEDNS(4096, false), withVersion(1)), local: true,
		expect: map[string]string{"rcode": "BADVERS", "OPT": "true", "version": "0", "answer": ""}},
	// A DO query advertising 512 bytes for a large answer: it fits in
	// 512 bytes or comes with TC.
	{name: "edns@512", qname: "big.bench.test.", qtype: dns.TypeTXT, mod: withEDNS(512, true), cut: true,
		expect: map[string]string{"TC": "true", "OPT": "true", "DO": "true"}},
	// An unknown option (100): ignored, not echoed.
	{name: "ednsopt", qname: "bench.test.", qtype: dns.TypeSOA, mod: mods(withEDNS(4096, false), withOption(100)),
		expect: map[string]string{"rcode": "NOERROR", "options": "", "answer": "SOA"}},
	// Version 1 and an unknown option: BADVERS, the option not echoed.
	{name: "edns1opt", qname: "bench.test.", qtype: dns.TypeSOA, mod: mods(withEDNS(4096, false), withVersion(1), withOption(100)), local: true,
		expect: map[string]string{"rcode": "BADVERS", "version": "0", "options": "", "answer": ""}},
	// DO set: echoed.
	{name: "do", qname: "bench.test.", qtype: dns.TypeSOA, mod: withEDNS(4096, true),
		expect: map[string]string{"rcode": "NOERROR", "DO": "true", "answer": "SOA"}},
	// An unknown EDNS flag: ignored, not echoed (the flags must be zero).
	{name: "ednsflags", qname: "bench.test.", qtype: dns.TypeSOA, mod: mods(withEDNS(4096, false), withZ(0x40)),
		expect: map[string]string{"rcode": "NOERROR", "zflags": "0", "answer": "SOA"}},
	// The options in common use together: NSID, Client Subnet, EXPIRE, a
	// client cookie.
	{name: "optlist", qname: "bench.test.", qtype: dns.TypeSOA, mod: mods(withEDNS(4096, false), withOptList),
		expect: map[string]string{"rcode": "NOERROR", "OPT": "true", "answer": "SOA"}},
	// A signed zone with DO: the signatures come back.
	{name: "signed", qname: "signed.example.", qtype: dns.TypeSOA, mod: withEDNS(4096, true),
		expect: map[string]string{"rcode": "NOERROR", "DO": "true", "answer": "SOA RRSIG"}},
	// EDNS over TCP.
	{name: "ednstcp", qname: "bench.test.", qtype: dns.TypeSOA, mod: withEDNS(4096, false), tcp: true,
		expect: map[string]string{"rcode": "NOERROR", "OPT": "true", "answer": "SOA"}},
	// An unknown opcode: NOTIMP, no answer.
	{name: "opcode", qname: "bench.test.", qtype: dns.TypeSOA, mod: withOpcode(15), local: true,
		expect: map[string]string{"rcode": "NOTIMP", "answer": "", "RA": "false"}},
	{name: "opcode, EDNS with an option", qname: "bench.test.", qtype: dns.TypeSOA, mod: mods(withOpcode(15), withEDNS(4096, true), withOption(100)), local: true,
		expect: map[string]string{"rcode": "NOTIMP", "answer": "", "RA": "false", "OPT": "true", "DO": "true"},
		differ: map[string]fieldReason{"options": {"", whyEcho}, "udpsize": {"1232", whyEcho}}},
	// An unknown type: no data, the SOA in the authority section.
	{name: "type666", qname: "bench.test.", qtype: 666,
		expect: map[string]string{"rcode": "NOERROR", "answer": "", "authority": "SOA"}},

	// Malformed queries: FORMERR.
	{name: "no question", qname: "bench.test.", qtype: dns.TypeSOA, mod: func(m *dns.Msg) { m.Question = nil }, local: true,
		expect: map[string]string{"rcode": "FORMERR", "RA": "false", "question": ""}},
	{name: "no question, EDNS", qname: "bench.test.", qtype: dns.TypeSOA, mod: mods(func(m *dns.Msg) { m.Question = nil }, withEDNS(1232, true)), local: true,
		expect: map[string]string{"rcode": "FORMERR", "OPT": "true", "DO": "true"}},
	{name: "two questions", qname: "bench.test.", qtype: dns.TypeSOA, mod: func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) }, local: true,
		expect: map[string]string{"rcode": "FORMERR", "RA": "false"},
		differ: map[string]fieldReason{"question": {"", whyQD}}},
	{name: "two OPT records", qname: "bench.test.", qtype: dns.TypeSOA, mod: mods(withEDNS(4096, false), func(m *dns.Msg) { m.Extra = append(m.Extra, m.Extra[0]) }), local: true,
		expect: map[string]string{"rcode": "FORMERR", "OPT": "true", "version": "0"},
		differ: map[string]fieldReason{"udpsize": {"1232", whyEcho}, "additional": {"", whyEcho}}},
	{name: "OPT not owned by the root", qname: "bench.test.", qtype: dns.TypeSOA, mod: mods(withEDNS(1232, true), func(m *dns.Msg) { m.Extra[0].Header().Name = "bench.test." }), local: true,
		expect: map[string]string{"rcode": "FORMERR", "OPT": "true", "version": "0", "DO": "false"},
		differ: map[string]fieldReason{"RA": {"false", whyRA}}},

	// The special-use names the router answers, and a route it cannot reach.
	{name: "localhost", qname: "localhost.", qtype: dns.TypeA, local: true,
		expect: map[string]string{"rcode": "NOERROR", "AA": "true", "RA": "true", "answer": "A"}},
	{name: "localhost, DO and CD", qname: "localhost.", qtype: dns.TypeAAAA, mod: mods(withEDNS(4096, true), func(m *dns.Msg) { m.CheckingDisabled = true }), local: true,
		expect: map[string]string{"rcode": "NOERROR", "AA": "true", "CD": "true", "AD": "false", "DO": "true", "answer": "AAAA"}},
	{name: "localhost, class CH", qname: "localhost.", qtype: dns.TypeA, mod: func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS }, local: true,
		expect: map[string]string{"rcode": "REFUSED", "AA": "false"}},
	{name: "invalid", qname: "name.invalid.", qtype: dns.TypeA, mod: withEDNS(1232, false), local: true,
		expect: map[string]string{"rcode": "NXDOMAIN", "AA": "true", "authority": "SOA"}},
	{name: "private reverse", qname: "1.0.0.10.in-addr.arpa.", qtype: dns.TypePTR, local: true,
		expect: map[string]string{"rcode": "NXDOMAIN", "AA": "true", "authority": "SOA"}},
	{name: "unreachable route", qname: "x.dead.example.", qtype: dns.TypeA, mod: withEDNS(1232, true), local: true,
		expect: map[string]string{"rcode": "SERVFAIL", "AA": "false", "RA": "true", "DO": "true"}},
}

func TestEDNSCompliance(t *testing.T) {
	t.Parallel()
	zone := filepath.Join(t.TempDir(), "signed.example.zone")
	if err := os.WriteFile(zone, []byte(ednscompZone), 0o644); err != nil {
		t.Fatal(err)
	}
	big := make([]string, 20)
	for i := range big {
		big[i] = fmt.Sprintf(`local-data: 'big.bench.test. 3600 IN TXT "record %02d %s"'`, i, strings.Repeat("x", 60))
	}
	u := unboundtest.Start(t, unboundtest.Options{
		Names: 3, Plain: true, LogQueries: true,
		ExtraConfig: append(big,
			// Out of the static root zone: resolved through the clauses.
			`local-zone: "signed.example." transparent`,
			`local-zone: "dead.example." transparent`),
		Clauses: []string{
			"auth-zone:", `	name: "signed.example."`, `	zonefile: "` + zone + `"`,
			"	for-downstream: yes", "	for-upstream: no",
			// A resolver that cannot reach the zone's servers:
			// do-not-query-localhost leaves the forwarder no address.
			"forward-zone:", `	name: "dead.example."`, "	forward-addr: 127.0.0.1@1",
		},
	})
	// The relay as deployed, and without its cache: only then does every
	// probe it forwards reach Unbound, which its query log proves. With
	// the cache, each probe is asked twice, and an answer from the cache
	// must be as good as a relayed one.
	for _, relay := range []struct {
		name  string
		cache bool
	}{{"without cache", false}, {"with cache", true}} {
		t.Run(relay.name, func(t *testing.T) {
			env := []string{
				fmt.Sprintf("UPSTREAMS=tls://%s#%s", u.Addr, u.ServerName),
				"TLS_CA_FILE=" + u.CAFile,
				"ROUTES=dead.example=tls://127.0.0.1:1#dead.example",
				"RETRY_MAX_ATTEMPTS=1",
			}
			if !relay.cache {
				env = append(env, "CACHE_SIZE=0")
			}
			s := bintest.Start(t, env...)
			var matrix []string
			for _, p := range ednsProbes {
				t.Run(p.name, func(t *testing.T) {
					q := p.query(t)
					asks := 1
					if relay.cache {
						asks = 2
					}
					var relayRaws [][]byte
					before := countQueries(t, u, p.qname)
					for range asks {
						relayRaws = append(relayRaws, exchangeRaw(t, p.network(), s.DNS, q))
					}
					reached := countQueries(t, u, p.qname) - before
					unboundRaw := exchangeRaw(t, p.network(), u.PlainAddr, q)
					switch {
					case p.local && reached != 0:
						t.Errorf("the relay sent %d queries upstream for a probe it answers itself", reached)
					case !p.local && !relay.cache && reached == 0:
						t.Errorf("the relay answered a probe it forwards by itself")
					}
					for _, relayRaw := range relayRaws {
						rf, uf := p.compare(t, q, relayRaw, unboundRaw)
						matrix = append(matrix, p.matrixLine(rf, uf))
					}
				})
			}
			t.Logf("probe matrix, relay %s:\n%s", relay.name, strings.Join(slices.Compact(matrix), "\n"))
		})
	}
}

func (p *ednsProbe) network() string {
	if p.tcp {
		return "tcp"
	}
	return "udp"
}

// compare checks the relay's answer to query q against Unbound's and the
// probe's demands, and returns the fields of both.
func (p *ednsProbe) compare(t *testing.T, q, relayRaw, unboundRaw []byte) (rf, uf map[string]string) {
	t.Helper()
	relay, unbound := mustUnpack(t, relayRaw), mustUnpack(t, unboundRaw)
	rf, uf = fieldsOf(relay, p.local || p.cut), fieldsOf(unbound, p.local || p.cut)
	for _, k := range fieldNames {
		if p.cut && slices.Contains(sectionFields, k) {
			continue // each cuts the answer its own way
		}
		if d, ok := p.differ[k]; ok {
			if rf[k] != d.relay {
				t.Errorf("%s: relay %q, want %q (%s)", k, rf[k], d.relay, d.why)
			}
			continue
		}
		if rf[k] != uf[k] {
			t.Errorf("%s: relay %q, Unbound %q", k, rf[k], uf[k])
		}
	}
	for k, want := range p.expect {
		if rf[k] != want {
			t.Errorf("%s: relay %q, the probe wants %q", k, rf[k], want)
		}
	}
	if leaked := echoedOptions(q, relay); leaked != "" {
		t.Errorf("the relay echoed the query's options %s", leaked)
	}
	if p.cut {
		for who, b := range map[string][]byte{"relay": relayRaw, "Unbound": unboundRaw} {
			if len(b) > 512 {
				t.Errorf("%s: %d bytes for a client of 512", who, len(b))
			}
		}
	}
	return rf, uf
}

// matrixLine is the probe's line in the matrix the test logs.
func (p *ednsProbe) matrixLine(rf, uf map[string]string) string {
	path := "forwarded"
	if p.local {
		path = "local"
	}
	var diffs []string
	for k := range p.differ {
		diffs = append(diffs, fmt.Sprintf("%s relay %q Unbound %q", k, rf[k], uf[k]))
	}
	slices.Sort(diffs)
	return fmt.Sprintf("%-28s %-9s relay %-34s Unbound %-34s %s",
		p.name, path, matrixCell(rf), matrixCell(uf), strings.Join(diffs, "; "))
}

// query builds the probe's message with a fresh ID.
func (p *ednsProbe) query(t *testing.T) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(p.qname, p.qtype)
	m.Id = dns.Id()
	if p.mod != nil {
		p.mod(m)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("packing the probe: %v", err)
	}
	if p.raw != nil {
		b = p.raw(b)
	}
	return b
}

func mods(mods ...func(*dns.Msg)) func(*dns.Msg) {
	return func(m *dns.Msg) {
		for _, f := range mods {
			f(m)
		}
	}
}

func withEDNS(size uint16, do bool) func(*dns.Msg) {
	return func(m *dns.Msg) { m.SetEdns0(size, do) }
}

func withVersion(v uint8) func(*dns.Msg) { return func(m *dns.Msg) { m.IsEdns0().SetVersion(v) } }

func withZ(z uint16) func(*dns.Msg) { return func(m *dns.Msg) { m.IsEdns0().SetZ(z) } }

func withOpcode(op int) func(*dns.Msg) { return func(m *dns.Msg) { m.Opcode = op } }

func withOption(code uint16) func(*dns.Msg) {
	return func(m *dns.Msg) {
		o := m.IsEdns0()
		o.Option = append(o.Option, &dns.EDNS0_LOCAL{Code: code, Data: []byte{1, 2, 3, 4}})
	}
}

func withOptList(m *dns.Msg) {
	o := m.IsEdns0()
	o.Option = append(o.Option,
		&dns.EDNS0_NSID{Code: dns.EDNS0NSID},
		&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, Address: net.IPv4zero.To4()},
		&dns.EDNS0_EXPIRE{Code: dns.EDNS0EXPIRE, Empty: true},
		&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
}

// ask sends msg over network to addr and returns the raw answer.
func exchangeRaw(t *testing.T, network, addr string, msg []byte) []byte {
	t.Helper()
	c, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	dc := &dns.Conn{Conn: c, UDPSize: 65535}
	if _, err := dc.Write(msg); err != nil {
		t.Fatalf("writing the probe to %s: %v", addr, err)
	}
	b, err := dc.ReadMsgHeader(nil)
	if err != nil {
		t.Fatalf("no answer from %s over %s: %v", addr, network, err)
	}
	return b
}

func mustUnpack(t *testing.T, b []byte) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatalf("answer does not unpack: %v\n% x", err, b)
	}
	return m
}

// countQueries returns how many queries for name Unbound has received.
func countQueries(t *testing.T, u *unboundtest.Server, name string) int {
	t.Helper()
	qs, err := u.Queries()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, q := range qs {
		if strings.EqualFold(q.Name, name) {
			n++
		}
	}
	return n
}

// sectionFields describe the records of an answer.
var sectionFields = []string{"answer", "authority", "additional", "records"}

// fieldNames are the fields compared, in the order reported.
var fieldNames = []string{
	"rcode", "QR", "AA", "TC", "RD", "RA", "AD", "CD", "Z",
	"OPT", "version", "DO", "zflags", "udpsize", "options",
	"question", "answer", "authority", "additional", "records",
}

// fieldsOf reads the compared fields of an answer. The record data
// (records) count only for answers that should be the same bytes: not for
// local ones nor for truncated ones, each cut its own way.
func fieldsOf(m *dns.Msg, shapeOnly bool) map[string]string {
	f := map[string]string{
		"rcode": rcodeText(m.Rcode),
		"QR":    strconv.FormatBool(m.Response),
		"AA":    strconv.FormatBool(m.Authoritative),
		"TC":    strconv.FormatBool(m.Truncated),
		"RD":    strconv.FormatBool(m.RecursionDesired),
		"RA":    strconv.FormatBool(m.RecursionAvailable),
		"AD":    strconv.FormatBool(m.AuthenticatedData),
		"CD":    strconv.FormatBool(m.CheckingDisabled),
		"Z":     strconv.FormatBool(m.Zero),
	}
	var qs []string
	for _, q := range m.Question {
		qs = append(qs, q.String())
	}
	f["question"] = strings.Join(qs, " ")
	types := func(rrs []dns.RR) string {
		var ts []string
		for _, rr := range rrs {
			if rr.Header().Rrtype != dns.TypeOPT {
				ts = append(ts, dns.TypeToString[rr.Header().Rrtype])
			}
		}
		return strings.Join(ts, " ")
	}
	f["answer"], f["authority"], f["additional"] = types(m.Answer), types(m.Ns), types(m.Extra)
	if !shapeOnly {
		var rs []string
		for _, rr := range slices.Concat(m.Answer, m.Ns, m.Extra) {
			if rr.Header().Rrtype != dns.TypeOPT {
				rs = append(rs, rr.String())
			}
		}
		f["records"] = strings.Join(rs, "\n")
	}
	// An answer with two OPT records (Unbound echoing such a query) counts
	// the second among the additional records.
	opts := 0
	for _, rr := range m.Extra {
		if rr.Header().Rrtype == dns.TypeOPT {
			if opts++; opts > 1 {
				f["additional"] = strings.TrimSpace(f["additional"] + " OPT")
			}
		}
	}
	o := m.IsEdns0()
	f["OPT"] = strconv.FormatBool(o != nil)
	if o == nil {
		return f
	}
	f["version"] = strconv.Itoa(int(o.Version()))
	f["DO"] = strconv.FormatBool(o.Do())
	f["zflags"] = strconv.Itoa(int(o.Z()))
	f["udpsize"] = strconv.Itoa(int(o.UDPSize()))
	var codes []string
	for _, op := range o.Option {
		// An Extended DNS Error is the server's own diagnosis, no echo.
		if op.Option() != dns.EDNS0EDE {
			codes = append(codes, strconv.Itoa(int(op.Option())))
		}
	}
	slices.Sort(codes)
	f["options"] = strings.Join(codes, " ")
	return f
}

// echoedOptions lists the options of the query that come back in the
// answer.
func echoedOptions(query []byte, ans *dns.Msg) string {
	q := new(dns.Msg)
	if q.Unpack(query) != nil || q.IsEdns0() == nil || ans.IsEdns0() == nil {
		return ""
	}
	var echoed []string
	for _, a := range ans.IsEdns0().Option {
		for _, o := range q.IsEdns0().Option {
			if a.Option() == o.Option() {
				echoed = append(echoed, strconv.Itoa(int(a.Option())))
			}
		}
	}
	return strings.Join(echoed, " ")
}

func rcodeText(rc int) string {
	if rc == dns.RcodeBadVers {
		return "BADVERS" // miekg/dns names 16 after TSIG's BADSIG
	}
	return dns.RcodeToString[rc]
}

// summary is one answer in a line of the matrix.
func matrixCell(f map[string]string) string {
	var flags []string
	for _, k := range []string{"AA", "TC", "RD", "RA", "AD", "CD"} {
		if f[k] == "true" {
			flags = append(flags, strings.ToLower(k))
		}
	}
	s := f["rcode"] + " " + strings.Join(flags, ",")
	if f["OPT"] == "true" {
		s += fmt.Sprintf(" OPT v%s", f["version"])
		if f["DO"] == "true" {
			s += " do"
		}
	}
	return s
}
