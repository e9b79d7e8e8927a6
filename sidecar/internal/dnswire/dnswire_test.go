package dnswire

import (
	"bytes"
	"errors"
	"reflect"
	"testing"

	"github.com/miekg/dns"
)

// pack builds a message with miekg/dns, the reference this parser must agree
// with.
func pack(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("packing reference message: %v", err)
	}
	return b
}

func query(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 0x1234
	return m
}

func withEDNS(m *dns.Msg, size uint16, do bool, opts ...dns.EDNS0) *dns.Msg {
	m.SetEdns0(size, do)
	o := m.IsEdns0()
	o.Option = append(o.Option, opts...)
	return m
}

func TestParse(t *testing.T) {
	big := new(dns.Msg)
	big.SetQuestion("example.com.", dns.TypeA)
	big.Response = true
	for i := 0; i < 20; i++ {
		big.Answer = append(big.Answer, &dns.A{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, byte(i)}})
	}
	big.Ns = append(big.Ns, &dns.NS{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeNS, Class: dns.ClassINET}, Ns: "ns.example.com."})
	big.Compress = true
	withEDNS(big, 1232, false)

	unknown := &dns.EDNS0_LOCAL{Code: 65001, Data: []byte("opaque")}
	cookie := &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}

	tests := []struct {
		name    string
		msg     []byte
		wantErr error
		check   func(t *testing.T, m Msg, b []byte)
	}{
		{
			name: "plain query",
			msg:  pack(t, query("Example.COM.", dns.TypeAAAA)),
			check: func(t *testing.T, m Msg, b []byte) {
				if m.ID != 0x1234 || m.QDCount != 1 || m.HasOPT() || m.Response() || m.Opcode() != 0 || !m.RecursionDesired() {
					t.Errorf("header/OPT wrong: %+v", m)
				}
				if m.QType() != dns.TypeAAAA || m.QClass() != dns.ClassINET {
					t.Errorf("question wrong: %+v", m)
				}
				if !EqualName(m.QName(), []byte("\x07example\x03com\x00")) {
					t.Errorf("name %q does not fold-match", m.QName())
				}
				if len(m.Wire()) != len(b) || int(m.qEnd) != len(b) {
					t.Errorf("end=%d qEnd=%d, want %d", len(m.Wire()), m.qEnd, len(b))
				}
			},
		},
		{
			name: "EDNS query with DO, cookie and an unknown option",
			msg:  pack(t, withEDNS(query("example.org.", dns.TypeTXT), 4096, true, cookie, unknown)),
			check: func(t *testing.T, m Msg, b []byte) {
				if !m.HasOPT() || m.UDPSize() != 4096 || !m.DO() || m.EDNSVersion() != 0 || m.Rcode() != 0 {
					t.Errorf("OPT wrong: %+v", m)
				}
				if int(m.optEnd) != len(b) || b[m.optStart] != 0 {
					t.Errorf("OPT span %d:%d in %d bytes", m.optStart, m.optEnd, len(b))
				}
			},
		},
		{
			name: "EDNS version 1",
			msg: func() []byte {
				m := withEDNS(query("example.org.", dns.TypeA), 1232, false)
				m.IsEdns0().SetVersion(1)
				return pack(t, m)
			}(),
			check: func(t *testing.T, m Msg, _ []byte) {
				if m.EDNSVersion() != 1 {
					t.Errorf("version %d, want 1", m.EDNSVersion())
				}
			},
		},
		{
			name: "compressed response with extended rcode",
			msg: func() []byte {
				m := big.Copy()
				m.Rcode = dns.RcodeBadCookie
				return pack(t, m)
			}(),
			check: func(t *testing.T, m Msg, b []byte) {
				if !m.Response() || m.ANCount != 20 || m.NSCount != 1 || !m.HasOPT() || len(m.Wire()) != len(b) {
					t.Errorf("response parsed wrong: %+v", m)
				}
				if m.Rcode() != dns.RcodeBadCookie {
					t.Errorf("rcode %d, want %d", m.Rcode(), dns.RcodeBadCookie)
				}
			},
		},
		{
			name: "trailing garbage is left outside End",
			msg:  append(pack(t, query("a.", dns.TypeA)), 1, 2, 3),
			check: func(t *testing.T, m Msg, b []byte) {
				if len(m.Wire()) != len(b)-3 {
					t.Errorf("end=%d, want %d", len(m.Wire()), len(b)-3)
				}
			},
		},
		{
			name: "no question",
			msg:  []byte{0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
			check: func(t *testing.T, m Msg, _ []byte) {
				if m.QName() != nil || len(m.Wire()) != HeaderLen {
					t.Errorf("empty message parsed wrong: %+v", m)
				}
			},
		},
		{name: "short header", msg: []byte{1, 2, 3}, wantErr: ErrShort},
		{name: "question cut short", msg: pack(t, query("example.com.", dns.TypeA))[:20], wantErr: ErrTruncated},
		{name: "question type cut short", msg: pack(t, query("example.com.", dns.TypeA))[:27], wantErr: ErrTruncated},
		{name: "count larger than the records", msg: func() []byte { b := pack(t, query("a.", dns.TypeA)); b[11] = 1; return b }(), wantErr: ErrTruncated},
		{name: "reserved label type", msg: []byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x41, 0, 0, 1, 0, 1}, wantErr: ErrLabel},
		{name: "pointer in the first question", msg: []byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'a', 0xC0, 0x0C, 0, 1, 0, 1}, wantErr: ErrPointer},
		{name: "pointer into the header", msg: []byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 'a', 0, 0, 1, 0, 1, 0xC0, 0x02, 0, 1, 0, 1}, wantErr: ErrPointer},
		{name: "pointer past the end", msg: []byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 'a', 0, 0, 1, 0, 1, 0xC0, 0x40, 0, 1, 0, 1}, wantErr: ErrPointer},
		{name: "pointer into trailing bytes", msg: []byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 'a', 0, 0, 1, 0, 1, 0xC0, 25, 0, 1, 0, 1, 1, 'b', 0}, wantErr: ErrPointer},
		{name: "pointer cut short", msg: []byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 'a', 0xC0}, wantErr: ErrTruncated},
		// Compression pointers in records, after the question "a." at
		// offset 12 (recordsAfterA): followed, they must end in a name.
		{name: "pointer to an earlier name", msg: recordsAfterA(rec(0xC0, 12)), check: func(t *testing.T, m Msg, _ []byte) {
			// The farthest byte the name reads: the question's root label.
			if m.maxPtr != 14 {
				t.Errorf("maxPtr %d, want 14", m.maxPtr)
			}
		}},
		{name: "chain of pointers, each earlier", msg: recordsAfterA(rec(1, 'b', 0xC0, 12), rec(1, 'c', 0xC0, 19))},
		{name: "pointer loop: a name pointing at itself", msg: recordsAfterA(rec(0xC0, 19)), wantErr: ErrPointer},
		{name: "pointer loop through a label", msg: recordsAfterA(rec(1, 'b', 0xC0, 19)), wantErr: ErrPointer},
		// RFC 1035 §4.1.4 points at prior occurrences, but Unbound and
		// miekg/dns follow a forward pointer too, and so does the relay.
		{name: "forward pointer", msg: recordsAfterA(rec(0xC0, 31, 1, 'c', 0, 0))},
		// Cut to its last record, as a relay sends it, the name would
		// end outside the message.
		{name: "pointer to a name that ends past the last record", msg: append(recordsAfterA(rec(0xC0, 31, 1, 'c')), 0), wantErr: ErrPointer},
		{name: "forward pointer to a name cut short", msg: recordsAfterA(rec(0xC0, 31, 1, 'c')), wantErr: ErrTruncated},
		{name: "pointer loop of two pointers", msg: recordsAfterA(rec(0xC0, 12, 0xC0, 33), rec(0xC0, 31)), wantErr: ErrPointer},
		{
			name: "name over 255 bytes through a pointer",
			msg: func() []byte {
				long := bytes.Repeat(append([]byte{62}, bytes.Repeat([]byte("a"), 62)...), 4) // 252 bytes
				b := []byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1}
				b = append(append(b, long...), 0, 0, 1, 0, 1)
				return append(b, 2, 'b', 'b', 0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0)
			}(),
			wantErr: ErrLabel,
		},
		{
			name:    "name longer than 255 bytes",
			msg:     append(append([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}, bytes.Repeat(append([]byte{63}, bytes.Repeat([]byte("a"), 63)...), 4)...), 0, 0, 1, 0, 1),
			wantErr: ErrLabel,
		},
		{
			name: "two OPT records",
			msg: func() []byte {
				m := withEDNS(query("a.", dns.TypeA), 1232, false)
				m.Extra = append(m.Extra, m.Extra[0])
				return pack(t, m)
			}(),
			wantErr: ErrMultipleOPT,
		},
		{
			name: "OPT in the answer section",
			msg: func() []byte {
				m := query("a.", dns.TypeA)
				m.Answer = append(m.Answer, &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT, Class: 512}})
				return pack(t, m)
			}(),
			wantErr: ErrOPT,
		},
		{
			name: "OPT with an owner name",
			msg: func() []byte {
				m := query("a.", dns.TypeA)
				m.Extra = append(m.Extra, &dns.OPT{Hdr: dns.RR_Header{Name: "a.", Rrtype: dns.TypeOPT, Class: 512}})
				m.Compress = false
				return pack(t, m)
			}(),
			wantErr: ErrOPT,
		},
		{
			name: "OPT option overruns its RDATA",
			msg: func() []byte {
				b := pack(t, withEDNS(query("a.", dns.TypeA), 1232, false, unknown))
				b[len(b)-len(unknown.Data)-1]++ // option length one too long
				return b
			}(),
			wantErr: ErrOPT,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse(tt.msg)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Parse error = %v, want %v", err, tt.wantErr)
			}
			if tt.check != nil {
				tt.check(t, m, tt.msg)
			}
		})
	}
}

