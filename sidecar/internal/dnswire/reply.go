package dnswire

import "encoding/binary"

// EDNS describes the OPT record of a reply that a relay writes by itself.
type EDNS struct {
	// UDPSize is the payload size the relay advertises.
	UDPSize uint16
	// DO echoes the query's DO bit (RFC 3225 §3).
	DO bool
	// EDE, when HasEDE, is an Extended DNS Error (RFC 8914) with an optional
	// human-readable text.
	HasEDE  bool
	EDE     uint16
	EDEText string
}

// AppendReply appends to dst a reply to the query msg (as parsed into m)
// that carries no records of its own: a header with rcode, the query's
// question when m holds exactly one question that could be read, and an OPT
// record when edns is not nil. The ID, opcode and the RD and CD bits come
// from the query; RA is set because the relay offers recursion through its
// upstreams. An rcode above 15 needs an OPT record to carry its upper bits.
func AppendReply(dst, msg []byte, m *Message, rcode int, truncated bool, edns *EDNS) []byte {
	flags := uint16(flagQR|flagRA) | m.Flags&(0xF<<11|flagRD|flagCD) | uint16(rcode&0xF)
	if truncated {
		flags |= flagTC
	}
	var qd, ar uint16
	question := m.QDCount == 1 && m.QEnd > 0
	if question {
		qd = 1
	}
	if edns != nil {
		ar = 1
	}
	dst = binary.BigEndian.AppendUint16(dst, m.ID)
	dst = binary.BigEndian.AppendUint16(dst, flags)
	dst = binary.BigEndian.AppendUint16(dst, qd)
	dst = append(dst, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint16(dst, ar)
	if question {
		dst = append(dst, msg[m.QNameStart:m.QEnd]...)
	}
	if edns != nil {
		dst = appendOPT(dst, rcode, edns)
	}
	return dst
}

// maxEDEText bounds the text so that an error reply always fits in 512 bytes.
const maxEDEText = 128

func appendOPT(dst []byte, rcode int, e *EDNS) []byte {
	text := e.EDEText
	if len(text) > maxEDEText {
		text = text[:maxEDEText]
	}
	rdlen := 0
	if e.HasEDE {
		rdlen = 6 + len(text)
	}
	var ttl uint32 = uint32(rcode>>4&0xFF) << 24 // version 0
	if e.DO {
		ttl |= flagDO
	}
	dst = append(dst, 0) // root owner
	dst = binary.BigEndian.AppendUint16(dst, TypeOPT)
	dst = binary.BigEndian.AppendUint16(dst, e.UDPSize)
	dst = binary.BigEndian.AppendUint32(dst, ttl)
	dst = binary.BigEndian.AppendUint16(dst, uint16(rdlen))
	if e.HasEDE {
		dst = binary.BigEndian.AppendUint16(dst, OptionEDE)
		dst = binary.BigEndian.AppendUint16(dst, uint16(2+len(text)))
		dst = binary.BigEndian.AppendUint16(dst, e.EDE)
		dst = append(dst, text...)
	}
	return dst
}

// SetID overwrites the message ID of msg, which must hold a header.
func SetID(msg []byte, id uint16) { binary.BigEndian.PutUint16(msg, id) }

// StripOPT removes the OPT record from msg (parsed into m) in place and
// returns the shortened message. It succeeds only when the OPT record is the
// last record, the usual place, and no compression pointer points into it;
// otherwise removing it would break pointers, so it reports false and
// leaves msg alone.
func StripOPT(msg []byte, m *Message) ([]byte, bool) {
	if !m.HasOPT || m.OPTEnd != m.End || m.ARCount == 0 || m.maxPtr >= m.OPTStart {
		return msg, false
	}
	binary.BigEndian.PutUint16(msg[10:], m.ARCount-1)
	return msg[:m.OPTStart], true
}
