package dnswire

import (
	"encoding/binary"
	"iter"
)

// What a cache needs from an answer it keeps, without decoding it: where
// each record is and its TTL (Records), how long a negative answer may be
// kept (SOAMinimum), and the options of the OPT record (Option). Parse has
// already proved every offset in range, so the walk only repeats its steps.

// Section names the section of a message a record is in.
type Section uint8

// The sections that hold records.
const (
	SectionAnswer Section = iota + 1
	SectionAuthority
	SectionAdditional
)

// RR locates one resource record in the bytes of a Valid message (Wire).
type RR struct {
	Section Section
	Type    uint16
	Class   uint16 // the payload size, for an OPT record
	TTL     uint32 // the extended rcode, version and flags, for an OPT record
	// Offsets in Wire(): the owner name starts at Start, the 4-byte TTL
	// field at TTLOff, the RDATA at RData, and the record ends at End.
	Start, TTLOff, RData, End int
}

// Records yields every record of a Valid message in order, OPT included,
// and nothing for a message that is not Valid.
func (m *Msg) Records() iter.Seq[RR] {
	return func(yield func(RR) bool) {
		if !m.Valid() {
			return
		}
		b := m.Wire()
		var w nameWalk
		off := HeaderLen
		for range m.QDCount {
			end, _, _ := skipName(b, off, &w)
			off = end + 4
		}
		an, ns := int(m.ANCount), int(m.NSCount)
		for i := range an + ns + int(m.ARCount) {
			end, _, _ := skipName(b, off, &w)
			rr := RR{
				Section: SectionAdditional,
				Type:    binary.BigEndian.Uint16(b[end:]),
				Class:   binary.BigEndian.Uint16(b[end+2:]),
				TTL:     binary.BigEndian.Uint32(b[end+4:]),
				Start:   off,
				TTLOff:  end + 4,
				RData:   end + 10,
			}
			rr.End = rr.RData + int(binary.BigEndian.Uint16(b[end+8:]))
			switch {
			case i < an:
				rr.Section = SectionAnswer
			case i < an+ns:
				rr.Section = SectionAuthority
			}
			if !yield(rr) {
				return
			}
			off = rr.End
		}
	}
}

// SOAMinimum returns the MINIMUM field of rr, an SOA record of m: with the
// record's TTL, how long a negative answer carrying it may be cached (RFC
// 2308 §5). It reports false for another type, or RDATA that does not hold
// two names and the five counters exactly.
func (m *Msg) SOAMinimum(rr RR) (uint32, bool) {
	b := m.Wire()
	if rr.Type != TypeSOA || rr.End > len(b) || rr.RData > rr.End {
		return 0, false
	}
	// The names may be compressed; skipName bounds them by the message.
	var w nameWalk
	end, _, err := skipName(b, rr.RData, &w)
	if err == nil {
		end, _, err = skipName(b, end, &w)
	}
	if err != nil || end+20 != rr.End {
		return 0, false
	}
	return binary.BigEndian.Uint32(b[rr.End-4:]), true
}

// Option returns the data of the first option with the given code in the
// message's OPT record, and whether there is one.
func (m *Msg) Option(code uint16) ([]byte, bool) {
	for c, data := range m.options() {
		if c == code {
			return data, true
		}
	}
	return nil, false
}

// options yields the OPT record's options, code and data; readOPT proved
// that they fill its RDATA exactly.
func (m *Msg) options() iter.Seq2[uint16, []byte] {
	return func(yield func(uint16, []byte) bool) {
		if !m.hasOPT {
			return
		}
		b := m.wire[:m.optEnd]
		for o := int(m.optStart) + 11; o+4 <= len(b); {
			code, n := binary.BigEndian.Uint16(b[o:]), int(binary.BigEndian.Uint16(b[o+2:]))
			if !yield(code, b[o+4:o+4+n]) {
				return
			}
			o += 4 + n
		}
	}
}