// recordsAfterA is a query for "a." A (its name at offset 12, its question
// ending at 19) followed by records in the additional section.
func recordsAfterA(records ...[]byte) []byte {
	b := []byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, byte(len(records)), 1, 'a', 0, 0, 1, 0, 1}
	for _, r := range records {
		b = append(b, r...)
	}
	return b
}

// rec is a record of type A, class IN and TTL 0 with the given owner name
// (wire form, as is) and RDATA (the bytes after the name's end: a pointer
// or the root label ends it).
func rec(name ...byte) []byte {
	end := 0
	for end < len(name) && name[end] != 0 && name[end]&0xC0 == 0 {
		end += int(name[end]) + 1
	}
	if end < len(name) && name[end]&0xC0 == 0xC0 {
		end += 2
	} else {
		end++
	}
	end = min(end, len(name))
	owner, rdata := name[:end], name[end:]
	r := append(append([]byte(nil), owner...), 0, 1, 0, 1, 0, 0, 0, 0, 0, byte(len(rdata)))
	return append(r, rdata...)
}

func TestParseKeepsQuestionOnLaterError(t *testing.T) {
	b := pack(t, query("example.com.", dns.TypeMX))
	b[11] = 1 // claims an additional record that is not there
	m, err := Parse(b)
	if !errors.Is(err, ErrTruncated) {
		t.Fatalf("err = %v, want ErrTruncated", err)
	}
	if int(m.qEnd) != len(b) || m.QType() != dns.TypeMX || m.Valid() {
		t.Fatalf("question lost: %+v", m)
	}
}

