// Package dnswire reads the few parts of a DNS message that a relay needs (the
// header, the first question and the EDNS OPT record) straight from the wire
// format of RFC 1035 and RFC 6891, without allocating, and writes the short
// replies a relay produces by itself.
//
// A relay only forwards most messages, so decoding every record into objects
// and encoding them again (what a general DNS library does) would waste most
// of the time spent per query. Parse walks the whole message once to prove
// its structure sound and records offsets into the caller's buffer; it never
// follows compression pointers and never copies.
package dnswire

import (
	"encoding/binary"
	"errors"
)

// Sizes and codes of the wire format used by this package and its callers.
const (
	HeaderLen  = 12    // fixed DNS header
	MinUDPSize = 512   // largest UDP message a client without EDNS accepts
	MaxMsgSize = 65535 // largest message the TCP length prefix can frame
	maxNameLen = 255   // wire length of an uncompressed name, root included

	TypeTXT   = 16
	TypeOPT   = 41
	ClassINET = 1

	OptionEDE = 15 // Extended DNS Error, RFC 8914

	flagQR = 1 << 15
	flagAA = 1 << 10
	flagTC = 1 << 9
	flagRD = 1 << 8
	flagRA = 1 << 7
	flagCD = 1 << 4
	flagDO = 1 << 15 // in the OPT record's TTL field
)

// Errors returned by Parse. Each means the message is malformed.
var (
	ErrShort       = errors.New("dnswire: message shorter than a DNS header")
	ErrTruncated   = errors.New("dnswire: message ends inside a record")
	ErrLabel       = errors.New("dnswire: bad label in a name")
	ErrPointer     = errors.New("dnswire: compression pointer out of range")
	ErrOPT         = errors.New("dnswire: malformed or misplaced OPT record")
	ErrMultipleOPT = errors.New("dnswire: more than one OPT record")
)

// Header is the fixed 12-byte header of a DNS message.
type Header struct {
	ID      uint16
	Flags   uint16
	QDCount uint16
	ANCount uint16
	NSCount uint16
	ARCount uint16
}

// ParseHeader reads the header at the start of b.
func ParseHeader(b []byte) (Header, error) {
	if len(b) < HeaderLen {
		return Header{}, ErrShort
	}
	return Header{
		ID:      binary.BigEndian.Uint16(b[0:]),
		Flags:   binary.BigEndian.Uint16(b[2:]),
		QDCount: binary.BigEndian.Uint16(b[4:]),
		ANCount: binary.BigEndian.Uint16(b[6:]),
		NSCount: binary.BigEndian.Uint16(b[8:]),
		ARCount: binary.BigEndian.Uint16(b[10:]),
	}, nil
}

// Response reports whether the QR bit is set.
func (h Header) Response() bool { return h.Flags&flagQR != 0 }

// Opcode returns the 4-bit opcode (0 is QUERY).
func (h Header) Opcode() int { return int(h.Flags>>11) & 0xF }

// Truncated reports whether the TC bit is set.
func (h Header) Truncated() bool { return h.Flags&flagTC != 0 }

// RecursionDesired reports whether the RD bit is set.
func (h Header) RecursionDesired() bool { return h.Flags&flagRD != 0 }

// Rcode returns the low four bits of the response code held in the header.
func (h Header) Rcode() int { return int(h.Flags & 0xF) }

// Message holds what Parse learned about a message: offsets into the parsed
// buffer, valid only as long as that buffer is.
type Message struct {
	Header

	// The first question. QEnd is 0 when the message has none or it could not
	// be read; QNameStart:QNameEnd spans its name, never compressed.
	QNameStart, QNameEnd, QEnd int
	QType, QClass              uint16

	// The OPT record (RFC 6891), when HasOPT. OPTStart:OPTEnd spans the whole
	// record.
	HasOPT           bool
	OPTStart, OPTEnd int
	UDPSize          uint16
	ExtRcode         uint8
	Version          uint8
	EDNSFlags        uint16

	// End is the offset just past the last record counted in the header;
	// anything after it is trailing garbage.
	End int

	maxPtr int // farthest compression pointer target
}

// DO reports whether the query asked for DNSSEC records (the DO bit).
func (m *Message) DO() bool { return m.HasOPT && m.EDNSFlags&flagDO != 0 }

// Rcode returns the full response code: the header's four bits extended by
// the OPT record's eight (RFC 6891 §6.1.3).
func (m *Message) Rcode() int {
	if m.HasOPT {
		return int(m.ExtRcode)<<4 | m.Header.Rcode()
	}
	return m.Header.Rcode()
}

