// Package dnswire is the one place that reads and writes the DNS wire format
// (RFC 1035, RFC 6891) for the sidecar: the server parses each client query
// with it once, the upstream clients send that parsed query and hand back an
// answer they have parsed and matched to it once, and the server turns that
// answer into the client's reply without reading it again.
//
// A relay forwards most messages untouched, so decoding every record into
// objects and encoding them again, as a general DNS library does, would waste
// most of the time spent per query. Parse walks a whole message once to prove
// its structure sound and records offsets into the caller's buffer: the
// header, the first question and the OPT record. It allocates nothing and
// never copies; it follows compression pointers only to prove them sound.
//
// The rare slow paths (truncating an answer for UDP record by record,
// removing an OPT record from the middle of a message, printing a name) use
// miekg/dns, in miekg.go only, so that a move to its version 2 stays there.
package dnswire

import (
	"encoding/binary"
	"errors"
)

// Sizes of the wire format.
const (
	HeaderLen  = 12    // fixed DNS header
	MinUDPSize = 512   // largest UDP message a client without EDNS accepts
	MaxMsgSize = 65535 // largest message the TCP length prefix can frame
	maxNameLen = 255   // wire length of an uncompressed name, root included
)

// Codes the sidecar uses. The names follow RFC 1035, RFC 6891 and RFC 8914.
const (
	OpcodeQuery = 0

	RcodeSuccess        = 0
	RcodeFormatError    = 1
	RcodeServerFailure  = 2
	RcodeNameError      = 3
	RcodeNotImplemented = 4
	RcodeRefused        = 5
	RcodeBadVers        = 16 // needs the OPT record's upper bits
	RcodeBadCookie      = 23 // the highest code with a name of its own

	TypeA     = 1
	TypeNS    = 2
	TypeSOA   = 6
	TypePTR   = 12
	TypeTXT   = 16
	TypeAAAA  = 28
	TypeOPT   = 41
	TypeIXFR  = 251
	TypeAXFR  = 252
	ClassINET = 1

	OptionECS       = 8  // EDNS Client Subnet, RFC 7871
	OptionCookie    = 10 // DNS Cookies, RFC 7873
	OptionKeepalive = 11 // edns-tcp-keepalive, RFC 7828
	OptionPadding   = 12 // RFC 7830
	OptionEDE       = 15 // Extended DNS Error, RFC 8914

	EDEOther                = 0
	EDEStaleAnswer          = 3
	EDENoReachableAuthority = 22
	EDENetworkError         = 23

	flagQR = 1 << 15
	flagAA = 1 << 10
	flagTC = 1 << 9
	flagRD = 1 << 8
	flagRA = 1 << 7
	flagAD = 1 << 5
	flagCD = 1 << 4
	flagDO = 1 << 15 // in the OPT record's TTL field
)

