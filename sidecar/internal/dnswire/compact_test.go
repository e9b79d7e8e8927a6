package dnswire

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/miekg/dns"
)

func TestAppendCompact(t *testing.T) {
	unknown := &dns.EDNS0_LOCAL{Code: 65001, Data: []byte("opaque")}
	withRecords := withEDNS(query("Example.COM.", dns.TypeA), 1232, true, unknown)
	withRecords.Answer = append(withRecords.Answer, &dns.A{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: []byte{192, 0, 2, 1}})
	withRecords.Ns = append(withRecords.Ns, &dns.NS{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeNS, Class: dns.ClassINET}, Ns: "ns.example.com."})
	withRecords.Extra = append([]dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: "x.example.com.", Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: []string{"extra"}}}, withRecords.Extra...)
	withRecords.Compress = true

	tests := []struct {
		name string
		msg  []byte
		want *dns.Msg // what the compact form decodes to
	}{
		{"plain query", pack(t, query("example.com.", dns.TypeAAAA)), query("example.com.", dns.TypeAAAA)},
		{
			"bytes after the last record",
			append(pack(t, query("example.com.", dns.TypeA)), make([]byte, 60000)...),
			query("example.com.", dns.TypeA),
		},
		{
			"EDNS with options, DO and a large size",
			pack(t, withEDNS(query("example.org.", dns.TypeTXT), 4096, true, unknown)),
			withEDNS(query("example.org.", dns.TypeTXT), 4096, true, unknown),
		},
		{
			"records in every section, compressed",
			pack(t, withRecords),
			withEDNS(query("Example.COM.", dns.TypeA), 1232, true, unknown),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := mustParse(t, tt.msg)
			orig := bytes.Clone(tt.msg)
			prefix := []byte("kept")
			c := m.AppendCompact(prefix)
			if !bytes.Equal(tt.msg, orig) {
				t.Error("AppendCompact changed the message")
			}
			if got := c.Wire(); len(got) != m.CompactLen() {
				t.Errorf("compact form of %d bytes, CompactLen %d", len(got), m.CompactLen())
			}
			// The Msg returned is what Parse makes of its bytes.
			p, err := Parse(c.Wire())
			if err != nil || !reflect.DeepEqual(parsed(p), parsed(c)) {
				t.Fatalf("compact form parses as %+v, %v; AppendCompact said %+v", p, err, c)
			}
			got := new(dns.Msg)
			if err := got.Unpack(c.Wire()); err != nil {
				t.Fatal(err)
			}
			tt.want.Compress = false
			if got.String() != tt.want.String() {
				t.Errorf("compact form decodes to\n%v\nwant\n%v", got, tt.want)
			}
			if c.Flags != m.Flags || c.ID != m.ID || !bytes.Equal(c.QName(), m.QName()) {
				t.Errorf("header or question changed: %+v, was %+v", c.Header, m.Header)
			}
		})
	}
}

func TestAppendCompactDoesNotAllocate(t *testing.T) {
	m := mustParse(t, pack(t, withEDNS(query("example.com.", dns.TypeA), 1232, false)))
	dst := make([]byte, 0, 512)
	if n := testing.AllocsPerRun(100, func() { _ = m.AppendCompact(dst[:0]) }); n != 0 {
		t.Errorf("AppendCompact allocates %.0f times", n)
	}
}
