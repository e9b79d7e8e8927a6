package server

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/miekg/dns"
)

// FuzzServe feeds arbitrary bytes to the handler, as the UDP and TCP
// listeners do. It must never panic; it stays silent only for messages
// without a header or with QR set; every reply is a well-formed response
// with the message's ID, within the client's UDP size.
func FuzzServe(f *testing.F) {
	seeds := []*dns.Msg{
		newQuery("www.example.", dns.TypeA),
		ednsQuery("big.example.", dns.TypeTXT, 4096),
		ednsQuery("huge.example.", dns.TypeTXT, 600),
		newQuery("addopt.example.", dns.TypeA),
		newQuery("optmid.example.", dns.TypeA),
		ednsQuery("servfail.example.", dns.TypeA, 1232),
		ednsQuery("err-tls.example.", dns.TypeA, 1232),
		newQuery("garbage.example.", dns.TypeA),
		ednsQuery("canary.dot-sidecar.invalid.", dns.TypeTXT, 512),
	}
	for _, m := range seeds {
		f.Add(packed(f, m))
	}
	notify := newQuery("example.", dns.TypeSOA)
	notify.Opcode = dns.OpcodeNotify
	f.Add(packed(f, notify))
	f.Add([]byte{0, 1, 2})
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 41, 2, 0, 0, 1, 0, 0, 0, 0})

	s := newUnstarted(f, Options{Upstream: &localUpstream{fuzzing: true}, QueryTimeout: 50e6})
	f.Fuzz(func(t *testing.T, msg []byte) {
		for _, p := range []proto{protoUDP, protoTCP} {
			r := s.answer(msg, p)
			silent := len(msg) < dnswire.HeaderLen || msg[2]&0x80 != 0
			if r.reply == nil {
				if !silent {
					t.Fatalf("%v: no reply to a message with a header and QR clear", p)
				}
				continue
			}
			if silent {
				t.Fatalf("%v: replied to a message that gets none", p)
			}
			reply := new(dns.Msg)
			if err := reply.Unpack(r.reply); err != nil {
				t.Fatalf("%v: reply does not unpack: %v\n% x", p, err, r.reply)
			}
			if reply.Id != binary.BigEndian.Uint16(msg) || !reply.Response {
				t.Fatalf("%v: reply header %v", p, reply.MsgHdr)
			}
			limit := dnswire.MaxMsgSize
			if p == protoUDP {
				limit = dnswire.MinUDPSize
				if q, err := dnswire.Parse(msg); err == nil && q.HasOPT() {
					limit = s.udpLimit(&q)
				}
			}
			if len(r.reply) > limit {
				t.Fatalf("%v: reply of %d bytes, limit %d", p, len(r.reply), limit)
			}
			// The local upstream answers EDNS queries with an OPT record,
			// which a truncated answer must keep.
			if q, _ := dnswire.Parse(msg); r.truncated && (!reply.Truncated || q.HasOPT() && reply.IsEdns0() == nil) {
				t.Fatalf("%v: truncated reply with TC=%v OPT=%v, want TC and, for EDNS, the OPT record", p, reply.Truncated, reply.IsEdns0())
			}
		}
	})
}

// stepClock is a cache.Clock a test moves.
type stepClock struct{ ns atomic.Int64 }

func (c *stepClock) NowNano() int64 { return c.ns.Load() }

// answerUpstream answers every query with a copy of the same bytes, whatever
// they are: a broken or hostile upstream, behind the checks every upstream
// client makes (answerTo).
type answerUpstream struct{ resp []byte }

func (u *answerUpstream) Exchange(_ context.Context, q dnswire.Msg) (dnswire.Msg, error) {
	return answerTo(&q, append([]byte(nil), u.resp...))
}
func (*answerUpstream) Name() string { return "fixed" }
func (*answerUpstream) Close() error { return nil }

