package dnswire

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"slices"
	"testing"

	"github.com/miekg/dns"
)

// optionCodes lists the codes of the OPT record's options in b, decoded by
// miekg/dns; nil when b has no OPT record.
func optionCodes(t testing.TB, b []byte) (codes []uint16, opt *dns.OPT) {
	t.Helper()
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatalf("miekg/dns cannot decode the result: %v", err)
	}
	opt = m.IsEdns0()
	if opt == nil {
		return nil, nil
	}
	for _, o := range opt.Option {
		codes = append(codes, o.Option())
	}
	return codes, opt
}

func TestAppendQuery(t *testing.T) {
	ecs := &dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: []byte{198, 51, 100, 0}}
	cookie := &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"}
	keepalive := &dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE}
	padding := &dns.EDNS0_PADDING{Padding: make([]byte, 40)}
	nsid := &dns.EDNS0_NSID{Code: dns.EDNS0NSID}
	unknown := &dns.EDNS0_LOCAL{Code: 65001, Data: []byte("opaque")}
	all := func() *dns.Msg {
		return withEDNS(query("www.example.com.", dns.TypeAAAA), 4096, true, cookie, ecs, keepalive, nsid, padding, unknown)
	}
	// A record after the OPT record: a relay must carry it along unchanged.
	trailing := func() []byte {
		m := withEDNS(query("www.example.com.", dns.TypeA), 1232, false, cookie)
		m.Extra = append(m.Extra, &dns.TXT{Hdr: dns.RR_Header{Name: "t.example.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{"after"}})
		return pack(t, m)
	}

	tests := []struct {
		name      string
		msg       []byte
		r         QueryRewrite
		unchanged bool     // the bytes are the query's, with the new ID
		wantOpts  []uint16 // the options sent, padding last when padded
		wantSize  uint16   // the OPT record's payload size
		wantDO    bool
		padded    bool
	}{
		{name: "no OPT, plain hop", msg: pack(t, query("example.com.", dns.TypeA)), unchanged: true},
		{name: "OPT with nothing to drop, plain hop", msg: pack(t, withEDNS(query("example.com.", dns.TypeA), 1232, true, nsid, unknown)), unchanged: true},
		{
			name: "no OPT, padded", msg: pack(t, query("example.com.", dns.TypeA)), r: QueryRewrite{PadBlock: PadBlock},
			wantOpts: []uint16{OptionPadding}, wantSize: addedUDPSize, padded: true,
		},
		{
			name: "no OPT, padded with keepalive", msg: pack(t, query("example.com.", dns.TypeA)), r: QueryRewrite{PadBlock: PadBlock, Keepalive: true},
			wantOpts: []uint16{OptionKeepalive, OptionPadding}, wantSize: addedUDPSize, padded: true,
		},
		{
			name: "hop options dropped, plain hop", msg: pack(t, all()),
			wantOpts: []uint16{dns.EDNS0NSID, 65001}, wantSize: 4096, wantDO: true,
		},
		{
			name: "hop options dropped, Client Subnet kept", msg: pack(t, all()), r: QueryRewrite{KeepClientSubnet: true},
			wantOpts: []uint16{OptionECS, dns.EDNS0NSID, 65001}, wantSize: 4096, wantDO: true,
		},
		{
			name: "hop options replaced by ours, padded", msg: pack(t, all()), r: QueryRewrite{PadBlock: PadBlock, Keepalive: true},
			wantOpts: []uint16{dns.EDNS0NSID, 65001, OptionKeepalive, OptionPadding}, wantSize: 4096, wantDO: true, padded: true,
		},
		{
			name: "record after the OPT record", msg: trailing(), r: QueryRewrite{PadBlock: PadBlock},
			wantOpts: []uint16{OptionPadding}, wantSize: 1232, padded: true,
		},
		{
			// A name compressed to the OPT record's root owner: moving bytes
			// after it would break the pointer, so nothing is rewritten.
			name: "pointer into the OPT record", msg: pointerIntoOPT(t), r: QueryRewrite{PadBlock: PadBlock},
			unchanged: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mustParse(t, tt.msg)
			before := slices.Clone(m.Wire())
			out := m.AppendQuery([]byte("prefix"), 0xBEEF, tt.r)
			if !bytes.HasPrefix(out, []byte("prefix")) {
				t.Fatal("dst's bytes were not kept")
			}
			out = out[len("prefix"):]
			if n := m.QueryLen(tt.r); n != len(out) {
				t.Errorf("QueryLen %d, AppendQuery wrote %d bytes", n, len(out))
			}
			if !bytes.Equal(m.Wire(), before) {
				t.Fatal("AppendQuery changed the query")
			}
			if binary.BigEndian.Uint16(out) != 0xBEEF {
				t.Errorf("ID %#x, want 0xBEEF", binary.BigEndian.Uint16(out))
			}
			if tt.unchanged {
				want := m.AppendTo(nil, 0xBEEF)
				if !bytes.Equal(out, want) {
					t.Errorf("rewritten although nothing needed it:\n got %x\nwant %x", out, want)
				}
				return
			}
			got := mustParse(t, out)
			if !bytes.Equal(got.QName(), m.QName()) || got.QType() != m.QType() || got.QClass() != m.QClass() || got.Flags != m.Flags {
				t.Errorf("header or question changed: %+v %q %d", got.Header, got.QNameText(), got.QType())
			}
			if tt.padded && len(out)%PadBlock != 0 {
				t.Errorf("%d bytes, not a multiple of %d", len(out), PadBlock)
			}
			codes, opt := optionCodes(t, out)
			if opt == nil {
				t.Fatal("no OPT record")
			}
			if !slices.Equal(codes, tt.wantOpts) {
				t.Errorf("options %v, want %v", codes, tt.wantOpts)
			}
			if opt.UDPSize() != tt.wantSize || opt.Do() != tt.wantDO || opt.Version() != 0 {
				t.Errorf("OPT size %d DO %v version %d, want %d %v 0", opt.UDPSize(), opt.Do(), opt.Version(), tt.wantSize, tt.wantDO)
			}
			for _, o := range opt.Option {
				switch o := o.(type) {
				case *dns.EDNS0_PADDING:
					if !bytes.Equal(o.Padding, make([]byte, len(o.Padding))) {
						t.Errorf("padding %x, want zeros", o.Padding)
					}
				case *dns.EDNS0_TCP_KEEPALIVE:
					if o.Timeout != 0 {
						t.Errorf("keepalive offered with timeout %d, want none (RFC 7828 §3.2.1)", o.Timeout)
					}
				}
			}
			// Every record of the query is still there, in its order.
			want, have := new(dns.Msg), new(dns.Msg)
			_ = want.Unpack(tt.msg)
			_ = have.Unpack(out)
			if len(want.Extra) > 1 || !m.HasOPT() {
				if len(have.Extra) != len(want.Extra)+boolInt(!m.HasOPT()) {
					t.Errorf("additional records %v, want %v and an OPT record", have.Extra, want.Extra)
				}
			}
		})
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// pointerIntoOPT is a query with an OPT record followed by a record whose
// owner is a compression pointer to the OPT record's root owner name.
func pointerIntoOPT(t testing.TB) []byte {
	t.Helper()
	m := withEDNS(query("example.com.", dns.TypeA), 1232, false, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})
	b := pack(t, m)
	opt := len(b) - 11 - 12 // the OPT record: 11 fixed bytes and the cookie option
	b = append(b, 0xC0|byte(opt>>8), byte(opt), 0, 16, 0, 1, 0, 0, 0, 0, 0, 1, 0)
	binary.BigEndian.PutUint16(b[10:], 2)
	return b
}

// The largest query that can still be padded is padded, and one that cannot
// is sent unpadded rather than over 65535 bytes.
func TestAppendQueryPaddingLimit(t *testing.T) {
	for _, tt := range []struct {
		size   int // the query's size before padding, OPT record included
		padded bool
	}{
		{MaxMsgSize - MaxMsgSize%PadBlock - 4, true},
		{MaxMsgSize - MaxMsgSize%PadBlock - 3, false},
	} {
		m := withEDNS(query("example.com.", dns.TypeA), 1232, false)
		base := len(pack(t, m))
		m.IsEdns0().Option = append(m.IsEdns0().Option, &dns.EDNS0_LOCAL{Code: 65001, Data: make([]byte, tt.size-base-4)})
		q := mustParse(t, pack(t, m))
		if len(q.Wire()) != tt.size {
			t.Fatalf("built a query of %d bytes, want %d", len(q.Wire()), tt.size)
		}
		out := q.AppendQuery(nil, 1, QueryRewrite{PadBlock: PadBlock})
		if n := q.QueryLen(QueryRewrite{PadBlock: PadBlock}); n != len(out) {
			t.Errorf("QueryLen %d, AppendQuery wrote %d bytes", n, len(out))
		}
		codes, _ := optionCodes(t, out)
		if got := slices.Contains(codes, OptionPadding); got != tt.padded || len(out) > MaxMsgSize {
			t.Errorf("%d-byte query: padded %v (%d bytes), want %v", tt.size, got, len(out), tt.padded)
		}
	}
}

func TestStripOptions(t *testing.T) {
	reply := func(opts ...dns.EDNS0) *dns.Msg {
		r := new(dns.Msg)
		r.SetReply(query("www.example.com.", dns.TypeA))
		r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "www.example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, 1}}}
		r.Compress = true
		return withEDNS(r, 1232, true, opts...)
	}
	padding := &dns.EDNS0_PADDING{Padding: make([]byte, 300)}
	keepalive := &dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE, Timeout: 300}
	cookie := &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "01020304050607081112131415161718"}
	ede := &dns.EDNS0_EDE{InfoCode: 3, ExtraText: "stale"}
	nsid := &dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: "6e73"}
	withTrailer := func(m *dns.Msg) *dns.Msg {
		m.Extra = append(m.Extra, &dns.TXT{Hdr: dns.RR_Header{Name: "www.example.com.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{"after"}})
		return m
	}
	hop := []uint16{OptionPadding, OptionKeepalive, OptionCookie}

	tests := []struct {
		name     string
		msg      []byte
		wantOpts []uint16
		inPlace  bool
	}{
		{"nothing to strip", pack(t, reply(nsid, ede)), []uint16{dns.EDNS0NSID, dns.EDNS0EDE}, true},
		{"padding and keepalive stripped", pack(t, reply(keepalive, ede, padding)), []uint16{dns.EDNS0EDE}, true},
		{"every option stripped", pack(t, reply(padding, cookie, keepalive)), nil, true},
		{"kept between stripped", pack(t, reply(padding, nsid, keepalive, ede, cookie)), []uint16{dns.EDNS0NSID, dns.EDNS0EDE}, true},
		// The trailing record's name is compressed against the question:
		// the pointer lies before the OPT record and stays right.
		{"record after the OPT record", pack(t, withTrailer(reply(padding, nsid))), []uint16{dns.EDNS0NSID}, true},
		{"pointer past the OPT record", forwardPointerPastOPT(t, pack(t, withTrailer(reply(padding, nsid)))), []uint16{dns.EDNS0NSID}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			buf := slices.Clone(tt.msg)
			m := mustParse(t, buf)
			ref := new(dns.Msg)
			if err := ref.Unpack(tt.msg); err != nil {
				t.Fatal(err)
			}
			if err := m.StripOptions(hop...); err != nil {
				t.Fatal(err)
			}
			if !m.Valid() || !m.HasOPT() || !m.DO() || m.UDPSize() != 1232 {
				t.Fatalf("OPT record lost or changed: %+v", m)
			}
			if inPlace := len(m.Wire()) > 0 && &m.Wire()[0] == &buf[0]; inPlace != tt.inPlace {
				t.Errorf("in place %v, want %v", inPlace, tt.inPlace)
			}
			again := mustParse(t, slices.Clone(m.Wire()))
			if !again.Valid() || len(again.Wire()) != len(m.Wire()) || again.optEnd != m.optEnd || again.end != m.end {
				t.Errorf("the Msg disagrees with its bytes: %+v, parsed again %+v", parsed(m), parsed(again))
			}
			codes, _ := optionCodes(t, m.Wire())
			if !slices.Equal(codes, tt.wantOpts) {
				t.Errorf("options %v, want %v", codes, tt.wantOpts)
			}
			got := new(dns.Msg)
			_ = got.Unpack(m.Wire())
			if len(got.Answer) != len(ref.Answer) || got.Answer[0].String() != ref.Answer[0].String() || len(got.Extra) != len(ref.Extra) {
				t.Errorf("records changed:\n%v\nwant\n%v", got, ref)
			}
			if len(ref.Extra) > 1 && got.Extra[len(got.Extra)-1].String() != ref.Extra[len(ref.Extra)-1].String() {
				t.Errorf("trailing record %v, want %v", got.Extra[len(got.Extra)-1], ref.Extra[len(ref.Extra)-1])
			}
		})
	}
}

// forwardPointerPastOPT rewrites b, a message whose last record follows its
// OPT record, so that the answer record's owner points forward at that last
// record's owner: legal, if odd, and broken by moving bytes in place.
func forwardPointerPastOPT(t testing.TB, b []byte) []byte {
	t.Helper()
	m := mustParse(t, b)
	last := int(m.optEnd) // the trailing record starts right after the OPT record
	b = slices.Clone(b)
	// The answer record starts right after the question; its owner is a
	// 2-byte pointer to the question.
	at := int(m.qEnd)
	if b[at]&0xC0 != 0xC0 {
		t.Fatalf("answer owner is not compressed: %x", b[at:at+2])
	}
	// The trailing record's owner is a pointer to the question name too:
	// aim the answer's owner at it, a pointer to a pointer to the name.
	binary.BigEndian.PutUint16(b[at:], 0xC000|uint16(last))
	if _, err := Parse(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOption(t *testing.T) {
	b := pack(t, withEDNS(query("example.com.", dns.TypeA), 1232, false,
		&dns.EDNS0_TCP_KEEPALIVE{Code: dns.EDNS0TCPKEEPALIVE, Timeout: 1200}, &dns.EDNS0_PADDING{Padding: []byte{0, 0}}))
	m := mustParse(t, b)
	if data, ok := m.Option(OptionKeepalive); !ok || !bytes.Equal(data, []byte{0x04, 0xB0}) {
		t.Errorf("keepalive %x %v, want 04b0", data, ok)
	}
	if _, ok := m.Option(OptionCookie); ok {
		t.Error("found a COOKIE that is not there")
	}
	plain := mustParse(t, pack(t, query("example.com.", dns.TypeA)))
	if _, ok := plain.Option(OptionKeepalive); ok {
		t.Error("found an option without an OPT record")
	}
}

func BenchmarkAppendQuery(b *testing.B) {
	for _, tt := range []struct {
		name string
		r    QueryRewrite
		msg  *dns.Msg
	}{
		{"AppendTo", QueryRewrite{}, query("host42.bench.example.", dns.TypeA)},
		{"padded, OPT added", QueryRewrite{PadBlock: PadBlock, Keepalive: true}, query("host42.bench.example.", dns.TypeA)},
		{"padded, client OPT", QueryRewrite{PadBlock: PadBlock, Keepalive: true},
			withEDNS(query("host42.bench.example.", dns.TypeA), 1232, true, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"})},
	} {
		b.Run(tt.name, func(b *testing.B) {
			m := mustParse(b, pack(b, tt.msg))
			buf := make([]byte, 0, 512)
			b.ReportAllocs()
			for b.Loop() {
				buf = m.AppendQuery(buf[:0], 1, tt.r)
			}
		})
	}
}

// FuzzEDNSRewrite feeds arbitrary messages to AppendQuery and StripOptions:
// neither may panic, and what each leaves must be a valid message with the
// same question and the options it promises. miekg/dns, where it decodes
// the result, must agree.
func FuzzEDNSRewrite(f *testing.F) {
	for _, m := range []*dns.Msg{
		query("example.com.", dns.TypeA),
		withEDNS(query("example.org.", dns.TypeAAAA), 4096, true,
			&dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0102030405060708"},
			&dns.EDNS0_SUBNET{Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: []byte{198, 51, 100, 0}},
			&dns.EDNS0_PADDING{Padding: make([]byte, 7)}, &dns.EDNS0_LOCAL{Code: 65001, Data: []byte{1}}),
	} {
		f.Add(pack(f, m), uint8(3))
	}
	f.Add(pointerIntoOPT(f), uint8(1))
	f.Fuzz(func(t *testing.T, b []byte, flags uint8) {
		m, err := Parse(b)
		if err != nil || m.QDCount != 1 {
			return
		}
		r := QueryRewrite{Keepalive: flags&1 != 0, KeepClientSubnet: flags&2 != 0}
		if flags&4 != 0 {
			r.PadBlock = PadBlock
		}
		out := m.AppendQuery(nil, 7, r)
		if n := m.QueryLen(r); n != len(out) {
			t.Fatalf("QueryLen %d, AppendQuery wrote %d bytes", n, len(out))
		}
		q, err := Parse(out)
		if err != nil {
			t.Fatalf("AppendQuery wrote a message Parse refuses: %v", err)
		}
		if !bytes.Equal(q.QName(), m.QName()) || q.QType() != m.QType() || q.ID != 7 {
			t.Fatalf("question or ID changed")
		}
		if m.RewritableEDNS() && (r.PadBlock > 0 || r.Keepalive) {
			if r.PadBlock > 0 && len(out)%PadBlock != 0 && len(out)+PadBlock <= MaxMsgSize {
				t.Fatalf("%d bytes, not padded", len(out))
			}
			if _, ok := q.Option(OptionKeepalive); ok != r.Keepalive {
				t.Fatalf("keepalive offered %v, want %v", ok, r.Keepalive)
			}
		}
		if m.RewritableEDNS() {
			for code := range q.options() {
				if code == OptionCookie || (code == OptionECS && !r.KeepClientSubnet) {
					t.Fatalf("option %d forwarded", code)
				}
			}
		}

		// The same message as an answer: its hop options stripped.
		before := slices.Clone(m.Wire())
		if err := m.StripOptions(OptionPadding, OptionKeepalive, OptionCookie); err != nil {
			return // miekg/dns could not encode it again
		}
		if !m.Valid() {
			t.Fatal("StripOptions left a Msg that is not Valid")
		}
		again, err := Parse(slices.Clone(m.Wire()))
		if err != nil || !reflect.DeepEqual(parsed(again), parsed(m)) {
			t.Fatalf("the Msg (%+v) disagrees with its bytes (%+v, %v); before: %x", parsed(m), parsed(again), err, before)
		}
		for code := range m.options() {
			if code == OptionPadding || code == OptionKeepalive || code == OptionCookie {
				t.Fatalf("option %d left", code)
			}
		}
	})
}
