package dnswire

import "encoding/binary"

// A relay keeps each query while its answer is outstanding, for as long as
// the upstream takes, up to the query's deadline. What it needs of it then
// is what it forwards and what it matches the answer with: the header, the
// question and the OPT record. Anything else a client sends (bytes after the
// last record, records in the answer, authority or additional sections,
// which a QUERY carries none of in practice) would only hold memory: up to
// 64 KiB a query, from a client sending large datagrams that parse.

// CompactLen is the length of m's compact form (see AppendCompact): its
// header, its question and its OPT record. m must be Valid with one
// question.
func (m *Msg) CompactLen() int {
	return int(m.qEnd) + int(m.optEnd-m.optStart)
}

// AppendCompact appends to dst the compact form of m, a Valid query of one
// question: its header with the counts changed to match, its question and
// its OPT record, as sent; and returns the result, parsed, over the bytes
// appended. Nothing else of m is carried over, so that m's buffer, however
// large, need not be kept. Its cost is one copy of what it keeps; it does
// not allocate when dst has room.
func (m *Msg) AppendCompact(dst []byte) Msg {
	off := len(dst)
	dst = append(dst, m.wire[:m.qEnd]...)
	c := *m
	c.ANCount, c.NSCount, c.ARCount = 0, 0, 0
	if m.hasOPT {
		dst = append(dst, m.wire[m.optStart:m.optEnd]...)
		c.ARCount = 1
		c.optStart, c.optEnd = m.qEnd, m.qEnd+(m.optEnd-m.optStart)
	}
	b := dst[off:]
	binary.BigEndian.PutUint16(b[6:], 0)
	binary.BigEndian.PutUint16(b[8:], 0)
	binary.BigEndian.PutUint16(b[10:], c.ARCount)
	// The question is uncompressed and the OPT record's owner is the root:
	// nothing kept points anywhere.
	c.wire, c.end, c.maxPtr = b, uint16(len(b)), 0
	return c
}
