package dnswire

import (
	"encoding/binary"
	"errors"
)

// A Template is an answer kept to be written again for later queries of the
// same question, as an answer cache keeps its entries. It holds the answer
// without its OPT record, the options of that record worth repeating, and
// where each record's TTL is, so that AppendTo writes the copy for one
// client (its ID, its spelling of the name, its EDNS, the TTLs counted
// down) in one pass, without allocating. A Template is never changed after
// NewTemplate: any number of goroutines may write copies of it at once.
type Template struct {
	// buf holds the message without its OPT record and with ID 0, then the
	// kept options (msgLen:msgLen+optLen), then the offsets of the
	// records' TTL fields in the message, two bytes each.
	buf      []byte
	msgLen   uint16
	optLen   uint16
	extRcode uint8 // the OPT record's upper rcode bits; 0 for a cacheable answer
}

// Errors of NewTemplate.
var (
	ErrNotOneQuestion = errors.New("dnswire: not a valid message of one question")
	ErrMetaRecord     = errors.New("dnswire: the message carries a signature of its transaction (TSIG, TKEY or SIG(0))")
	ErrNameInTTL      = errors.New("dnswire: a compression pointer makes a name run through a TTL field")
)

// Types of records that belong to one transaction (RFC 8945, RFC 2930,
// RFC 2931): a message carrying one cannot be given to another client.
const (
	typeSIG  = 24
	typeTKEY = 249
	typeTSIG = 250
)

// transactionOption tells the options that describe the exchange that
// carried an answer rather than the answer: a server's cookie for the
// client that asked (RFC 7873), its TCP idle timeout (RFC 7828), padding
// for the encrypted leg (RFC 7830) and the client's subnet (RFC 7871).
// Copied to another client they would be wrong or wasteful.
func transactionOption(code uint16) bool {
	switch code {
	case OptionECS, OptionCookie, OptionKeepalive, OptionPadding:
		return true
	}
	return false
}

// NewTemplate copies ans, a Valid message of one question, into a
// Template. Every record's TTL is capped at maxTTL; the OPT record's options
// are kept but for those of the transaction (COOKIE, edns-tcp-keepalive,
// padding, client subnet). Header flags are kept as they are, TC included.
func NewTemplate(ans *Msg, maxTTL uint32) (Template, error) {
	if !ans.Valid() || ans.QDCount != 1 || ans.qEnd == 0 {
		return Template{}, ErrNotOneQuestion
	}
	msg := ans.Wire()
	records := int(ans.ANCount) + int(ans.NSCount) + int(ans.ARCount)
	if ans.hasOPT {
		records--
		if ans.optEnd != ans.end || ans.maxPtr >= ans.optStart {
			// The OPT record is not last, or a name points into or past
			// it: only a new encoding can leave it out.
			out, err := withoutOPT(msg)
			if err != nil {
				return Template{}, err
			}
			msg = out
		} else {
			msg = msg[:ans.optStart]
		}
	}
	optLen := 0
	for code, data := range ans.options() {
		if !transactionOption(code) {
			optLen += 4 + len(data)
		}
	}
	if len(msg)+optLen > MaxMsgSize {
		return Template{}, ErrLong
	}
	buf := make([]byte, 0, len(msg)+optLen+2*records)
	buf = append(buf, msg...)
	binary.BigEndian.PutUint16(buf, 0)
	if ans.hasOPT {
		binary.BigEndian.PutUint16(buf[10:], uint16(records-int(ans.ANCount)-int(ans.NSCount)))
	}
	for code, data := range ans.options() {
		if !transactionOption(code) {
			buf = binary.BigEndian.AppendUint16(buf, code)
			buf = binary.BigEndian.AppendUint16(buf, uint16(len(data)))
			buf = append(buf, data...)
		}
	}
	t := Template{msgLen: uint16(len(msg)), optLen: uint16(optLen), extRcode: ans.extRcode}
	m, err := Parse(buf[:len(msg)])
	if err != nil {
		return Template{}, err
	}
	for rr := range m.Records() {
		switch rr.Type {
		case TypeOPT, typeSIG, typeTKEY, typeTSIG:
			// An OPT record here is a second one withoutOPT left.
			return Template{}, ErrMetaRecord
		}
		binary.BigEndian.PutUint32(buf[rr.TTLOff:], min(rr.TTL, maxTTL))
		buf = binary.BigEndian.AppendUint16(buf, uint16(rr.TTLOff))
	}
	if nameCrossesTTL(m.Wire(), buf[len(msg)+optLen:]) {
		// Capped here and counted down in every copy, those TTLs would
		// change the name: what decodes from the answer would not
		// decode, or decode otherwise, from the copies.
		return Template{}, ErrNameInTTL
	}
	t.buf = buf
	return t, nil
}

