package upstream

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func mustPack(t testing.TB, m *dns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSameQuestion(t *testing.T) {
	q := new(dns.Msg)
	q.SetQuestion("www.Example.com.", dns.TypeAAAA)
	q.SetEdns0(1232, false)
	query := mustPack(t, q)
	qEnd, err := questionEnd(query)
	if err != nil {
		t.Fatal(err)
	}
	reply := func(mod func(r *dns.Msg)) []byte {
		r := new(dns.Msg)
		r.SetReply(q)
		if mod != nil {
			mod(r)
		}
		return mustPack(t, r)
	}
	// A question of two names, the second compressed against the first.
	compressed := []byte{
		0, 1, 0x80, 0, 0, 2, 0, 0, 0, 0, 0, 0,
		3, 'w', 'w', 'w', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0, 0, 28, 0, 1,
		4, 'm', 'a', 'i', 'l', 0xc0, 16, 0, 1, 0, 1,
	}
	uncompressed := []byte{
		0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0,
		3, 'W', 'W', 'W', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0, 0, 28, 0, 1,
		4, 'm', 'a', 'i', 'l', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0, 0, 1, 0, 1,
	}
	uEnd, err := questionEnd(uncompressed)
	if err != nil {
		t.Fatal(err)
	}
	loop := append([]byte(nil), compressed...)
	loop[39] = 38 // the second name's pointer now points at itself

	tests := []struct {
		name  string
		query []byte
		qEnd  int
		resp  []byte
		want  bool
	}{
		{"same", query, qEnd, reply(nil), true},
		{"name in other case (0x20)", query, qEnd, reply(func(r *dns.Msg) { r.Question[0].Name = "WWW.EXAMPLE.COM." }), true},
		{"other name", query, qEnd, reply(func(r *dns.Msg) { r.Question[0].Name = "www.example.net." }), false},
		{"longer name", query, qEnd, reply(func(r *dns.Msg) { r.Question[0].Name = "www.example.com.x." }), false},
		{"other type", query, qEnd, reply(func(r *dns.Msg) { r.Question[0].Qtype = dns.TypeA }), false},
		{"other class", query, qEnd, reply(func(r *dns.Msg) { r.Question[0].Qclass = dns.ClassCHAOS }), false},
		{"no question", query, qEnd, reply(func(r *dns.Msg) { r.Question = nil }), false},
		{"not a response", query, qEnd, query, false},
		{"truncated", query, qEnd, reply(nil)[:20], false},
		{"two questions, compressed reply", uncompressed, uEnd, compressed, true},
		{"pointer to itself", uncompressed, uEnd, loop, false},
		{"header only", query, qEnd, reply(nil)[:12], false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sameQuestion(tt.query, tt.qEnd, tt.resp); got != tt.want {
				t.Errorf("sameQuestion = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestQuestionEnd(t *testing.T) {
	q := new(dns.Msg)
	q.SetQuestion("a.b.", dns.TypeA)
	q.SetEdns0(1232, false)
	good := mustPack(t, q)
	long := []byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	for range 5 {
		long = append(long, 63)
		long = append(long, []byte(strings.Repeat("a", 63))...)
	}
	long = append(long, 0, 0, 1, 0, 1)
	tests := []struct {
		name    string
		msg     []byte
		wantEnd int // 0: error
	}{
		{"query", good, 12 + 5 + 4},
		{"no question", good[:12], 0}, // QDCOUNT 1 but nothing follows
		{"short", good[:5], 0},
		{"cut before type", good[:12+5+2], 0},
		{"name over 255 bytes", long, 0},
		{"reserved label type", append(append([]byte(nil), good[:12]...), 0x40, 0, 0, 1, 0, 1), 0},
		{"forward pointer", append(append([]byte(nil), good[:12]...), 0xc0, 14, 0, 0, 1, 0, 1), 0},
		{"pointer into header", append(append([]byte(nil), good[:12]...), 0xc0, 2, 0, 1, 0, 1), 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			end, err := questionEnd(tt.msg)
			if tt.wantEnd == 0 {
				if err == nil {
					t.Errorf("questionEnd = %d, want an error", end)
				}
				return
			}
			if err != nil || end != tt.wantEnd {
				t.Errorf("questionEnd = %d, %v; want %d", end, err, tt.wantEnd)
			}
		})
	}
}

// FuzzSameQuestion checks the response-matching parser on arbitrary bytes:
// it never panics, a response always matches its own query's echo, and it
// agrees with miekg/dns wherever miekg can decode both messages.
func FuzzSameQuestion(f *testing.F) {
	q := new(dns.Msg)
	q.SetQuestion("www.example.com.", dns.TypeA)
	q.SetEdns0(1232, true)
	query, _ := q.Pack()
	r := new(dns.Msg)
	r.SetReply(q)
	r.Question[0].Name = "WWW.example.COM."
	resp, _ := r.Pack()
	f.Add(query, resp)
	f.Add(query, query)
	f.Add([]byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 'a', 0, 0, 1, 0, 1, 0xc0, 12, 0, 1, 0, 1},
		[]byte{0, 1, 0x80, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 'A', 0, 0, 1, 0, 1, 1, 'a', 0, 0, 1, 0, 1})
	f.Fuzz(func(t *testing.T, query, resp []byte) {
		qEnd, err := questionEnd(query)
		_, _ = questionEnd(resp)
		if err != nil {
			return
		}
		got := sameQuestion(query, qEnd, resp)

		// A response echoing the query's own bytes (QR set) always matches.
		echo := append([]byte(nil), query...)
		echo[2] |= flagQR
		if !sameQuestion(query, qEnd, echo) {
			t.Fatalf("query does not match its own echo: %x", query)
		}

		// miekg/dns stops quietly where a message ends, and follows forward
		// pointers; compare only messages both parsers read in full.
		var qm, rm dns.Msg
		if qm.Unpack(query) != nil || rm.Unpack(resp) != nil ||
			len(qm.Question) != qdCount(query) || len(rm.Question) != qdCount(resp) {
			return
		}
		if _, err := questionEnd(resp); err != nil {
			if got {
				t.Fatalf("matched a response whose question section is malformed: %x", resp)
			}
			return
		}
		want := rm.Response && len(qm.Question) == len(rm.Question)
		for i := 0; want && i < len(qm.Question); i++ {
			a, b := qm.Question[i], rm.Question[i]
			want = a.Qtype == b.Qtype && a.Qclass == b.Qclass && strings.EqualFold(a.Name, b.Name)
		}
		if got != want {
			t.Fatalf("sameQuestion = %v, miekg/dns says %v\nquery %x\nresp  %x\n%v\n%v", got, want, query, resp, qm.Question, rm.Question)
		}
	})
}