func TestAppendReply(t *testing.T) {
	q := withEDNS(query("MiXeD.example.", dns.TypeTXT), 4096, true)
	q.CheckingDisabled = true
	qm, err := Parse(pack(t, q))
	if err != nil {
		t.Fatal(err)
	}
	nqm, _ := Parse([]byte{0xAB, 0xCD, 0x28, 0, 0, 2, 0, 0, 0, 0, 0, 0})
	txt := TXT(7, "hello")

	tests := []struct {
		name      string
		m         Msg
		r         Reply
		wantQ     bool
		wantEDE   uint16
		wantText  string
		wantTXT   bool
		wantRcode int
	}{
		{name: "SERVFAIL with EDE", m: qm, r: Reply{Rcode: dns.RcodeServerFailure, EDNS: &EDNS{UDPSize: 1232, DO: true, HasEDE: true, EDE: 22, EDEText: "no upstream answered"}},
			wantQ: true, wantEDE: 22, wantText: "no upstream answered", wantRcode: dns.RcodeServerFailure},
		{name: "BADVERS", m: qm, r: Reply{Rcode: dns.RcodeBadVers, EDNS: &EDNS{UDPSize: 1232}}, wantQ: true, wantRcode: dns.RcodeBadVers},
		{name: "FORMERR without OPT", m: qm, r: Reply{Rcode: dns.RcodeFormatError}, wantQ: true, wantRcode: dns.RcodeFormatError},
		{name: "truncated", m: qm, r: Reply{Truncated: true, EDNS: &EDNS{UDPSize: 1232}}, wantQ: true, wantRcode: dns.RcodeSuccess},
		{name: "authoritative TXT", m: qm, r: Reply{Authoritative: true, Answer: []Record{txt}, EDNS: &EDNS{UDPSize: 1232}}, wantQ: true, wantTXT: true},
		{name: "two questions: none echoed, no answer", m: nqm, r: Reply{Rcode: dns.RcodeFormatError, Answer: []Record{txt}}, wantRcode: dns.RcodeFormatError},
		{name: "NOTIMP", m: qm, r: Reply{Rcode: dns.RcodeNotImplemented, EDNS: &EDNS{UDPSize: 1232}}, wantQ: true, wantRcode: dns.RcodeNotImplemented},
		{name: "REFUSED", m: qm, r: Reply{Rcode: dns.RcodeRefused}, wantQ: true, wantRcode: dns.RcodeRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := AppendReply(nil, &tt.m, tt.r)
			r := new(dns.Msg)
			if err := r.Unpack(out); err != nil {
				t.Fatalf("reply does not unpack: %v (% x)", err, out)
			}
			// RA in the reply to every query served; a message that is
			// not one (FORMERR, NOTIMP) gets none, as from BIND and Unbound.
			wantRA := tt.wantRcode != dns.RcodeFormatError && tt.wantRcode != dns.RcodeNotImplemented
			if r.Id != tt.m.ID || !r.Response || r.RecursionAvailable != wantRA || r.Opcode != tt.m.Opcode() ||
				r.Authoritative != tt.r.Authoritative || r.AuthenticatedData || r.Zero {
				t.Errorf("header wrong: %v", r.MsgHdr)
			}
			if r.RecursionDesired != tt.m.RecursionDesired() || r.CheckingDisabled != (tt.m.Flags&flagCD != 0) || r.Truncated != tt.r.Truncated {
				t.Errorf("copied flags wrong: %v", r.MsgHdr)
			}
			if r.Rcode != tt.wantRcode {
				t.Errorf("rcode %d, want %d", r.Rcode, tt.wantRcode)
			}
			if tt.wantQ != (len(r.Question) == 1) {
				t.Fatalf("question %v, want present=%v", r.Question, tt.wantQ)
			}
			if tt.wantQ && r.Question[0].Name != "MiXeD.example." {
				t.Errorf("question name %q: case must be kept", r.Question[0].Name)
			}
			if tt.wantTXT {
				rr, ok := r.Answer[0].(*dns.TXT)
				if len(r.Answer) != 1 || !ok || rr.Hdr.Name != "MiXeD.example." || rr.Hdr.Class != dns.ClassINET || rr.Hdr.Ttl != 7 || len(rr.Txt) != 1 || rr.Txt[0] != "hello" {
					t.Errorf("answer %v, want one TXT \"hello\" owned by the question's name", r.Answer)
				}
			} else if len(r.Answer) != 0 {
				t.Errorf("answer %v, want none", r.Answer)
			}
			opt := r.IsEdns0()
			if (tt.r.EDNS != nil) != (opt != nil) {
				t.Fatalf("OPT %v, want present=%v", opt, tt.r.EDNS != nil)
			}
			if opt == nil {
				return
			}
			if opt.UDPSize() != tt.r.EDNS.UDPSize || opt.Do() != tt.r.EDNS.DO || opt.Version() != 0 {
				t.Errorf("OPT wrong: %v", opt)
			}
			var ede *dns.EDNS0_EDE
			for _, o := range opt.Option {
				if e, ok := o.(*dns.EDNS0_EDE); ok {
					ede = e
				}
			}
			if tt.wantEDE == 0 {
				if ede != nil {
					t.Errorf("unexpected EDE %v", ede)
				}
				return
			}
			if ede == nil || ede.InfoCode != tt.wantEDE || ede.ExtraText != tt.wantText {
				t.Errorf("EDE %v, want %d %q", ede, tt.wantEDE, tt.wantText)
			}
		})
	}
}