// nameCrossesTTL reports whether a name that a compression pointer in msg
// leads to runs through one of the TTL fields at offs (their offsets, two
// bytes each, in ascending order). No encoder compresses so; a broken or
// hostile one may. Parse does not read RDATA by type, so every two bytes
// outside the TTL fields that could be a pointer count: two bytes of an
// address or a signature that happen to lead to a name through a TTL field
// only keep that answer out of the cache.
func nameCrossesTTL(msg, offs []byte) bool {
	n := len(offs) / 2
	ttlAt := func(i int) int { return int(binary.BigEndian.Uint16(offs[2*i:])) }
	// inTTL reports whether the bytes [lo, hi) overlap a TTL field.
	inTTL := func(lo, hi int) bool {
		i, j := 0, n // the first field that ends past lo
		for i < j {
			if h := int(uint(i+j) >> 1); ttlAt(h)+4 <= lo {
				i = h + 1
			} else {
				j = h
			}
		}
		return i < n && ttlAt(i) < hi
	}
	for i := HeaderLen; i+1 < len(msg); i++ {
		if msg[i]&0xC0 == 0xC0 && !inTTL(i, i+2) && readsTTL(msg, int(msg[i]&0x3F)<<8|int(msg[i+1]), inTTL) {
			return true
		}
	}
	return false
}

// readsTTL follows the name at p as a decoder reads it, and reports whether
// it reads a byte of a TTL field before the name ends or proves malformed.
// msg may hold TTLs capped already: the walk up to the first TTL byte it
// reads is the same as in the answer as it came, so each byte is checked
// before its value is used (a capped TTL may make a length byte send the
// name past the message's end, where it would prove nothing).
func readsTTL(msg []byte, p int, inTTL func(lo, hi int) bool) bool {
	for range maxNameLen { // a name reads no more labels and pointers
		if p < HeaderLen || p >= len(msg) {
			return false
		}
		if inTTL(p, p+1) {
			return true
		}
		c := int(msg[p])
		switch c & 0xC0 {
		case 0x00:
			if p+1+c > len(msg) {
				return false
			}
			if inTTL(p, p+1+c) {
				return true
			}
			if c == 0 {
				return false
			}
			p += 1 + c
		case 0xC0:
			if p+2 > len(msg) {
				return false
			}
			if inTTL(p, p+2) {
				return true
			}
			p = (c&0x3F)<<8 | int(msg[p+1])
		default:
			return false
		}
	}
	return false
}

// Rcode returns the answer's full response code.
func (t *Template) Rcode() int {
	return int(t.extRcode)<<4 | int(binary.BigEndian.Uint16(t.buf[2:])&0xF)
}

// Size is the memory the Template's bytes take.
func (t *Template) Size() int { return cap(t.buf) }

// Records returns the message without its OPT record, parsed: for reading
// its records and TTLs as NewTemplate capped them. It shares the
// Template's bytes, which must not be changed.
func (t *Template) Records() Msg {
	m, _ := Parse(t.buf[:t.msgLen])
	return m
}

// WriteOptions shape the copy of a Template for one query.
type WriteOptions struct {
	// Age in seconds is taken from every TTL; a TTL stops at 0.
	Age uint32
	// FixTTL sets every TTL to TTL instead (a stale answer, RFC 8767 §4).
	FixTTL bool
	TTL    uint32
	// UDPSize is the payload size advertised in the OPT record that a
	// query with EDNS gets.
	UDPSize uint16
	// HasEDE adds the Extended DNS Error EDE (RFC 8914), without text,
	// for a query with EDNS.
	HasEDE bool
	EDE    uint16
}

// AppendTo appends to dst the answer for q, a query with the question the
// Template answers: with q's ID, q's spelling of the name (letter case
// included, as a resolver that randomises it checks), q's RD and CD bits,
// the AD bit only when q set DO or AD (RFC 6840 §5.8), TTLs as o says, and
// an OPT record (RFC 6891 §7: none without one in q) with the kept
// options, q's DO bit and o.UDPSize. The answer may exceed what a UDP
// client can take: fitting it is the caller's. It does not allocate when
// dst has room.
func (t *Template) AppendTo(dst []byte, q *Msg, o WriteOptions) []byte {
	start := len(dst)
	dst = append(dst, t.buf[:t.msgLen]...)
	h := dst[start:]
	binary.BigEndian.PutUint16(h, q.ID)
	flags := binary.BigEndian.Uint16(h[2:])
	ad := flags&flagAD != 0 && (q.DO() || q.Flags&flagAD != 0)
	flags = flags&^(flagRD|flagCD|flagAD) | q.Flags&(flagRD|flagCD)
	if ad {
		flags |= flagAD
	}
	binary.BigEndian.PutUint16(h[2:], flags)
	if name := q.QName(); HeaderLen+len(name) <= len(h) && equalFold(name, h[HeaderLen:HeaderLen+len(name)]) {
		copy(h[HeaderLen:], name)
	}
	offs := t.buf[int(t.msgLen)+int(t.optLen):]
	for i := 0; i+1 < len(offs); i += 2 {
		ttlAt := h[binary.BigEndian.Uint16(offs[i:]):]
		ttl := o.TTL
		if !o.FixTTL {
			ttl = binary.BigEndian.Uint32(ttlAt)
			ttl -= min(ttl, o.Age)
		}
		binary.BigEndian.PutUint32(ttlAt, ttl)
	}
	if !q.hasOPT {
		return dst
	}
	binary.BigEndian.PutUint16(h[10:], binary.BigEndian.Uint16(h[10:])+1)
	opts := t.buf[t.msgLen : int(t.msgLen)+int(t.optLen)]
	rdlen := len(opts)
	if o.HasEDE {
		rdlen += 6
	}
	dst = appendOPTHeader(dst, int(t.extRcode)<<4, o.UDPSize, q.DO(), rdlen)
	dst = append(dst, opts...)
	if o.HasEDE {
		dst = appendEDE(dst, o.EDE, "")
	}
	return dst
}
