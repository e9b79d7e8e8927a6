package dnswire

import (
	"fmt"

	"github.com/miekg/dns"
)

// The slow paths, off the relay's common path, borrow miekg/dns: decoding a
// message into records and encoding it again is what they need, and its
// version 1 does it well. No other file of the sidecar imports miekg/dns, so
// a move to its version 2 (codeberg.org/miekg/dns) stays in this one.

// Truncate cuts the answer m to at most limit bytes for a UDP client: whole
// records only, the OPT record kept, TC set when records were left out
// (RFC 2181 §9, what miekg/dns's Msg.Truncate does). An answer that fits
// once compressed is returned whole and without TC. It reports false when
// the answer cannot be cut that way; the caller then replies with the
// question alone and TC set.
func (m *Msg) Truncate(limit int) (out []byte, tc bool, ok bool) {
	r := new(dns.Msg)
	if r.Unpack(m.Wire()) != nil {
		return nil, false, false
	}
	r.Truncate(limit)
	out, err := r.Pack()
	if err != nil || len(out) > limit {
		return nil, false, false
	}
	return out, r.Truncated, true
}

// withoutOPT encodes msg again without its OPT record, compressed.
func withoutOPT(msg []byte) ([]byte, error) {
	m := new(dns.Msg)
	if err := m.Unpack(msg); err != nil {
		return nil, fmt.Errorf("dnswire: removing the OPT record: %w", err)
	}
	extra := m.Extra[:0]
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	m.Extra = extra
	m.Compress = true
	out, err := m.Pack()
	if err != nil {
		return nil, fmt.Errorf("dnswire: removing the OPT record: %w", err)
	}
	return out, nil
}

// QNameText renders the first question's name in presentation form, for
// logs: "" without a question, "?" if it cannot be rendered.
func (m *Msg) QNameText() string {
	if m.qEnd == 0 {
		return ""
	}
	name, _, err := dns.UnpackDomainName(m.wire, HeaderLen)
	if err != nil {
		return "?"
	}
	return name
}

// RcodeName returns the mnemonic of a response code (NOERROR, SERVFAIL,
// BADVERS...), and false for a code without one.
func RcodeName(rcode int) (string, bool) {
	if rcode == RcodeBadVers {
		// In a DNS message 16 is BADVERS (RFC 6891); miekg/dns names it
		// after its TSIG meaning, BADSIG.
		return "BADVERS", true
	}
	name, ok := dns.RcodeToString[rcode]
	return name, ok
}

// TypeName returns the mnemonic of a record type (A, AAAA, HTTPS...), or the
// RFC 3597 form TYPE65534 for a type without one, for logs.
func TypeName(t uint16) string {
	if name, ok := dns.TypeToString[t]; ok {
		return name
	}
	return fmt.Sprintf("TYPE%d", t)
}

// withoutOptions encodes msg again without the options of its OPT record
// whose code is among codes, compressed.
func withoutOptions(msg []byte, codes []uint16) ([]byte, error) {
	m := new(dns.Msg)
	if err := m.Unpack(msg); err != nil {
		return nil, fmt.Errorf("dnswire: removing EDNS options: %w", err)
	}
	if opt := m.IsEdns0(); opt != nil {
		kept := opt.Option[:0]
		for _, o := range opt.Option {
			if !hasCode(codes, o.Option()) {
				kept = append(kept, o)
			}
		}
		opt.Option = kept
	}
	m.Compress = true
	out, err := m.Pack()
	if err != nil {
		return nil, fmt.Errorf("dnswire: removing EDNS options: %w", err)
	}
	return out, nil
}