// Errors returned by Parse. Each means the message is malformed.
var (
	ErrShort       = errors.New("dnswire: message shorter than a DNS header")
	ErrLong        = errors.New("dnswire: message longer than 65535 bytes")
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

// Response reports whether the QR bit is set.
func (h Header) Response() bool { return h.Flags&flagQR != 0 }

// Opcode returns the 4-bit opcode (0 is QUERY).
func (h Header) Opcode() int { return int(h.Flags>>11) & 0xF }

// Truncated reports whether the TC bit is set.
func (h Header) Truncated() bool { return h.Flags&flagTC != 0 }

// Authoritative reports whether the AA bit is set.
func (h Header) Authoritative() bool { return h.Flags&flagAA != 0 }

// RecursionDesired reports whether the RD bit is set.
func (h Header) RecursionDesired() bool { return h.Flags&flagRD != 0 }

// Rcode returns the low four bits of the response code held in the header.
func (h Header) Rcode() int { return int(h.Flags & 0xF) }

// AuthenticData reports whether the AD bit is set (RFC 4035 §3.2.3; in a
// query, RFC 6840 §5.7: the client understands it).
func (h Header) AuthenticData() bool { return h.Flags&flagAD != 0 }

// CheckingDisabled reports whether the CD bit is set (RFC 4035 §3.2.2).
func (h Header) CheckingDisabled() bool { return h.Flags&flagCD != 0 }

// Msg is one DNS message in wire format together with what Parse learned
// about it. It is a small value (64 bytes) meant to be passed by value: from
// the listener through the upstream clients and back, a query and its answer
// are each parsed once and then carried as a Msg.
//
// The offsets point into the buffer Parse was given, which the Msg shares
// and does not own: they stay valid as long as the bytes are not changed
// other than through Msg's own methods (SetID, RemoveOPT). The embedded
// Header is a copy read from the wire; change the ID with SetID, which keeps
// both in step.
type Msg struct {
	Header
	wire []byte

	// The first question, whose name starts right after the header and is
	// never compressed (a pointer there could only loop). qEnd is 0 when
	// the message has none or it could not be read.
	qNameEnd, qEnd uint16
	qType, qClass  uint16

	// The OPT record (RFC 6891), when hasOPT: optStart:optEnd spans it.
	optStart, optEnd uint16
	udpSize          uint16
	ednsFlags        uint16
	extRcode         uint8
	version          uint8
	hasOPT           bool
	// badOPT: Parse rejected an OPT record (malformed, misplaced or a
	// second one), which a FORMERR reply answers with an OPT of its own.
	badOPT bool

	// end is the offset just past the last record the header counts, and
	// 0 until Parse has accepted the whole message.
	end uint16
	// maxPtr is the farthest byte a compression pointer's name reads (its
	// target, or the labels and pointers past it): a rewrite must leave
	// that much of the message where it is.
	maxPtr uint16
}

// Valid reports whether Parse accepted the whole message. A Msg that Parse
// rejected still holds what was read before the failure, so that a FORMERR
// reply can echo the header and question.
func (m *Msg) Valid() bool { return m.end != 0 }

// Wire returns the message's bytes: cut just past its last record when it
// is Valid (trailing bytes are not part of it), as given to Parse otherwise.
func (m *Msg) Wire() []byte {
	if m.end == 0 {
		return m.wire
	}
	return m.wire[:m.end]
}

// QName returns the first question's name in wire form, spelled as sent
// (letter case included), or nil when there is no readable question.
func (m *Msg) QName() []byte {
	if m.qEnd == 0 {
		return nil
	}
	return m.wire[HeaderLen:m.qNameEnd]
}

// QType returns the first question's type (0 when there is none).
func (m *Msg) QType() uint16 { return m.qType }

// QClass returns the first question's class (0 when there is none).
func (m *Msg) QClass() uint16 { return m.qClass }

// HasOPT reports whether the message carries an OPT record (EDNS).
func (m *Msg) HasOPT() bool { return m.hasOPT }

// UDPSize returns the payload size the OPT record advertises (0 without one).
func (m *Msg) UDPSize() uint16 { return m.udpSize }

// EDNSVersion returns the OPT record's version (0 without one).
func (m *Msg) EDNSVersion() uint8 { return m.version }

// DO reports whether the message asks for DNSSEC records (the DO bit).
func (m *Msg) DO() bool { return m.hasOPT && m.ednsFlags&flagDO != 0 }

// Rcode returns the full response code: the header's four bits extended by
// the OPT record's eight (RFC 6891 §6.1.3).
func (m *Msg) Rcode() int {
	if m.hasOPT {
		return int(m.extRcode)<<4 | m.Header.Rcode()
	}
	return m.Header.Rcode()
}

// SetID overwrites the message's ID, in the bytes and in the Header.
func (m *Msg) SetID(id uint16) {
	binary.BigEndian.PutUint16(m.wire, id)
	m.ID = id
}

// ReadHeader reads the header of the message in b, and nothing else: for a
// message the caller wrote itself. A message from elsewhere is Parsed whole.
func ReadHeader(b []byte) (Header, error) {
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

// Parse checks the structure of the whole message in b and records where its
// first question and OPT record are. It does not allocate. The Msg shares b.
//
// When it fails, the returned Msg is not Valid but still holds the header
// and what was read before the failure (the first question, the OPT record
// unless there were two), so that a FORMERR reply can echo them.
func Parse(b []byte) (Msg, error) {
	m := Msg{wire: b}
	var err error
	if m.Header, err = ReadHeader(b); err != nil {
		return m, err
	}
	if len(b) > MaxMsgSize {
		// Past this, offsets would not fit the Msg, and no transport the
		// sidecar speaks carries such a message.
		return m, ErrLong
	}
	var w nameWalk
	off := HeaderLen
	for i := 0; i < int(m.QDCount); i++ {
		end, compressed, err := skipName(b, off, &w)
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
			m.qNameEnd, m.qEnd = uint16(end), uint16(end+4)
			w.known, w.knownLen, w.knownLast = HeaderLen, end-HeaderLen, end-1
			m.qType = binary.BigEndian.Uint16(b[end:])
			m.qClass = binary.BigEndian.Uint16(b[end+2:])
		}
		off = end + 4
	}
	answers := int(m.ANCount) + int(m.NSCount)
	records := answers + int(m.ARCount)
	for i := 0; i < records; i++ {
		start := off
		end, _, err := skipName(b, off, &w)
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
	// to its end.
	if w.maxPtr >= off {
		return m, ErrPointer
	}
	m.end, m.maxPtr = uint16(off), uint16(w.maxPtr)
	return m, nil
}

// readOPT records the OPT record at b[start:] whose fixed fields begin at end.
func (m *Msg) readOPT(b []byte, start, end, rdata, rdlen int, misplaced bool) error {
	// The owner must be the root name and the record must sit in the
	// additional section (RFC 6891 §6.1.1).
	if misplaced || end != start+1 || b[start] != 0 {
		m.badOPT = true
		return ErrOPT
	}
	if m.hasOPT {
		m.hasOPT, m.badOPT = false, true // neither is the message's OPT record
		return ErrMultipleOPT
	}
	// Options are TLVs that must fill the RDATA exactly.
	for o := rdata; o < rdata+rdlen; {
		if o+4 > rdata+rdlen {
			m.badOPT = true
			return ErrOPT
		}
		o += 4 + int(binary.BigEndian.Uint16(b[o+2:]))
		if o > rdata+rdlen {
			m.badOPT = true
			return ErrOPT
		}
	}
	m.hasOPT = true
	m.optStart, m.optEnd = uint16(start), uint16(rdata+rdlen)
	m.udpSize = binary.BigEndian.Uint16(b[end+2:])
	m.extRcode = b[end+4]
	m.version = b[end+5]
	m.ednsFlags = binary.BigEndian.Uint16(b[end+6:])
	return nil
}

// nameWalk is what skipName carries from name to name in one message.
type nameWalk struct {
	maxPtr int // the farthest byte a pointer's name reads
	// A pointer target proved sound, the length of the name there and the
	// farthest byte it reads: most names of an answer point at the
	// question's, proved once.
	known, knownLen, knownLast int
}

// skipName returns the offset just past the name at b[off:], and whether the
// name ends in a compression pointer. A relay never needs the names of
// records it only forwards, but it proves each one a name, pointers
// followed (nameAt): its labels within the message, at most 255 bytes
// long, and no pointer loop, so that such a message is malformed here as
// it is to Unbound and miekg/dns, rather than relayed, cached or answered
// as sound.
func skipName(b []byte, off int, w *nameWalk) (int, bool, error) {
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
			rest, last := w.knownLen, w.knownLast
			if ptr != w.known || w.knownLen == 0 {
				var err error
				if rest, last, err = nameAt(b, ptr); err != nil {
					return 0, false, err
				}
				w.known, w.knownLen, w.knownLast = ptr, rest, last
			}
			if n+rest > maxNameLen {
				return 0, false, ErrLabel
			}
			// Parse holds this to the message's end: a name that runs on
			// into bytes past the last record would break when the
			// message is cut to its end.
			w.maxPtr = max(w.maxPtr, last)
			return off + 2, true, nil
		default:
			// 0x40 (extended labels, obsolete) and 0x80 are not in use.
			return 0, false, ErrLabel
		}
	}
}

