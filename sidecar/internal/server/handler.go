package server

import (
	"errors"
	"fmt"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
	"github.com/miekg/dns"
)

type proto int

const (
	protoUDP proto = iota
	protoTCP
	numProtos
)

func (p proto) String() string {
	if p == protoTCP {
		return "tcp"
	}
	return "udp"
}

// result is what answer decided for one message.
type result struct {
	reply     []byte // nil: send nothing
	rcode     int    // full (extended) response code of reply
	malformed bool   // the message was not a well-formed query
	truncated bool   // reply was cut to fit the client's UDP size
	err       error  // why the upstream gave no answer, for the debug log
}

// answer decides the reply to one message received over p. It is the whole
// protocol logic, free of sockets, so that the fuzz target and the
// benchmark drive exactly what the listeners do.
func (s *Server) answer(msg []byte, p proto) result { return s.decide(msg, p, nil) }

// shed answers a message that came when the server was full: the protocol
// rules and the canary as usual, but SERVFAIL instead of asking upstream.
func (s *Server) shed(msg []byte, p proto) result { return s.decide(msg, p, errOverloaded) }

// decide applies the protocol rules to msg, then asks the upstream, unless
// refuse is set: then the query fails with it.
func (s *Server) decide(msg []byte, p proto, refuse error) result {
	m, perr := dnswire.Parse(msg)
	switch {
	case errors.Is(perr, dnswire.ErrShort):
		return result{malformed: true}
	case m.Response():
		// Answering a response could start a loop between two servers.
		return result{malformed: true}
	case m.Opcode() != dns.OpcodeQuery:
		return s.local(msg, &m, dns.RcodeNotImplemented, noEDE, "")
	case perr != nil, m.QDCount != 1:
		r := s.local(msg, &m, dns.RcodeFormatError, noEDE, "")
		r.malformed = true
		return r
	case m.HasOPT && m.Version > 0:
		return s.local(msg, &m, dns.RcodeBadVers, noEDE, "")
	case isCanary(msg, &m):
		return s.canary(msg, &m)
	case refuse != nil:
		s.m.overloaded.Inc()
		return s.fail(msg, &m, refuse)
	}
	resp, err := s.up.Exchange(s.deadlines.get(), msg[:m.End])
	if err != nil {
		return s.fail(msg, &m, err)
	}
	return s.relay(msg, &m, resp, p)
}

// noEDE tells local to add no Extended DNS Error.
const noEDE = -1

// local builds a reply without records, with an Extended DNS Error (ede,
// text) unless ede is noEDE.
func (s *Server) local(msg []byte, m *dnswire.Message, rcode int, ede int, text string) result {
	var e *dnswire.EDNS
	if m.HasOPT {
		e = &dnswire.EDNS{UDPSize: uint16(s.opts.UDPMaxSize), DO: m.DO(), HasEDE: ede != noEDE, EDE: uint16(ede), EDEText: text}
	}
	return result{reply: dnswire.AppendReply(make([]byte, 0, 64), msg, m, rcode, false, e), rcode: rcode}
}

func (s *Server) fail(msg []byte, m *dnswire.Message, err error) result {
	rcode, ede, text := failure(err)
	r := s.local(msg, m, rcode, ede, text)
	r.err = err
	r.malformed = rcode == dns.RcodeFormatError
	return r
}

// relay turns the upstream's answer into the client's: the client's ID, no
// OPT record unless the client sent one, and no larger than the client can
// take over UDP.
func (s *Server) relay(msg []byte, qm *dnswire.Message, resp []byte, p proto) result {
	rm, err := dnswire.Parse(resp)
	if err != nil {
		return s.fail(msg, qm, fmt.Errorf("%w: %w", upstream.ErrBadResponse, err))
	}
	if !rm.Response() {
		return s.fail(msg, qm, fmt.Errorf("%w: QR bit clear", upstream.ErrBadResponse))
	}
	resp = resp[:rm.End]
	dnswire.SetID(resp, qm.ID)
	if rm.HasOPT && !qm.HasOPT {
		// RFC 6891 §7: no OPT in the answer to a query without one. The
		// upstream may have added one (EDNS padding on the TLS leg).
		if rm.ExtRcode != 0 {
			return s.fail(msg, qm, fmt.Errorf("%w: extended rcode in answer to a query without EDNS", upstream.ErrBadResponse))
		}
		if resp, err = stripOPT(resp, &rm); err != nil {
			return s.fail(msg, qm, err)
		}
	}
	r := result{reply: resp, rcode: rm.Rcode()}
	limit := dnswire.MaxMsgSize
	if p == protoUDP {
		limit = s.udpLimit(qm)
	}
	if len(resp) > limit {
		if p != protoUDP {
			return s.fail(msg, qm, fmt.Errorf("%w: %d bytes", upstream.ErrBadResponse, len(resp)))
		}
		r.reply = s.truncate(msg, qm, resp, rm.Rcode(), limit)
		// An answer the upstream did not compress may fit whole once
		// compressed: it is not truncated then, and says so (no TC).
		h, _ := dnswire.ParseHeader(r.reply)
		r.truncated = h.Truncated()
	}
	return r
}

// udpLimit is the largest UDP answer the client can take (RFC 6891 §6.2.5:
// sizes below 512 count as 512), capped by UDPMaxSize.
func (s *Server) udpLimit(m *dnswire.Message) int {
	if !m.HasOPT {
		return dnswire.MinUDPSize
	}
	return min(max(int(m.UDPSize), dnswire.MinUDPSize), s.opts.UDPMaxSize)
}

// truncate cuts an answer to limit bytes, keeping whole records and the OPT
// record, and sets TC so that the client asks again over TCP. If the answer
// cannot be cut record by record, the client gets the question alone with TC
// set, which sends it to TCP just as well.
func (s *Server) truncate(msg []byte, qm *dnswire.Message, resp []byte, rcode, limit int) []byte {
	m := new(dns.Msg)
	if m.Unpack(resp) == nil {
		m.Truncate(limit)
		if out, err := m.Pack(); err == nil && len(out) <= limit {
			return out
		}
	}
	var e *dnswire.EDNS
	if qm.HasOPT {
		e = &dnswire.EDNS{UDPSize: uint16(s.opts.UDPMaxSize), DO: qm.DO()}
	}
	return dnswire.AppendReply(nil, msg, qm, rcode, true, e)
}

// stripOPT removes the OPT record from an answer, in place when it is the
// last record (nearly always), else by decoding and encoding the answer.
func stripOPT(resp []byte, rm *dnswire.Message) ([]byte, error) {
	if out, ok := dnswire.StripOPT(resp, rm); ok {
		return out, nil
	}
	m := new(dns.Msg)
	if err := m.Unpack(resp); err != nil {
		return nil, fmt.Errorf("%w: %w", upstream.ErrBadResponse, err)
	}
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	m.Extra = extra
	m.Compress = true
	out, err := m.Pack()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", upstream.ErrBadResponse, err)
	}
	return out, nil
}

// qname renders the question's name for logs.
func qname(msg []byte, m *dnswire.Message) string {
	if m.QEnd == 0 {
		return ""
	}
	name, _, err := dns.UnpackDomainName(msg, m.QNameStart)
	if err != nil {
		return "?"
	}
	return name
}