// TestReplyEDNS: the OPT record of a local reply follows the query's: none
// for none, version 0 with DO echoed and no option of the query's for one,
// and one with DO clear for a query whose OPT record was rejected (RFC 6891
// §7: the FORMERR for a faulty OPT carries one).
func TestReplyEDNS(t *testing.T) {
	opt := func(m *dns.Msg) *dns.Msg {
		return withEDNS(m, 4096, true, &dns.EDNS0_LOCAL{Code: 100, Data: []byte{1}})
	}
	twoOPT := opt(query("example.com.", dns.TypeA))
	twoOPT.Extra = append(twoOPT.Extra, twoOPT.Extra[0])
	misplaced := opt(query("example.com.", dns.TypeA))
	misplaced.Answer, misplaced.Extra = misplaced.Extra, nil
	owner := opt(query("example.com.", dns.TypeA))
	owner.Extra[0].Header().Name = "example.com."
	overlong := pack(t, opt(query("example.com.", dns.TypeA)))
	overlong[len(overlong)-2] = 9 // the option's length runs past the RDATA

	tests := []struct {
		name    string
		msg     []byte
		wantErr error
		want    *EDNS
	}{
		{"no OPT", pack(t, query("example.com.", dns.TypeA)), nil, nil},
		{"OPT with DO and an option", pack(t, opt(query("example.com.", dns.TypeA))), nil, &EDNS{UDPSize: 1232, DO: true}},
		{"OPT without DO", pack(t, withEDNS(query("example.com.", dns.TypeA), 512, false)), nil, &EDNS{UDPSize: 1232}},
		{"two OPT records", pack(t, twoOPT), ErrMultipleOPT, &EDNS{UDPSize: 1232}},
		{"OPT in the answer section", pack(t, misplaced), ErrOPT, &EDNS{UDPSize: 1232}},
		{"OPT owned by another name", pack(t, owner), ErrOPT, &EDNS{UDPSize: 1232}},
		{"option longer than the RDATA", overlong, ErrOPT, &EDNS{UDPSize: 1232}},
		{"message cut before its OPT record", pack(t, opt(query("example.com.", dns.TypeA)))[:30], ErrTruncated, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse(tt.msg)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Parse: %v, want %v", err, tt.wantErr)
			}
			got := ReplyEDNS(&m, 1232)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ReplyEDNS = %+v, want %+v", got, tt.want)
			}
			r := new(dns.Msg)
			if err := r.Unpack(AppendReply(nil, &m, Reply{Rcode: dns.RcodeFormatError, EDNS: got})); err != nil {
				t.Fatal(err)
			}
			if o := r.IsEdns0(); (o != nil) != (tt.want != nil) || o != nil && (len(o.Option) != 0 || o.Version() != 0) {
				t.Fatalf("reply OPT %v, want present=%v, version 0, no option", o, tt.want != nil)
			}
		})
	}
}