// maxPointers bounds the compression pointers followed in one name: a name
// of 255 bytes has at most 127 labels besides the root, and no sound
// message needs more than a pointer for each. Past it, the pointers loop.
const maxPointers = maxNameLen / 2

// nameAt returns the length of the name at b[ptr:], a compression pointer's
// target, following its own pointers, and the farthest byte it read. Every target must lie past the
// header and inside the message; a chain of pointers that loops, through
// labels or not, ends at the 255-byte bound on a name or at maxPointers.
func nameAt(b []byte, ptr int) (n, last int, err error) {
	if ptr < HeaderLen || ptr >= len(b) {
		return 0, 0, ErrPointer
	}
	hops := 0
	for off := ptr; ; {
		if off >= len(b) {
			return 0, 0, ErrTruncated
		}
		c := int(b[off])
		switch c & 0xC0 {
		case 0x00:
			n += c + 1
			if n > maxNameLen {
				return 0, 0, ErrPointer // or a loop through labels
			}
			last = max(last, off+c)
			if c == 0 {
				return n, last, nil
			}
			off += c + 1
		case 0xC0:
			if off+1 >= len(b) {
				return 0, 0, ErrTruncated
			}
			if hops++; hops > maxPointers {
				return 0, 0, ErrPointer
			}
			last = max(last, off+1)
			next := (c&0x3F)<<8 | int(b[off+1])
			if next < HeaderLen || next >= len(b) {
				return 0, 0, ErrPointer
			}
			off = next
		default:
			return 0, 0, ErrLabel
		}
	}
}

// EqualName reports whether name (the wire form of an uncompressed name, as
// QName returns) equals want, ignoring ASCII case as DNS does. want must be
// lower case.
func EqualName(name, want []byte) bool {
	if len(name) != len(want) {
		return false
	}
	for i, c := range name {
		if lower(c) != want[i] {
			return false
		}
	}
	return true
}

// FoldName appends name (the wire form of an uncompressed name, as QName
// returns) to dst with ASCII letters lower-cased, the folding EqualName
// uses: what a table keyed by lower-case names is looked up with. Into a
// stack buffer of maxNameLen bytes it allocates nothing.
func FoldName(dst, name []byte) []byte {
	for _, c := range name {
		dst = append(dst, lower(c))
	}
	return dst
}

// equalFold compares two uncompressed wire names ignoring ASCII case.
func equalFold(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if lower(a[i]) != lower(b[i]) {
			return false
		}
	}
	return true
}

// lower folds an ASCII letter to lower case. Length bytes are below 64, so
// they never look like letters.
func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
