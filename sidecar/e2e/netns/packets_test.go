package netns

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/miekg/dns"
)

// question is the first question of a DNS message a captured packet
// carries, with the packet's addresses.
type question struct {
	src, dst netip.Addr
	name     string // fully qualified, lower case
	qtype    string
	response bool
}

func (q question) String() string {
	dir := "query"
	if q.response {
		dir = "response"
	}
	return fmt.Sprintf("%s %s -> %s: %s %s", dir, q.src, q.dst, q.qtype, q.name)
}

var errNoDNS = errors.New("no DNS message")

// decodeQuestion reads a captured IPv4 or IPv6 packet (netnstest's Raw)
// carrying DNS over UDP or over TCP (a segment that starts a message, after
// its two-byte length). Only the header and the question are read, so a
// packet cut at the snap length still decodes. It returns errNoDNS for a
// TCP segment without data (handshake, acknowledgement, close).
func decodeQuestion(pkt []byte) (question, error) {
	var q question
	var proto byte
	var l4 []byte
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		hl := int(pkt[0]&0x0f) * 4
		if len(pkt) < hl {
			return q, fmt.Errorf("IPv4 header cut: % x", pkt)
		}
		q.src, _ = netip.AddrFromSlice(pkt[12:16])
		q.dst, _ = netip.AddrFromSlice(pkt[16:20])
		proto, l4 = pkt[9], pkt[hl:]
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		q.src, _ = netip.AddrFromSlice(pkt[8:24])
		q.dst, _ = netip.AddrFromSlice(pkt[24:40])
		proto, l4 = pkt[6], pkt[40:] // no extension headers on these links
	default:
		return q, fmt.Errorf("not an IP packet: % x", pkt)
	}
	var msg []byte
	switch proto {
	case 17: // UDP
		if len(l4) < 8 {
			return q, fmt.Errorf("UDP header cut: % x", pkt)
		}
		msg = l4[8:]
	case 6: // TCP
		if len(l4) < 20 || len(l4) < int(l4[12]>>4)*4 {
			return q, fmt.Errorf("TCP header cut: % x", pkt)
		}
		data := l4[int(l4[12]>>4)*4:]
		if len(data) == 0 {
			return q, errNoDNS
		}
		if len(data) < 2 {
			return q, fmt.Errorf("TCP segment of %d bytes: % x", len(data), pkt)
		}
		msg = data[2:]
	default:
		return q, fmt.Errorf("protocol %d: % x", proto, pkt)
	}
	if len(msg) < 12 || binary.BigEndian.Uint16(msg[4:6]) == 0 {
		return q, fmt.Errorf("no question in % x", msg)
	}
	name, off, err := dns.UnpackDomainName(msg, 12)
	if err != nil || len(msg) < off+2 {
		return q, fmt.Errorf("question of % x: %v", msg, err)
	}
	q.name = strings.ToLower(name)
	q.qtype = dns.TypeToString[binary.BigEndian.Uint16(msg[off:])]
	q.response = msg[2]&0x80 != 0
	return q, nil
}

// wireName is name as it travels in a message, in lower case: its labels,
// each after its length, then the root's zero length. A search list's
// expansion of the name (the name with a domain appended) does not hold
// it.
func wireName(name string) []byte {
	b := make([]byte, 255)
	n, err := dns.PackDomainName(dns.Fqdn(strings.ToLower(name)), b, 0, nil, false)
	if err != nil {
		panic(err)
	}
	return b[:n]
}

// carries reports whether a packet holds name in wire format, whatever
// the case of its letters.
func carries(pkt []byte, name string) bool {
	lower := make([]byte, len(pkt))
	for i, c := range pkt {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[i] = c
	}
	return bytes.Contains(lower, wireName(name))
}
