package server

import (
	"errors"
	"fmt"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
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

// result is what the server decided for one message.
type result struct {
	query     dnswire.Msg // the message as parsed, for the log
	reply     []byte      // nil: send nothing
	rcode     int         // full (extended) response code of reply
	malformed bool        // the message was not a well-formed query
	truncated bool        // reply was cut to fit the client's UDP size
	err       error       // why the upstream gave no answer, for the debug log
}

// maxQuerySize bounds what a query in flight keeps: its header, question
// and OPT record (dnswire.Msg.AppendCompact). No query a client makes comes
// near it (an RFC 8467 padded one is a few hundred bytes); one that does
// gets FORMERR, so that a query in flight never holds more than this.
const maxQuerySize = 4096

// answer decides the reply to one message received over p, as the
// listeners do: early, admission, then forward. It is the whole protocol
// logic, free of sockets, so that the fuzz target and the benchmark drive
// exactly what the listeners do.
func (s *Server) answer(msg []byte, p proto) result {
	q, perr := dnswire.Parse(msg)
	if r, done := s.early(&q, perr, p, nil); done {
		return r
	}
	b := s.adm.admit()
	if b == nil {
		return s.overloaded(&q)
	}
	defer s.adm.release(b)
	return s.forward(b, q, p)
}

// early decides what the listener answers by itself, in its read loop,
// before a goroutine or an in-flight slot is taken for the query: the
// protocol rules, the canary, and the cache's hits (written into dst's
// room). q and perr are what dnswire.Parse made of the message, the one
// time the server parses it. done false: the query goes to the upstream
// (admission, then forward), and the listener keeps it in compact form
// only.
func (s *Server) early(q *dnswire.Msg, perr error, p proto, dst []byte) (r result, done bool) {
	switch {
	case errors.Is(perr, dnswire.ErrShort):
		r = result{malformed: true}
	case q.Response():
		// Answering a response could start a loop between two servers.
		r = result{malformed: true}
	case q.Opcode() != dnswire.OpcodeQuery:
		r = s.local(q, dnswire.RcodeNotImplemented, noEDE, "")
	case perr != nil, q.QDCount != 1:
		r = s.local(q, dnswire.RcodeFormatError, noEDE, "")
		r.malformed = true
	case q.HasOPT() && q.EDNSVersion() > 0:
		r = s.local(q, dnswire.RcodeBadVers, noEDE, "")
	case q.CompactLen() > maxQuerySize:
		r = s.local(q, dnswire.RcodeFormatError, dnswire.EDEOther, "query too large")
		r.malformed = true
	case isCanary(q):
		r = s.canary(q)
	case s.cache == nil:
		return result{}, false
	default:
		reply, hit := s.cache.Lookup(dst, q)
		if !hit {
			return result{}, false
		}
		// Kept answers carry no extended rcode: the header's is whole.
		h, _ := dnswire.ReadHeader(reply)
		r = s.fit(q, reply, h.Rcode(), p)
	}
	r.query = *q
	return r, true
}

// overloaded is the answer to a query that came when MaxInFlight were in
// flight, none of them old enough to give up on.
func (s *Server) overloaded(q *dnswire.Msg) result {
	s.m.overloaded.Inc()
	r := s.fail(q, errOverloaded)
	r.query = *q
	return r
}

// forward asks the upstream for q's answer, within the deadline of q's
// admission bucket b, and makes it the client's reply.
func (s *Server) forward(b *bucket, q dnswire.Msg, p proto) result {
	var r result
	ans, err := s.up.Exchange(b.ctx, q)
	switch {
	case err != nil && b.jostled():
		r = s.fail(&q, fmt.Errorf("%w: %w", errJostled, err))
	case err != nil:
		r = s.fail(&q, err)
	default:
		r = s.relay(&q, ans, p)
	}
	r.query = q
	return r
}

// noEDE tells local to add no Extended DNS Error.
const noEDE = -1

// local builds a reply without records, with an Extended DNS Error (ede,
// text) when it has an OPT record, unless ede is noEDE. Its header and OPT
// record are set the way of every reply made here (dnswire.AppendReply,
// dnswire.ReplyEDNS).
func (s *Server) local(q *dnswire.Msg, rcode int, ede int, text string) result {
	rep := dnswire.Reply{Rcode: rcode, EDNS: dnswire.ReplyEDNS(q, uint16(s.opts.UDPMaxSize))}
	if rep.EDNS != nil && ede != noEDE {
		rep.EDNS.HasEDE, rep.EDNS.EDE, rep.EDNS.EDEText = true, uint16(ede), text
	}
	return result{reply: dnswire.AppendReply(make([]byte, 0, 64), q, rep), rcode: rcode}
}

func (s *Server) fail(q *dnswire.Msg, err error) result {
	rcode, ede, text := failure(err)
	r := s.local(q, rcode, ede, text)
	r.err = err
	r.malformed = rcode == dnswire.RcodeFormatError
	return r
}

// relay turns the upstream's answer, parsed and matched to q already, into
// the client's: no OPT record unless the client sent one, and no larger than
// the client can take over UDP.
func (s *Server) relay(q *dnswire.Msg, ans dnswire.Msg, p proto) result {
	if ans.HasOPT() && !q.HasOPT() {
		// RFC 6891 §7: no OPT in the answer to a query without one. The
		// upstream may have added one (EDNS padding on the TLS leg).
		if ans.Rcode() > 0xF {
			return s.fail(q, fmt.Errorf("%w: extended rcode in answer to a query without EDNS", upstream.ErrBadResponse))
		}
		if err := ans.RemoveOPT(); err != nil {
			return s.fail(q, fmt.Errorf("%w: %w", upstream.ErrBadResponse, err))
		}
	}
	return s.fit(q, ans.Wire(), ans.Rcode(), p)
}

// fit sends reply, an answer to q shaped for its client with the given full
// rcode, relayed or from the cache: whole when it fits, truncated over UDP
// when it does not (the client's size, see udpLimit), a failure over TCP
// past what the length prefix can frame.
func (s *Server) fit(q *dnswire.Msg, reply []byte, rcode int, p proto) result {
	r := result{reply: reply, rcode: rcode}
	limit := dnswire.MaxMsgSize
	if p == protoUDP {
		limit = s.udpLimit(q)
	}
	if len(reply) <= limit {
		return r
	}
	if p != protoUDP {
		return s.fail(q, fmt.Errorf("%w: %d bytes", upstream.ErrBadResponse, len(reply)))
	}
	r.reply, r.truncated = s.truncate(q, reply, r.rcode, limit)
	return r
}

// udpLimit is the largest UDP answer the client can take (RFC 6891 §6.2.5:
// sizes below 512 count as 512), capped by UDPMaxSize.
func (s *Server) udpLimit(q *dnswire.Msg) int {
	if !q.HasOPT() {
		return dnswire.MinUDPSize
	}
	return min(max(int(q.UDPSize()), dnswire.MinUDPSize), s.opts.UDPMaxSize)
}

// truncate cuts an answer to limit bytes, keeping whole records and the OPT
// record, and sets TC so that the client asks again over TCP. An answer the
// upstream did not compress may fit whole once compressed: it is not
// truncated then, and says so (no TC). If the answer cannot be cut record
// by record, the client gets the question alone with TC set, which sends it
// to TCP just as well.
func (s *Server) truncate(q *dnswire.Msg, reply []byte, rcode, limit int) ([]byte, bool) {
	if ans, err := dnswire.Parse(reply); err == nil {
		if out, tc, ok := ans.Truncate(limit); ok {
			return out, tc
		}
	}
	// The stand-in keeps what the answer's header said of its source.
	h, _ := dnswire.ReadHeader(reply)
	rep := dnswire.Reply{Rcode: rcode, Truncated: true, Authoritative: h.Authoritative(), EDNS: dnswire.ReplyEDNS(q, uint16(s.opts.UDPMaxSize))}
	return dnswire.AppendReply(nil, q, rep), true
}
