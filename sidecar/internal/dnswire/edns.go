package dnswire

import "encoding/binary"

// EDNS on the hop to an upstream. Some options of an OPT record describe the
// message; others describe the one hop that carried it and mean nothing, or
// harm, on the next: the client's COOKIE is bound to the server it talks to
// (the relay, RFC 7873), its edns-tcp-keepalive to its own TCP connection
// (RFC 7828), its padding to its own transport (RFC 7830), and its Client
// Subnet says where it sits, which an encrypted hop exists to hide (RFC 7871
// §11.1). A relay rewrites the OPT record of a query as it writes it out
// (AppendQuery) and removes the options of the upstream's hop from the
// answer (StripOptions), each in the one copy of the message it makes.

// PadBlock is the block size queries are padded to on an encrypted hop:
// RFC 8467 §4.1, "Block-Length Padding", recommends 128 bytes for queries.
const PadBlock = 128

// addedUDPSize is the payload size of an OPT record a query gets when its
// client sent none: the size DNS Flag Day 2020 settled on, which no upstream
// reading it over TCP will find surprising.
const addedUDPSize = 1232

// QueryRewrite says how AppendQuery rewrites a query's EDNS for one upstream
// hop. The zero value drops the client's hop options (COOKIE,
// edns-tcp-keepalive, Padding, Client Subnet), keeps every other, and adds
// nothing: what a plaintext hop needs.
type QueryRewrite struct {
	// PadBlock pads the query with an RFC 7830 Padding option to a multiple
	// of this many bytes (PadBlock on an encrypted hop), adding an OPT
	// record when the query has none; 0 pads nothing.
	PadBlock int
	// Keepalive adds an edns-tcp-keepalive option without a timeout: the
	// client's offer of RFC 7828 §3.2.1, which the server answers with its
	// idle timeout.
	Keepalive bool
	// KeepClientSubnet forwards the client's Client Subnet option.
	KeepClientSubnet bool
}

// hopOption tells the options of a client's query that AppendQuery does not
// forward.
func (r *QueryRewrite) hopOption(code uint16) bool {
	switch code {
	case OptionCookie, OptionKeepalive, OptionPadding:
		return true
	case OptionECS:
		return !r.KeepClientSubnet
	}
	return false
}

// RewritableEDNS reports whether AppendQuery can rewrite m's OPT record:
// true unless a compression pointer refers to the OPT record or past it
// (never in a query a client library writes), which moving the bytes after
// it would break.
func (m *Msg) RewritableEDNS() bool { return !m.hasOPT || m.maxPtr < m.optStart }

// AppendQuery appends the query m to dst as AppendTo does (its ID replaced
// by id), with its OPT record rewritten by r: the client's hop options
// dropped, Keepalive offered, and the whole padded to a multiple of
// r.PadBlock (unless that would pass 65535 bytes). A query without an OPT
// record gets one (payload size 1232, DO clear) when padding or keepalive
// needs it. m, which must be RewritableEDNS (else it is appended unchanged),
// is not changed. A query with nothing to rewrite costs what AppendTo does.
func (m *Msg) AppendQuery(dst []byte, id uint16, r QueryRewrite) []byte {
	if !m.RewritableEDNS() || !m.needsRewrite(&r) {
		return m.AppendTo(dst, id)
	}
	start := len(dst)
	var tail []byte // records after the OPT record, if any
	if m.hasOPT {
		dst = append(dst, m.wire[:m.optStart]...)
		tail = m.wire[m.optEnd:m.end]
	} else {
		dst = append(dst, m.Wire()...)
		// Parse proved ARCount records fit in 65535 bytes: at most 5957.
		binary.BigEndian.PutUint16(dst[start+10:], m.ARCount+1)
	}
	binary.BigEndian.PutUint16(dst[start:], id)
	opt := len(dst)
	if m.hasOPT {
		dst = append(dst, m.wire[m.optStart:m.optStart+11]...) // root owner, type, size, TTL, RDLENGTH
	} else {
		dst = appendOPTHeader(dst, 0, addedUDPSize, false, 0)
	}
	for code, data := range m.options() {
		if !r.hopOption(code) {
			dst = appendOption(dst, code, data)
		}
	}
	if r.Keepalive {
		dst = appendOption(dst, OptionKeepalive, nil)
	}
	if pad, ok := r.padding(len(dst) - start + len(tail)); ok {
		dst = binary.BigEndian.AppendUint16(dst, OptionPadding)
		dst = binary.BigEndian.AppendUint16(dst, uint16(pad))
		// RFC 7830 §4: the padding octets SHOULD be zero.
		dst = append(dst, zeros[:pad]...)
	}
	binary.BigEndian.PutUint16(dst[opt+9:], uint16(len(dst)-opt-11))
	return append(dst, tail...)
}

