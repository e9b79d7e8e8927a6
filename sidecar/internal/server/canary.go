package server

import "github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"

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

// canaryTXT is the canary's answer to TXT queries. TTL 0: no cache between
// the application and the sidecar should remember which sidecar answered.
var canaryTXT = dnswire.TXT(0, CanaryText)

func isCanary(q *dnswire.Msg) bool { return dnswire.EqualName(q.QName(), canaryWire) }

// canary answers the canary name with authority: one TXT record for class
// IN type TXT, NOERROR with no records for any other type. The client's
// spelling of the name is echoed, case included.
func (s *Server) canary(q *dnswire.Msg) result {
	rep := dnswire.Reply{Authoritative: true, EDNS: dnswire.ReplyEDNS(q, uint16(s.opts.UDPMaxSize))}
	if q.QType() == dnswire.TypeTXT && q.QClass() == dnswire.ClassINET {
		rep.Answer = []dnswire.Record{canaryTXT}
	}
	return result{reply: dnswire.AppendReply(nil, q, rep), rcode: dnswire.RcodeSuccess}
}