// Parse checks the structure of the whole message in b and records where its
// first question and OPT record are. It does not allocate.
//
// When it fails, the returned Message still holds the header and what was
// read before the failure (the first question, the OPT record unless there
// were two), so that a FORMERR reply can echo them.
func Parse(b []byte) (Message, error) {
	var m Message
	h, err := ParseHeader(b)
	if err != nil {
		return m, err
	}
	m.Header = h
	off := HeaderLen
	for i := 0; i < int(h.QDCount); i++ {
		start := off
		end, compressed, err := skipName(b, off, &m.maxPtr)
		if err != nil {
			return m, err
		}
		if end+4 > len(b) {
			return m, ErrTruncated
		}
		if i == 0 {
			// Nothing precedes the first name for a pointer to refer to:
			// a pointer there can only loop.
			if compressed {
				return m, ErrPointer
			}
			m.QNameStart, m.QNameEnd = start, end
			m.QType = binary.BigEndian.Uint16(b[end:])
			m.QClass = binary.BigEndian.Uint16(b[end+2:])
			m.QEnd = end + 4
		}
		off = end + 4
	}
	answers := int(h.ANCount) + int(h.NSCount)
	records := answers + int(h.ARCount)
	for i := 0; i < records; i++ {
		start := off
		end, _, err := skipName(b, off, &m.maxPtr)
		if err != nil {
			return m, err
		}
		if end+10 > len(b) {
			return m, ErrTruncated
		}
		typ := binary.BigEndian.Uint16(b[end:])
		rdlen := int(binary.BigEndian.Uint16(b[end+8:]))
		rdata := end + 10
		if rdata+rdlen > len(b) {
			return m, ErrTruncated
		}
		if typ == TypeOPT {
			if err := m.readOPT(b, start, end, rdata, rdlen, i < answers); err != nil {
				return m, err
			}
		}
		off = rdata + rdlen
	}
	// A pointer into trailing garbage would break when the message is cut
	// to End.
	if m.maxPtr >= off {
		return m, ErrPointer
	}
	m.End = off
	return m, nil
}

// readOPT records the OPT record at b[start:] whose fixed fields begin at end.
func (m *Message) readOPT(b []byte, start, end, rdata, rdlen int, misplaced bool) error {
	// The owner must be the root name and the record must sit in the
	// additional section (RFC 6891 §6.1.1).
	if misplaced || end != start+1 || b[start] != 0 {
		return ErrOPT
	}
	if m.HasOPT {
		m.HasOPT = false // neither is the message's OPT record
		return ErrMultipleOPT
	}
	// Options are TLVs that must fill the RDATA exactly.
	for o := rdata; o < rdata+rdlen; {
		if o+4 > rdata+rdlen {
			return ErrOPT
		}
		o += 4 + int(binary.BigEndian.Uint16(b[o+2:]))
		if o > rdata+rdlen {
			return ErrOPT
		}
	}
	m.HasOPT = true
	m.OPTStart, m.OPTEnd = start, rdata+rdlen
	m.UDPSize = binary.BigEndian.Uint16(b[end+2:])
	m.ExtRcode = b[end+4]
	m.Version = b[end+5]
	m.EDNSFlags = binary.BigEndian.Uint16(b[end+6:])
	return nil
}

// skipName returns the offset just past the name at b[off:], and whether the
// name ends in a compression pointer. Pointers are checked to land inside the
// message past the header, and the farthest target is kept in *maxPtr, but
// they are not followed: a relay never needs the names of records it only
// forwards.
func skipName(b []byte, off int, maxPtr *int) (int, bool, error) {
	n := 0
	for {
		if off >= len(b) {
			return 0, false, ErrTruncated
		}
		c := int(b[off])
		switch c & 0xC0 {
		case 0x00:
			n += c + 1
			if n > maxNameLen {
				return 0, false, ErrLabel
			}
			if c == 0 {
				return off + 1, false, nil
			}
			off += c + 1
		case 0xC0:
			if off+1 >= len(b) {
				return 0, false, ErrTruncated
			}
			ptr := (c&0x3F)<<8 | int(b[off+1])
			if ptr < HeaderLen || ptr >= len(b) {
				return 0, false, ErrPointer
			}
			*maxPtr = max(*maxPtr, ptr)
			return off + 2, true, nil
		default:
			// 0x40 (extended labels, obsolete) and 0x80 are not in use.
			return 0, false, ErrLabel
		}
	}
}

// EqualName reports whether name (the wire form of an uncompressed name, as
// spanned by QNameStart:QNameEnd) equals want, ignoring ASCII case as DNS
// does. want should be lower case.
func EqualName(name, want []byte) bool {
	if len(name) != len(want) {
		return false
	}
	for i, c := range name {
		// Length bytes are below 64, so they never look like letters.
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != want[i] {
			return false
		}
	}
	return true
}
