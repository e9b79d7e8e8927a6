package server

import (
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/miekg/dns"
)

// The canary proves interception: `dot-sidecar check` asks for it from the
// application's side, and only the sidecar answers it (the name is under
// .invalid, RFC 6761, so no real resolver has data for it). No upstream is
// involved, so the check works before any upstream is reachable.
const (
	CanaryName = "canary.dot-sidecar.invalid."
	// CanaryText is the text of the canary's TXT record; `check` looks for
	// its "dot-sidecar " prefix.
	CanaryText = "dot-sidecar intercepted"
)

// canaryWire is CanaryName in lower-case wire form.
var canaryWire = []byte("\x06canary\x0bdot-sidecar\x07invalid\x00")

func isCanary(msg []byte, m *dnswire.Message) bool {
	return dnswire.EqualName(msg[m.QNameStart:m.QNameEnd], canaryWire)
}

// canary answers the canary name: one TXT record with TTL 0 for class IN
// type TXT, NOERROR with no records for any other type.
func (s *Server) canary(msg []byte, m *dnswire.Message) result {
	// The client's spelling of the name is echoed, case included.
	name, _, err := dns.UnpackDomainName(msg, m.QNameStart)
	if err != nil {
		return s.local(msg, m, dns.RcodeFormatError, noEDE, "")
	}
	r := new(dns.Msg)
	r.Id = m.ID
	r.Response = true
	r.Authoritative = true
	r.RecursionDesired = m.RecursionDesired()
	r.RecursionAvailable = true
	r.Question = []dns.Question{{Name: name, Qtype: m.QType, Qclass: m.QClass}}
	if m.QType == dns.TypeTXT && m.QClass == dns.ClassINET {
		r.Answer = []dns.RR{&dns.TXT{
			Hdr: dns.RR_Header{Name: name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 0},
			Txt: []string{CanaryText},
		}}
	}
	if m.HasOPT {
		r.SetEdns0(uint16(s.opts.UDPMaxSize), m.DO())
	}
	out, err := r.Pack()
	if err != nil {
		return s.local(msg, m, dns.RcodeServerFailure, noEDE, "")
	}
	return result{reply: out, rcode: dns.RcodeSuccess}
}
