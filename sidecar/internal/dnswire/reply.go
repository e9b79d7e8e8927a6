package dnswire

import (
	"encoding/binary"
	"errors"
	"math"
	"net/netip"
	"strings"
)

// Reply describes a reply that a relay writes by itself, to a query it
// parsed: an error, a truncated answer's stand-in, or a locally owned name.
type Reply struct {
	Rcode int
	// Truncated sets TC, which sends the client to TCP.
	Truncated bool
	// Authoritative sets AA, for names the relay itself owns.
	Authoritative bool
	// Answer records.
	Answer []Record
	// Authority records, such as the SOA of a negative answer (RFC 2308).
	Authority []Record
	// EDNS adds an OPT record when not nil. An Rcode above 15 needs one to
	// carry its upper bits.
	EDNS *EDNS
}

// Record is a record of the question's class that a relay writes itself.
type Record struct {
	// Name is the owner in wire form, uncompressed; nil means the
	// question's name as the client spelled it.
	Name []byte
	Type uint16
	TTL  uint32
	Data []byte // RDATA in wire form
}

// A returns an A record holding a, which must be an IPv4 address.
func A(ttl uint32, a netip.Addr) Record {
	b := a.As4()
	return Record{Type: TypeA, TTL: ttl, Data: b[:]}
}

// AAAA returns an AAAA record holding a, which must be an IPv6 address.
func AAAA(ttl uint32, a netip.Addr) Record {
	b := a.As16()
	return Record{Type: TypeAAAA, TTL: ttl, Data: b[:]}
}

// SOAData is the RDATA of an SOA record (RFC 1035 §3.3.13), its names in
// wire form, uncompressed.
type SOAData struct {
	MName, RName                            []byte
	Serial, Refresh, Retry, Expire, Minimum uint32
}

// SOA returns the SOA record of the zone named owner (wire form). In the
// authority section of a negative answer, the smaller of ttl and
// d.Minimum is how long the answer may be cached (RFC 2308 §5).
func SOA(owner []byte, ttl uint32, d SOAData) Record {
	data := make([]byte, 0, len(d.MName)+len(d.RName)+20)
	data = append(data, d.MName...)
	data = append(data, d.RName...)
	for _, v := range []uint32{d.Serial, d.Refresh, d.Retry, d.Expire, d.Minimum} {
		data = binary.BigEndian.AppendUint32(data, v)
	}
	return Record{Name: owner, Type: TypeSOA, TTL: ttl, Data: data}
}

// TXT returns a TXT record holding text as its single character-string.
// text is cut to 255 bytes, the most one string holds.
func TXT(ttl uint32, text string) Record {
	text = text[:min(len(text), math.MaxUint8)]
	return Record{Type: TypeTXT, TTL: ttl, Data: append([]byte{byte(len(text))}, text...)}
}

// ReplyEDNS returns the OPT record of a reply the relay writes itself to q,
// advertising udpSize and echoing none of q's options (a responder ignores
// the options it does not know, RFC 6891 §6.1.2): nil when q carries none,
// as a reply to a query without EDNS must not have one (RFC 6891 §7);
// version 0 with q's DO bit (RFC 3225 §3) otherwise. A query whose OPT
// record Parse rejected (malformed, misplaced or one of two) gets one too,
// with DO clear since its own cannot be read: RFC 6891 §7 has the FORMERR
// for a faulty OPT record carry an OPT record, which tells the client that
// the server speaks EDNS and found a fault in it. Callers may add an EDE.
func ReplyEDNS(q *Msg, udpSize uint16) *EDNS {
	switch {
	case q.hasOPT:
		return &EDNS{UDPSize: udpSize, DO: q.DO()}
	case q.badOPT:
		return &EDNS{UDPSize: udpSize}
	}
	return nil
}

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