// zeros is the source of padding octets: at most a block less one.
var zeros [PadBlock]byte

// padding returns the length of the Padding option's data that brings a
// message of n bytes without it to a multiple of r.PadBlock, and false when
// r pads nothing or the padded message would pass 65535 bytes.
func (r *QueryRewrite) padding(n int) (int, bool) {
	if r.PadBlock <= 0 {
		return 0, false
	}
	n += 4 // the Padding option's code and length
	pad := (r.PadBlock - n%r.PadBlock) % r.PadBlock
	return pad, n+pad <= MaxMsgSize
}

// QueryLen returns how many bytes AppendQuery appends for m and r, without
// writing them: for a writer that must give the length first (HTTP/2's
// content-length and DATA frame header).
func (m *Msg) QueryLen(r QueryRewrite) int {
	if !m.RewritableEDNS() || !m.needsRewrite(&r) {
		return len(m.Wire())
	}
	n := len(m.Wire()) + 11 // the message, and the fixed part of an OPT record to add
	if m.hasOPT {
		n -= int(m.optEnd) - int(m.optStart) // the client's record, replaced
		for code, data := range m.options() {
			if !r.hopOption(code) {
				n += 4 + len(data)
			}
		}
	}
	if r.Keepalive {
		n += 4
	}
	if pad, ok := r.padding(n); ok {
		n += 4 + pad
	}
	return n
}

// needsRewrite reports whether AppendQuery has anything to change in m.
func (m *Msg) needsRewrite(r *QueryRewrite) bool {
	if r.PadBlock > 0 || r.Keepalive {
		return true
	}
	for code := range m.options() {
		if r.hopOption(code) {
			return true
		}
	}
	return false
}

func appendOption(dst []byte, code uint16, data []byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, code)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(data)))
	return append(dst, data...)
}

// StripOptions removes every option with one of the given codes from m's OPT
// record, keeping the record and its other options: for an answer, the
// options of the hop it came over (Padding, edns-tcp-keepalive, a COOKIE),
// which the relay's client must not see. The message is shortened in place
// when no compression pointer refers to the OPT record or past it (always,
// in practice: it is the last record) and encoded again otherwise
// (miekg.go). It fails only on a message miekg/dns cannot re-encode,
// leaving m as it was.
func (m *Msg) StripOptions(codes ...uint16) error {
	found := false
	for code := range m.options() {
		if found = hasCode(codes, code); found {
			break
		}
	}
	if !found {
		return nil
	}
	if m.maxPtr >= m.optStart {
		out, err := withoutOptions(m.Wire(), codes)
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
	// The options kept are copied down over the removed ones, then the
	// records after the OPT record, if any: writes never pass the reads.
	b := m.wire
	w := int(m.optStart) + 11
	for o := w; o < int(m.optEnd); {
		next := o + 4 + int(binary.BigEndian.Uint16(b[o+2:]))
		if !hasCode(codes, binary.BigEndian.Uint16(b[o:])) {
			w += copy(b[w:], b[o:next])
		}
		o = next
	}
	binary.BigEndian.PutUint16(b[m.optStart+9:], uint16(w-int(m.optStart)-11))
	shrink := int(m.optEnd) - w
	copy(b[w:], b[m.optEnd:m.end])
	m.optEnd -= uint16(shrink)
	m.end -= uint16(shrink)
	return nil
}

func hasCode(codes []uint16, code uint16) bool {
	for _, c := range codes {
		if c == code {
			return true
		}
	}
	return false
}
