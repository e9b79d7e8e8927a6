package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
	"github.com/miekg/dns"
)

// localUpstream is an upstream.Upstream that answers from local data, so
// that tests can script every kind of answer and failure. The first label of
// the question's name chooses what happens:
//
//	big      an answer of about 4 KB (TXT records): truncated over UDP
//	mid      an answer of about 570 bytes: truncated only without EDNS
//	huge     an answer of about 60 KB (the most DoT can carry, nearly)
//	servfail an upstream SERVFAIL carrying the upstream's own EDE 3
//	addopt   an answer with an OPT record even when the query had none
//	optmid   the same, with a record after the OPT record
//	garbage  three bytes that are no DNS message (ErrBadResponse, see answerTo)
//	err-X    the error wrapping upstream.ErrX (see errorsByLabel)
//	slow     no answer until the query's context ends
//	hold*    no answer until the test releases it (see held)
//	nxdomain NXDOMAIN
//	anything else: one A record 192.0.2.1
//
// Answers to EDNS queries carry an OPT record echoing the query's options.
type localUpstream struct {
	arrived chan held // every "hold" query, as it arrives
	// fuzzing: slow and hold fail at once, and nothing is recorded.
	fuzzing bool

	mu      sync.Mutex
	queries [][]byte // copies of every query received
	closed  bool
}

// held is a "hold" query waiting in Exchange until release is closed.
type held struct {
	name    string
	release chan struct{}
}

var _ upstream.Upstream = (*localUpstream)(nil)

func newLocalUpstream() *localUpstream {
	return &localUpstream{arrived: make(chan held, 1024)}
}

var errorsByLabel = map[string]error{
	"err-unreachable": fmt.Errorf("dialing 192.0.2.53:853: %w", upstream.ErrUnreachable),
	"err-tls":         fmt.Errorf("handshake with 192.0.2.53:853: %w: x509: certificate signed by unknown authority", upstream.ErrTLS),
	"err-pin":         fmt.Errorf("handshake with 192.0.2.53:853: %w", upstream.ErrPinMismatch),
	"err-alldown":     upstream.ErrAllDown,
	"err-connclosed":  fmt.Errorf("reading: %w", upstream.ErrConnClosed),
	"err-bad":         fmt.Errorf("%w: short message", upstream.ErrBadResponse),
	"err-closed":      upstream.ErrClosed,
	"err-unknown":     errors.New("something nobody foresaw"),
	"err-timeout":     fmt.Errorf("waiting for the answer: %w", context.DeadlineExceeded),
	"err-badquery":    fmt.Errorf("%w: malformed name in question", upstream.ErrBadQuery),
	"err-busy":        fmt.Errorf("waiting for room: %w: %w", upstream.ErrBusy, context.DeadlineExceeded),
}

func (u *localUpstream) Name() string { return "local" }

func (u *localUpstream) Close() error {
	u.mu.Lock()
	u.closed = true
	u.mu.Unlock()
	return nil
}

// received returns copies of the queries received so far.
func (u *localUpstream) received() [][]byte {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([][]byte(nil), u.queries...)
}

func (u *localUpstream) Exchange(ctx context.Context, query dnswire.Msg) (dnswire.Msg, error) {
	if !u.fuzzing {
		u.mu.Lock()
		u.queries = append(u.queries, append([]byte(nil), query.Wire()...))
		u.mu.Unlock()
	}

	q := new(dns.Msg)
	if err := q.Unpack(query.Wire()); err != nil || len(q.Question) != 1 {
		return dnswire.Msg{}, fmt.Errorf("%w: %v", upstream.ErrBadQuery, err)
	}
	name := strings.ToLower(q.Question[0].Name)
	label, _, _ := strings.Cut(name, ".")
	if err, ok := errorsByLabel[label]; ok {
		return dnswire.Msg{}, err
	}
	r := new(dns.Msg)
	r.SetReply(q)
	r.RecursionAvailable = true
	rr := func(i int) dns.RR {
		return &dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, byte(i)).To4()}
	}
	txt := func(n, size int) {
		for i := range n {
			r.Answer = append(r.Answer, &dns.TXT{
				Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60},
				Txt: []string{fmt.Sprintf("%03d-%s", i, strings.Repeat("x", size))},
			})
		}
	}
	kind := label
	if strings.HasPrefix(label, "hold") {
		kind = "hold" // hold-N: many distinct held queries
	}
	if u.fuzzing && (kind == "slow" || kind == "hold") {
		return dnswire.Msg{}, context.DeadlineExceeded
	}
	switch kind {
	case "slow":
		<-ctx.Done()
		return dnswire.Msg{}, fmt.Errorf("waiting for the answer: %w", ctx.Err())
	case "hold":
		h := held{name: name, release: make(chan struct{})}
		u.arrived <- h
		select {
		case <-h.release:
		case <-ctx.Done():
			return dnswire.Msg{}, fmt.Errorf("waiting for the answer: %w", ctx.Err())
		}
		r.Answer = append(r.Answer, rr(1))
	case "garbage":
		return answerTo(&query, []byte{1, 2, 3})
	case "big":
		txt(40, 100) // ~4.6 KB
	case "mid":
		txt(7, 60) // ~570 B: small enough for the fuzzer's minimizer
	case "huge":
		txt(250, 230) // ~60 KB
	case "servfail":
		r.Rcode = dns.RcodeServerFailure
	case "nxdomain":
		r.Rcode = dns.RcodeNameError
	default:
		r.Answer = append(r.Answer, rr(1))
	}
	opt := q.IsEdns0()
	if opt != nil || label == "addopt" || label == "optmid" {
		o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		o.SetUDPSize(1232)
		if opt != nil {
			o.SetDo(opt.Do())
			o.Option = append(o.Option, opt.Option...)
		}
		if label == "servfail" {
			o.Option = append(o.Option, &dns.EDNS0_EDE{InfoCode: dns.ExtendedErrorCodeDNSBogus, ExtraText: "from upstream"})
		}
		o.Option = append(o.Option, &dns.EDNS0_PADDING{Padding: make([]byte, 16)})
		r.Extra = append(r.Extra, o)
	}
	if label == "optmid" {
		r.Extra = append(r.Extra, rr(2))
	}
	r.Compress = true
	b, err := r.Pack()
	if err != nil {
		return dnswire.Msg{}, err
	}
	return answerTo(&query, b)
}

// answerTo does with b what an upstream client does with what it reads
// before returning it as the answer to q: it must parse whole and answer
// q's question (or it is ErrBadResponse), and it gets q's ID.
func answerTo(q *dnswire.Msg, b []byte) (dnswire.Msg, error) {
	ans, err := dnswire.Parse(b)
	switch {
	case !ans.Answers(q):
		return dnswire.Msg{}, fmt.Errorf("%w: %w", upstream.ErrBadResponse, dnswire.ErrNotAnswer)
	case err != nil:
		return dnswire.Msg{}, fmt.Errorf("%w: %w", upstream.ErrBadResponse, err)
	}
	ans.SetID(q.ID)
	return ans, nil
}
