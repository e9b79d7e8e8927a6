package dnswire

import (
	"encoding/binary"
	"errors"
)

// What a client of an upstream does with the messages it relays: send a
// parsed query with an ID of its own on the wire (AppendTo), accept only an
// answer to that very question (Answers, the ID being the client's to match)
// and give it the query's ID back (SetID). The answer is then handed on as
// the Msg it was parsed into; nothing downstream reads its bytes again.

// ErrNotAnswer: a message that Answers rejects. Upstream clients wrap it
// when they report why they dropped a message.
var ErrNotAnswer = errors.New("dnswire: not an answer to the query")

// AppendTo appends the message to dst with its ID replaced by id: the ID an
// upstream client puts on the wire (a random one over a connection shared
// by many queries, 0 for DNS over HTTPS). m itself is not changed.
func (m *Msg) AppendTo(dst []byte, id uint16) []byte {
	off := len(dst)
	dst = append(dst, m.Wire()...)
	binary.BigEndian.PutUint16(dst[off:], id)
	return dst
}

// Answers reports whether m, as Parse left it (Valid or not: a malformed
// answer to the query is still its answer), is a response to q, a query of
// exactly one question: QR set and the same question, the name compared
// without regard to ASCII case (a resolver may echo a 0x20-randomised name
// in another case). The ID is the caller's to check, against the one q
// carried on the wire.
func (m *Msg) Answers(q *Msg) bool {
	return m.Response() && q.QDCount == 1 && m.QDCount == 1 && m.qEnd != 0 && q.qEnd != 0 &&
		m.qType == q.qType && m.qClass == q.qClass && equalFold(m.QName(), q.QName())
}

// RemoveOPT removes the OPT record from m. When it is the last record (the
// usual place) and no compression pointer points into it, the message is cut
// in place; otherwise removing it would break pointers, and the message is
// decoded and encoded again into a new buffer (miekg.go). Either way m stays
// a Valid Msg of the result. It fails only on a message miekg/dns cannot
// re-encode, leaving m as it was.
func (m *Msg) RemoveOPT() error {
	if !m.hasOPT {
		return nil
	}
	if m.optEnd == m.end && m.ARCount > 0 && m.maxPtr < m.optStart {
		m.ARCount--
		binary.BigEndian.PutUint16(m.wire[10:], m.ARCount)
		m.end, m.hasOPT = m.optStart, false
		m.udpSize, m.ednsFlags, m.extRcode, m.version = 0, 0, 0, 0
		return nil
	}
	out, err := withoutOPT(m.Wire())
	if err != nil {
		return err
	}
	parsed, err := Parse(out)
	if err != nil {
		return err
	}
	*m = parsed
	return nil
}
