package upstream

import (
	"encoding/binary"
	"errors"
)

// The relay only forwards messages, so it reads no more of them than matching
// a response to its query needs: the header and the question section. These
// helpers work on the wire bytes in place and allocate nothing.

const (
	headerLen = 12
	// maxMsgLen is the largest message the 2-byte DNS-over-TCP length prefix
	// can frame (RFC 7766 §8).
	maxMsgLen = 65535
	// maxNameLen bounds a name on the wire (RFC 1035 §3.1) and so the number
	// of labels and compression hops a walk over one can take.
	maxNameLen = 255

	flagQR = 0x80 // in byte 2 of the header
)

var (
	errShortMsg   = errors.New("message shorter than a DNS header")
	errLongMsg    = errors.New("message longer than 65535 bytes")
	errBadName    = errors.New("malformed name in question")
	errShortQuest = errors.New("question section runs past the end of the message")
)

func msgID(msg []byte) uint16 { return binary.BigEndian.Uint16(msg) }

func setMsgID(msg []byte, id uint16) { binary.BigEndian.PutUint16(msg, id) }

func qdCount(msg []byte) int { return int(binary.BigEndian.Uint16(msg[4:])) }

func isResponse(msg []byte) bool { return msg[2]&flagQR != 0 }

// rcode is the header's 4-bit response code; the extended bits live in an OPT
// record the relay does not parse.
func rcode(msg []byte) int { return int(msg[3] & 0x0f) }

// questionEnd validates msg's header and question section and returns the
// offset just past the question section.
func questionEnd(msg []byte) (int, error) {
	if len(msg) < headerLen {
		return 0, errShortMsg
	}
	if len(msg) > maxMsgLen {
		return 0, errLongMsg
	}
	off := headerLen
	for range qdCount(msg) {
		end, ok := skipName(msg, off)
		if !ok {
			return 0, errBadName
		}
		if end+4 > len(msg) {
			return 0, errShortQuest
		}
		off = end + 4 // QTYPE and QCLASS
	}
	return off, nil
}

// skipName returns the offset just past the name that starts at off: after
// its root label, or after the first compression pointer. It checks the whole
// name (pointers included), so a name it accepts can be walked by nameIter.
func skipName(msg []byte, off int) (int, bool) {
	end := -1
	it := nameIter{msg: msg, off: off}
	for {
		label, ok := it.next()
		if !ok {
			return 0, false
		}
		if end < 0 && it.jumped {
			end = it.firstJump
		}
		if len(label) == 0 {
			break
		}
	}
	if end < 0 {
		end = it.off
	}
	return end, true
}

// nameIter walks the labels of a wire-format name, following compression
// pointers. Pointers must point strictly backwards, which rules out loops;
// the total length is bounded as RFC 1035 bounds a name.
type nameIter struct {
	msg       []byte
	off       int
	total     int  // bytes of name seen, length octets included
	jumped    bool // a pointer was followed
	firstJump int  // offset just past the first pointer
}

// next returns the next label, an empty label at the root, and false when the
// name is malformed.
func (it *nameIter) next() ([]byte, bool) {
	for {
		if it.off >= len(it.msg) {
			return nil, false
		}
		c := int(it.msg[it.off])
		switch c & 0xc0 {
		case 0x00:
			start := it.off + 1
			end := start + c
			if end > len(it.msg) {
				return nil, false
			}
			it.total += 1 + c
			if it.total > maxNameLen {
				return nil, false
			}
			it.off = end
			return it.msg[start:end], true
		case 0xc0:
			if it.off+1 >= len(it.msg) {
				return nil, false
			}
			ptr := int(binary.BigEndian.Uint16(it.msg[it.off:]) & 0x3fff)
			if ptr >= it.off || ptr < headerLen {
				return nil, false
			}
			if !it.jumped {
				it.jumped = true
				it.firstJump = it.off + 2
			}
			it.off = ptr
		default: // 0x40 and 0x80 are extended label types nobody uses (RFC 6891 §5)
			return nil, false
		}
	}
}

// sameQuestion reports whether resp is a response whose question section
// equals the one of query (which ends at qEnd, as questionEnd returned):
// the same number of questions, names equal ignoring ASCII case (resolvers
// may echo a 0x20-randomised name in another case), types and classes equal.
func sameQuestion(query []byte, qEnd int, resp []byte) bool {
	if len(resp) < headerLen || !isResponse(resp) || qdCount(resp) != qdCount(query) {
		return false
	}
	qoff, roff := headerLen, headerLen
	for range qdCount(query) {
		qi := nameIter{msg: query[:qEnd], off: qoff}
		ri := nameIter{msg: resp, off: roff}
		for {
			ql, ok1 := qi.next()
			rl, ok2 := ri.next()
			if !ok1 || !ok2 || !equalFoldASCII(ql, rl) {
				return false
			}
			if len(ql) == 0 {
				break
			}
		}
		qoff, roff = qi.off, ri.off
		if qi.jumped {
			qoff = qi.firstJump
		}
		if ri.jumped {
			roff = ri.firstJump
		}
		if qoff+4 > qEnd || roff+4 > len(resp) ||
			binary.BigEndian.Uint32(query[qoff:]) != binary.BigEndian.Uint32(resp[roff:]) {
			return false
		}
		qoff += 4
		roff += 4
	}
	return true
}

func equalFoldASCII(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x == y {
			continue
		}
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
