package dnswire

import (
	"testing"

	"github.com/miekg/dns"
)

// FuzzDNSWire feeds arbitrary bytes to Parse: it must never panic, the
// offsets it reports must lie inside the message, and where miekg/dns also
// decodes the message the two must agree on the question and OPT record.
func FuzzDNSWire(f *testing.F) {
	seeds := []*dns.Msg{
		query("example.com.", dns.TypeA),
		withEDNS(query("example.org.", dns.TypeAAAA), 1232, true, &dns.EDNS0_LOCAL{Code: 65001, Data: []byte{1, 2}}),
		withEDNS(query("canary.dot-sidecar.invalid.", dns.TypeTXT), 4096, false),
	}
	for _, m := range seeds {
		f.Add(pack(f, m))
	}
	f.Add([]byte{})
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 0x0C, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		if m.End < HeaderLen || m.End > len(b) {
			t.Fatalf("End %d outside message of %d bytes", m.End, len(b))
		}
		// The message cut to End (what a relay forwards) is the same message.
		if cut, err := Parse(b[:m.End]); err != nil || cut != m {
			t.Fatalf("message cut to End parses as %+v, %v; whole: %+v", cut, err, m)
		}
		if m.QDCount > 0 && !(HeaderLen <= m.QNameStart && m.QNameStart < m.QNameEnd && m.QNameEnd+4 == m.QEnd && m.QEnd <= m.End) {
			t.Fatalf("question span %d:%d:%d outside message", m.QNameStart, m.QNameEnd, m.QEnd)
		}
		if m.HasOPT && !(m.QEnd <= m.OPTStart && m.OPTStart+11 <= m.OPTEnd && m.OPTEnd <= m.End) {
			t.Fatalf("OPT span %d:%d outside message", m.OPTStart, m.OPTEnd)
		}
		// A reply built from what Parse found must be a valid message.
		reply := AppendReply(nil, b, &m, dns.RcodeServerFailure, false, &EDNS{UDPSize: 1232, HasEDE: true, EDE: 22})
		if err := new(dns.Msg).Unpack(reply); err != nil {
			t.Fatalf("reply built from a parsed message does not unpack: %v", err)
		}

		ref := new(dns.Msg)
		if ref.Unpack(b) != nil {
			return // miekg/dns is stricter about record data; nothing to compare
		}
		if len(ref.Question) > 0 && (ref.Question[0].Qtype != m.QType || ref.Question[0].Qclass != m.QClass) {
			t.Fatalf("question %v, parsed type %d class %d", ref.Question[0], m.QType, m.QClass)
		}
		if opt := ref.IsEdns0(); opt != nil && m.HasOPT {
			if opt.UDPSize() != m.UDPSize || opt.Version() != m.Version || opt.Do() != m.DO() {
				t.Fatalf("OPT %v, parsed size %d version %d DO %v", opt, m.UDPSize, m.Version, m.DO())
			}
		}
	})
}