func TestRemoveOPT(t *testing.T) {
	last := withEDNS(query("example.com.", dns.TypeA), 1232, true)
	last.Response = true
	last.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: []byte{192, 0, 2, 1}}}
	notLast := last.Copy()
	notLast.Extra = append(notLast.Extra, &dns.A{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: []byte{192, 0, 2, 2}})
	// A pointer that lands in the OPT record (found by fuzzing) would
	// dangle once the record is cut, so the message is encoded again.
	pointerIntoOPT := []byte{
		0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 1,
		1, 'a', 0, 0, 1, 0, 1, // question a. A IN
		0xC0, 35, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1, // answer whose owner points at offset 35
		0, 0, 41, 4, 0xD0, 0, 0, 0, 0, 0, 0, // OPT at 35
	}
	for _, tt := range []struct {
		name    string
		msg     []byte
		inPlace bool
		extra   int // records left in the additional section
	}{
		{"last record: cut in place", pack(t, last), true, 0},
		{"before another record: encoded again", pack(t, notLast), false, 1},
		{"pointer into the OPT record: encoded again", pointerIntoOPT, false, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Parse(tt.msg)
			if err != nil || !m.HasOPT() {
				t.Fatalf("Parse: %v, OPT %v", err, m.HasOPT())
			}
			if err := m.RemoveOPT(); err != nil {
				t.Fatal(err)
			}
			out := m.Wire()
			if inPlace := &out[0] == &tt.msg[0]; inPlace != tt.inPlace {
				t.Errorf("in place: %v, want %v", inPlace, tt.inPlace)
			}
			if m.HasOPT() || !m.Valid() || m.Rcode() != 0 || m.DO() {
				t.Errorf("Msg after RemoveOPT: %+v", m)
			}
			if again, err := Parse(out); err != nil || again.HasOPT() || again.Header != m.Header {
				t.Errorf("result parses as %+v, %v; Msg says %+v", again.Header, err, m.Header)
			}
			r := new(dns.Msg)
			if err := r.Unpack(out); err != nil {
				t.Fatalf("result does not unpack: %v", err)
			}
			if r.IsEdns0() != nil || len(r.Extra) != tt.extra || len(r.Answer) != 1 {
				t.Fatalf("RemoveOPT left %v", r)
			}
		})
	}
	noOPT, _ := Parse(pack(t, query("a.", dns.TypeA)))
	before := noOPT
	if err := noOPT.RemoveOPT(); err != nil || !reflect.DeepEqual(noOPT, before) {
		t.Errorf("RemoveOPT without an OPT record: %v, %+v", err, noOPT)
	}
}

func TestParseDoesNotAllocate(t *testing.T) {
	b := pack(t, withEDNS(query("www.example.com.", dns.TypeA), 1232, true))
	allocs := testing.AllocsPerRun(100, func() {
		m, err := Parse(b)
		if err != nil || !m.HasOPT() {
			t.Fatal("parse failed")
		}
	})
	if allocs != 0 {
		t.Fatalf("Parse allocates %.1f times per call", allocs)
	}
}

func BenchmarkParse(b *testing.B) {
	msg := pack(b, withEDNS(query("www.example.com.", dns.TypeA), 1232, true))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkParseAnswer parses an answer of 20 records whose owner names are
// compression pointers to the question's, as upstream answers are.
func BenchmarkParseAnswer(b *testing.B) {
	m := query("www.example.com.", dns.TypeA)
	m.Response = true
	for i := range 20 {
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: "www.example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, byte(i)}})
	}
	m.Compress = true
	msg := pack(b, withEDNS(m, 1232, true))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(msg); err != nil {
			b.Fatal(err)
		}
	}
}
