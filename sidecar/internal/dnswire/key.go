package dnswire

import "encoding/binary"

// MaxKeyLen is the longest key AppendKey appends.
const MaxKeyLen = maxNameLen + 5

// AppendKey appends to dst what identifies the answer to the query m for a
// cache: its first question's name lower-cased (the folding EqualName
// uses), type and class, and its DO and CD bits, which change what the
// answer holds (RFC 4035 §3.2.2, RFC 3225). Queries with equal keys get the
// same answer; AppendKey does not allocate when dst has room for MaxKeyLen
// more bytes.
func (m *Msg) AppendKey(dst []byte) []byte {
	dst = FoldName(dst, m.QName())
	dst = binary.BigEndian.AppendUint16(dst, m.qType)
	dst = binary.BigEndian.AppendUint16(dst, m.qClass)
	var bits byte
	if m.DO() {
		bits |= 1
	}
	if m.CheckingDisabled() {
		bits |= 2
	}
	return append(dst, bits)
}