// FuzzRelay feeds arbitrary upstream answers to the handler: whatever comes
// back, the client gets a structurally sound response with its ID, no OPT
// record unless it sent one, within its UDP size.
//
// The seeds stay under 1 KB on purpose: the fuzzer minimises every input
// that finds new coverage, in time quadratic in its size, and with 5 KB
// seeds a 60-second run did nothing but minimise.
func FuzzRelay(f *testing.F) {
	up := newLocalUpstream()
	up.fuzzing = true
	for _, name := range []string{"www.example.", "mid.example.", "addopt.example.", "optmid.example.", "servfail.example."} {
		for _, edns := range []bool{false, true} {
			q := newQuery(name, dns.TypeTXT)
			if edns {
				q.SetEdns0(1232, true)
			}
			qm, err := dnswire.Parse(packed(f, q))
			if err != nil {
				f.Fatal(err)
			}
			resp, err := up.Exchange(f.Context(), qm)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(resp.Wire(), edns, uint16(1232))
			if edns {
				f.Add(resp.Wire(), edns, uint16(512)) // truncated, OPT kept
			}
		}
	}
	answers := &answerUpstream{}
	s := newUnstarted(f, Options{Upstream: answers})
	// The same answers through a cache. Its clock moves past every
	// entry's life between inputs, so that each input starts empty.
	clock := &stepClock{}
	c := newCacheWith(f, answers, 16, clock)
	cs := newUnstarted(f, Options{Upstream: c, Cache: c})
	f.Fuzz(func(t *testing.T, resp []byte, edns bool, size uint16) {
		answers.resp = resp // the fuzz function is never called concurrently
		q := newQuery("www.example.", dns.TypeTXT)
		if edns {
			q.SetEdns0(size, false)
		}
		qb := packed(t, q)
		// What a client can decode from the upstream's answer, it must be
		// able to decode from ours: cutting, stripping and truncating must
		// leave every compression pointer valid.
		upm, upErr := dnswire.Parse(resp)
		decodable := upErr == nil && new(dns.Msg).Unpack(upm.Wire()) == nil
		check := func(s *Server, p proto, r result) {
			if decodable && r.err == nil {
				if err := new(dns.Msg).Unpack(r.reply); err != nil {
					t.Fatalf("%v: the upstream's answer decodes, the reply does not: %v\n% x", p, err, r.reply)
				}
			}
			m, err := dnswire.Parse(r.reply)
			if err != nil {
				t.Fatalf("%v: reply is not a DNS message: %v\n% x", p, err, r.reply)
			}
			if m.ID != q.Id || !m.Response() {
				t.Fatalf("%v: reply header %+v", p, m.Header)
			}
			if m.HasOPT() && !edns {
				t.Fatalf("%v: OPT in the reply to a query without one", p)
			}
			limit := dnswire.MaxMsgSize
			if p == protoUDP {
				qm, _ := dnswire.Parse(qb)
				limit = s.udpLimit(&qm)
			}
			if len(r.reply) > limit {
				t.Fatalf("%v: reply of %d bytes, limit %d", p, len(r.reply), limit)
			}
			if r.truncated && (!m.Truncated() || edns && upErr == nil && upm.HasOPT() && !m.HasOPT()) {
				t.Fatalf("%v: truncated reply with TC=%v OPT=%v, want TC and, for EDNS, the OPT record", p, m.Truncated(), m.HasOPT())
			}
		}
		for _, p := range []proto{protoUDP, protoTCP} {
			check(s, p, s.answer(qb, p))
		}
		// Through the cache, the same answer relayed, then kept and given
		// again, passes the same checks.
		clock.ns.Add(int64(1000 * time.Hour))
		for _, p := range []proto{protoUDP, protoTCP} {
			check(cs, p, cs.answer(qb, p))
			check(cs, p, cs.answer(qb, p))
		}
	})
}

// FuzzTCPStream writes arbitrary bytes to a TCP connection of a running
// server, as one client's whole stream, then half-closes it: the framing
// must never panic or stall. Every complete frame that holds a header with
// QR clear gets exactly one answer, each a well-formed response carrying
// the ID of one of those frames; nothing else is answered; and the server
// closes the connection once it has answered, however the stream ended
// (inside a length prefix, inside a message, or between two).
func FuzzTCPStream(f *testing.F) {
	frame := func(msgs ...[]byte) []byte {
		var b []byte
		for _, m := range msgs {
			b = binary.BigEndian.AppendUint16(b, uint16(len(m)))
			b = append(b, m...)
		}
		return b
	}
	a := packed(f, newQuery("www.example.", dns.TypeA))
	e := packed(f, ednsQuery("big.example.", dns.TypeTXT, 1232))
	resp := newQuery("www.example.", dns.TypeA)
	resp.Response = true
	f.Add(frame(a))
	f.Add(frame(a, e, packed(f, resp), a[:11]))
	f.Add(append(frame(a), 0x01))               // cut inside the next prefix
	f.Add(append(frame(a), 0x00, 0x30, 0x00))   // cut inside the next message
	f.Add(frame([]byte{}, a, make([]byte, 12))) // empty frame, then a header only
	f.Add([]byte{0xff, 0xff})

	ts := startServer(f, Options{Proto: "tcp", Upstream: &localUpstream{fuzzing: true}, Logger: slog.New(slog.DiscardHandler)})
	addr := ts.addr(f, "tcp", loopback4)
	f.Fuzz(func(t *testing.T, stream []byte) {
		// The IDs of the frames that must be answered, with their count.
		want := map[uint16]int{}
		answers := 0
		for b := stream; len(b) >= 2; {
			n := int(binary.BigEndian.Uint16(b))
			if len(b) < 2+n {
				break
			}
			if msg := b[2 : 2+n]; n >= dnswire.HeaderLen && msg[2]&0x80 == 0 {
				want[binary.BigEndian.Uint16(msg)]++
				answers++
			}
			b = b[2+n:]
		}

		c, err := net.DialTimeout("tcp", addr.String(), ioTimeout)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(ioTimeout))
		// Written by another goroutine: a server that stops reading at
		// TCPMaxInFlight until its answers are read must not deadlock the
		// test.
		wrote := make(chan error, 1)
		go func() {
			_, err := c.Write(stream)
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			wrote <- err
		}()
		got := 0
		for {
			msg, err := readMsg(c, "tcp")
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("after %d of %d answers: %v", got, answers, err)
			}
			m, err := dnswire.Parse(msg)
			if err != nil || !m.Response() {
				t.Fatalf("answer %d is no well-formed response (%v): % x", got+1, err, msg)
			}
			if want[m.ID] == 0 {
				t.Fatalf("answer with ID %d, which no frame needing an answer had", m.ID)
			}
			want[m.ID]--
			got++
		}
		if werr := <-wrote; got != answers {
			t.Fatalf("%d answers, want %d (writing the stream: %v)", got, answers, werr)
		}
	})
}