// AppendReply appends to dst the reply r to the query q (Valid or not): a
// header, q's question when q holds exactly one question that could be read
// (its name spelled as sent), r's answer and authority records, and an OPT
// record when r.EDNS is not nil (ReplyEDNS says when it must be). Names are
// not compressed.
//
// It is the one place where the header of every reply the relay makes
// itself is set, with the flags a resolver sets: the ID, opcode and the RD
// and CD bits come from the query (RFC 4035 §3.2.2 for CD); AA and TC come
// from r; AD is never set (nothing here is validated data); RA, which says
// that the relay offers recursion (through its upstreams), is set in the
// reply to every query it serves, but not in NOTIMP or FORMERR: those say
// that the message was no query it could serve, and BIND and Unbound
// answer an unknown opcode or an unreadable query without RA too.
func AppendReply(dst []byte, q *Msg, r Reply) []byte {
	flags := uint16(flagQR) | q.Flags&(0xF<<11|flagRD|flagCD) | uint16(r.Rcode&0xF)
	if r.Rcode != RcodeNotImplemented && r.Rcode != RcodeFormatError {
		flags |= flagRA
	}
	if r.Truncated {
		flags |= flagTC
	}
	if r.Authoritative {
		flags |= flagAA
	}
	question := q.QDCount == 1 && q.qEnd != 0
	var qd, an, ns, ar uint16
	if question {
		qd, an, ns = 1, uint16(len(r.Answer)), uint16(len(r.Authority))
	}
	if r.EDNS != nil {
		ar = 1
	}
	dst = binary.BigEndian.AppendUint16(dst, q.ID)
	dst = binary.BigEndian.AppendUint16(dst, flags)
	dst = binary.BigEndian.AppendUint16(dst, qd)
	dst = binary.BigEndian.AppendUint16(dst, an)
	dst = binary.BigEndian.AppendUint16(dst, ns)
	dst = binary.BigEndian.AppendUint16(dst, ar)
	if question {
		dst = append(dst, q.wire[HeaderLen:q.qEnd]...)
		for _, rr := range r.Answer {
			dst = appendRecord(dst, q, rr)
		}
		for _, rr := range r.Authority {
			dst = appendRecord(dst, q, rr)
		}
	}
	if r.EDNS != nil {
		dst = appendOPT(dst, r.Rcode, r.EDNS)
	}
	return dst
}

func appendRecord(dst []byte, q *Msg, rr Record) []byte {
	if rr.Name != nil {
		dst = append(dst, rr.Name...)
	} else {
		dst = append(dst, q.QName()...)
	}
	dst = binary.BigEndian.AppendUint16(dst, rr.Type)
	dst = binary.BigEndian.AppendUint16(dst, q.qClass)
	dst = binary.BigEndian.AppendUint32(dst, rr.TTL)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(rr.Data)))
	return append(dst, rr.Data...)
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
	dst = appendOPTHeader(dst, rcode, e.UDPSize, e.DO, rdlen)
	if e.HasEDE {
		dst = appendEDE(dst, e.EDE, text)
	}
	return dst
}

// appendOPTHeader appends an OPT record up to its RDATA, which the caller
// appends next: rdlen bytes of options.
func appendOPTHeader(dst []byte, rcode int, udpSize uint16, do bool, rdlen int) []byte {
	var ttl uint32 = uint32(rcode>>4&0xFF) << 24 // version 0
	if do {
		ttl |= flagDO
	}
	dst = append(dst, 0) // root owner
	dst = binary.BigEndian.AppendUint16(dst, TypeOPT)
	dst = binary.BigEndian.AppendUint16(dst, udpSize)
	dst = binary.BigEndian.AppendUint32(dst, ttl)
	return binary.BigEndian.AppendUint16(dst, uint16(rdlen))
}

// appendEDE appends an Extended DNS Error option: 6+len(text) bytes.
func appendEDE(dst []byte, code uint16, text string) []byte {
	dst = binary.BigEndian.AppendUint16(dst, OptionEDE)
	dst = binary.BigEndian.AppendUint16(dst, uint16(2+len(text)))
	dst = binary.BigEndian.AppendUint16(dst, code)
	return append(dst, text...)
}

// NewQuery returns a parsed query with RD set for name (in presentation
// form, such as "example.com." or "."), type qtype, class IN, without EDNS.
func NewQuery(id uint16, name string, qtype uint16) (Msg, error) {
	b := binary.BigEndian.AppendUint16(make([]byte, 0, HeaderLen+len(name)+6), id)
	b = append(b, flagRD>>8, 0, 0, 1, 0, 0, 0, 0, 0, 0)
	b, err := AppendName(b, name)
	if err != nil {
		return Msg{}, err
	}
	b = binary.BigEndian.AppendUint16(b, qtype)
	b = binary.BigEndian.AppendUint16(b, ClassINET)
	return Parse(b)
}

// ErrName: a name AppendName cannot encode.
var ErrName = errors.New("dnswire: not an encodable domain name")

// AppendName appends the wire form of name, in presentation form with or
// without its final dot ("." is the root). Escapes (\. and \DDD) are not
// supported: names that need them are refused with ErrName, as are empty
// labels and labels or names over the limits of RFC 1035 §2.3.4.
func AppendName(dst []byte, name string) ([]byte, error) {
	name = strings.TrimSuffix(name, ".")
	start := len(dst)
	if name != "" {
		for label := range strings.SplitSeq(name, ".") {
			if label == "" || len(label) > 63 || strings.ContainsRune(label, '\\') {
				return dst[:start], ErrName
			}
			dst = append(dst, byte(len(label)))
			dst = append(dst, label...)
		}
	}
	dst = append(dst, 0)
	if len(dst)-start > maxNameLen {
		return dst[:start], ErrName
	}
	return dst, nil
}
