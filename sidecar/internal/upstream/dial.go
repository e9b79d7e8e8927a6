package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/rawconn"
)

// tlsUpstream is what a DNS-over-TLS and a DNS-over-HTTPS upstream share:
// its identity, logger and metrics, the dialing and verifying of its TLS
// connections, and the resending of a query whose connection died
// (exchange.go), so that both verify the same way, count the same failures
// and log them alike.
type tlsUpstream struct {
	name       string     // the upstream's Name(), for errors and logs
	addr       string     // IP:port, never a name
	serverName string     // verified in the certificate, sent as SNI
	pins       [][32]byte // the upstream's own; the Trust's default ones when empty
	trust      *Trust
	nextProtos []string // ALPN; when set, the server must choose the first
	timeout    time.Duration
	sessions   tls.ClientSessionCache
	rewrite    dnswire.QueryRewrite // how each query is written out (AppendQuery)
	log        *slog.Logger
	m          *upstreamMetrics

	lastTLSWarn atomic.Int64 // unix nanos of the last TLS failure logged at Warn
	newLost     atomic.Int32 // new connections lost in a row before answering anything (newconn.go)

	// answered counts the responses to our queries read on any of the
	// upstream's connections, late ones included: proof that the upstream
	// serves. A query that times out on a connection that answered
	// nothing meanwhile is still a slow name when another connection did:
	// under a flood of names the upstream never answers, a connection can
	// carry nothing else for a while, and its silence is theirs, not the
	// upstream's.
	answered atomic.Uint64

	// verifyHook, when set by a test before the first query, sees every
	// handshake's connection state.
	verifyHook func(tls.ConnectionState)
}

// newTLSUpstream is the shared part of an upstream named name, writing its
// queries with rewrite and offering nextProtos in ALPN.
func newTLSUpstream(opts DoTOptions, name string, rewrite dnswire.QueryRewrite, nextProtos ...string) tlsUpstream {
	return tlsUpstream{
		name:       name,
		rewrite:    rewrite,
		addr:       opts.Addr.String(),
		serverName: opts.ServerName,
		pins:       opts.Pins,
		trust:      opts.Trust,
		nextProtos: nextProtos,
		timeout:    opts.DialTimeout,
		sessions:   tls.NewLRUClientSessionCache(0),
		log:        opts.Logger,
		m:          newUpstreamMetrics(opts.Metrics, name),
	}
}

// tlsConfig is built per dial from one snapshot of the Trust, so the roots
// Go verifies the chain against and the pins checked below always agree.
// Verification is never skipped: the pin check only narrows it.
func (t *tlsUpstream) tlsConfig(st *trustState) *tls.Config {
	pins := t.pinsFor(st)
	return &tls.Config{
		ServerName: t.serverName,
		RootCAs:    st.roots,
		MinVersion: tls.VersionTLS12,
		// DoT sends no ALPN: RFC 7858 does not ask for it, common DoT
		// clients (kdig, stubby, Unbound) send none, and a TLS front end that
		// speaks ALPN for other protocols answers an unknown "dot" with a
		// fatal no_application_protocol alert. DoH offers "h2" alone.
		NextProtos:         t.nextProtos,
		ClientSessionCache: t.sessions,
		// VerifyConnection, unlike VerifyPeerCertificate, also runs when a
		// session is resumed, so a pin change cannot be bypassed by a ticket.
		// On resumption Go has re-checked the session's chains against
		// RootCAs before offering it.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if t.verifyHook != nil {
				t.verifyHook(cs)
			}
			if len(cs.VerifiedChains) == 0 {
				return fmt.Errorf("%w: no verified certificate chain", ErrTLS)
			}
			if err := checkPins(cs.VerifiedChains, pins); err != nil {
				return &pinMismatchError{presented: presentedPins(cs.PeerCertificates), err: err}
			}
			return nil
		},
	}
}

func (t *tlsUpstream) pinsFor(st *trustState) [][32]byte {
	if len(t.pins) > 0 {
		return t.pins
	}
	return st.pins
}

// dial opens and verifies one TLS connection, and returns it with the trust
// it was verified against. It is bounded by the dial timeout and by life
// (the upstream's own context, cancelled by Close), not by the query that
// asked for it: queries waiting for it give up at their own deadlines, and
// the connection serves whoever comes next. A successful dial counts as
// opened and open.
func (t *tlsUpstream) dial(life context.Context) (*tls.Conn, *trustState, error) {
	ctx, cancel := context.WithTimeout(life, t.timeout)
	defer cancel()
	st := t.trust.load()

	var nd net.Dialer
	raw, err := nd.DialContext(ctx, "tcp", t.addr)
	if err != nil {
		if life.Err() != nil {
			return nil, nil, ErrClosed
		}
		return nil, nil, &dialError{stage: stageConnect, err: fmt.Errorf("%w: dialing %s: %w", ErrUnreachable, t.name, err)}
	}
	tc := tls.Client(rawconn.Wrap(raw, true), t.tlsConfig(st))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		if life.Err() != nil {
			return nil, nil, ErrClosed
		}
		t.m.hsFailures.Inc()
		return nil, nil, t.handshakeError(ctx, err)
	}
	if len(t.nextProtos) > 0 && tc.ConnectionState().NegotiatedProtocol != t.nextProtos[0] {
		// A server that ignores ALPN completes the handshake without
		// choosing; one that speaks only other protocols fails it above.
		_ = raw.Close()
		t.m.hsFailures.Inc()
		return nil, nil, &dialError{stage: stageHandshake, err: fmt.Errorf("%w: TLS handshake with %s: ALPN %q not chosen (got %q)",
			ErrTLS, t.name, t.nextProtos[0], tc.ConnectionState().NegotiatedProtocol)}
	}
	t.m.opened.Inc()
	t.m.open.Inc()
	return tc, st, nil
}

// handshakeError classifies a failed handshake, whose TCP connection was
// made, and says so: an operator must tell a server that accepts and then
// says nothing (a firewall, a port that is not DoT) from one that refuses,
// and both from a certificate that does not verify.
func (t *tlsUpstream) handshakeError(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, ErrTLS):
		// Our own check rejected what the server presented.
		e := &dialError{stage: stageVerify, err: fmt.Errorf("TLS handshake with %s: %w", t.name, err)}
		if pm, ok := errors.AsType[*pinMismatchError](err); ok {
			t.m.pinFails.Inc()
			e.presented = pm.presented
		}
		return e
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		return &dialError{stage: stageHandshake, err: &handshakeTimeout{name: t.name, limit: t.timeout}}
	case isTransportErr(err):
		// Silence or a reset before the handshake completes says nothing
		// about certificates: the upstream is not really there.
		return &dialError{stage: stageHandshake, err: fmt.Errorf("%w: TLS handshake with %s: %w", ErrUnreachable, t.name, err)}
	}
	stage := stageHandshake // an alert, a protocol or version mismatch
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		stage = stageVerify // Go's own chain or name check
	}
	return &dialError{stage: stage, err: fmt.Errorf("%w: TLS handshake with %s: %w", ErrTLS, t.name, err)}
}

// recheck verifies the certificates of an open connection against st (a
// Trust updated since the handshake): chain, name and pins, counting a pin
// failure like a handshake's.
func (t *tlsUpstream) recheck(cs *tls.ConnectionState, st *trustState) error {
	err := verifyPeer(cs.PeerCertificates, t.serverName, st, t.pinsFor(st))
	if errors.Is(err, ErrPinMismatch) {
		t.m.pinFails.Inc()
	}
	return err
}

// rejectedAttrs are the fields of the log line about a connection that
// recheck rejected with err: for a pin mismatch, the pins the upstream
// presented, so that an operator can correct the pins without openssl.
func (t *tlsUpstream) rejectedAttrs(err error, cs *tls.ConnectionState) []any {
	attrs := []any{"upstream", t.name, "error", err}
	if errors.Is(err, ErrPinMismatch) {
		attrs = append(attrs, "presented_pins", presentedPins(cs.PeerCertificates))
	}
	return attrs
}

// verifiedConn is what re-checking a connection after a Trust update needs
// of it, a DoT's conn or a DoH's dohConn.
type verifiedConn interface {
	verifiedAgainst(st *trustState) bool
	peer() *tls.ConnectionState // as verified at handshake
	retire(why string)
	setTrust(st *trustState)
}

// reverify checks every connection of conns verified against an older state
// of the Trust against st, the Trust as it is now, and retires those whose
// chain, name or pins no longer pass: they take no new queries and close once
// their queries are done. It returns how many it retired.
func reverify[C verifiedConn](t *tlsUpstream, conns []C, st *trustState) int {
	n := 0
	for _, c := range conns {
		if !c.verifiedAgainst(st) && !reverifyConn(t, c, st) {
			n++
		}
	}
	return n
}

// reverifyConn re-checks c against st, retiring it if it fails; it reports
// whether c passed.
func reverifyConn[C verifiedConn](t *tlsUpstream, c C, st *trustState) bool {
	if err := t.recheck(c.peer(), st); err != nil {
		t.log.Warn("retiring upstream connection that the updated trust rejects", t.rejectedAttrs(err, c.peer())...)
		c.retire("trust update")
		return false
	}
	c.setTrust(st)
	return true
}

// everyTick calls fn every tick until ctx is done; the caller has counted
// it in wg.
func everyTick(ctx context.Context, wg *sync.WaitGroup, tick time.Duration, fn func(now time.Time)) {
	defer wg.Done()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			fn(now)
		}
	}
}

// tlsWarnEvery limits Warn logs of certificate and pin failures, which
// repeat with every dial while the upstream or the trust is wrong.
const tlsWarnEvery = 10 * time.Second

// warnLimited reports whether a failure of the kind last stamps may be
// logged at Warn now, at most once per tlsWarnEvery, and stamps it.
func warnLimited(last *atomic.Int64) bool {
	now := time.Now().UnixNano()
	prev := last.Load()
	return now-prev >= int64(tlsWarnEvery) && last.CompareAndSwap(prev, now)
}

func (t *tlsUpstream) logDialError(err error) {
	attrs := append([]any{"upstream", t.name, "error", err}, dialLogAttrs(err)...)
	if errors.Is(err, ErrTLS) && warnLimited(&t.lastTLSWarn) {
		t.log.Warn("upstream certificate rejected", attrs...)
		return
	}
	t.log.Debug("dialing upstream failed", attrs...)
}

func tlsVersion(v uint16) string {
	switch v {
	case 0x0303:
		return "1.2"
	case 0x0304:
		return "1.3"
	}
	return fmt.Sprintf("0x%04x", v)
}

// The DoT dials through its tlsUpstream; it keeps what a dial yields in a conn.
func (d *DoT) dial() (*conn, error) {
	tc, st, err := d.tlsUpstream.dial(d.ctx)
	if err != nil {
		return nil, err
	}
	return newConn(d, tc, st), nil
}

// How far a failed dial got, the stage field of its log lines.
const (
	stageConnect   = "tcp_connect"   // no TCP connection: refused, unreachable, timed out
	stageHandshake = "tls_handshake" // TCP connected; the TLS handshake failed or never completed
	stageVerify    = "tls_verify"    // a certificate came, and the chain, the name or a pin was rejected
	stageHTTP2     = "http2_start"   // DoH: TLS verified, then HTTP/2 did not start (no SETTINGS, a close)
)

// dialError is a failed dial with what its log lines say about it besides
// the message: the stage, and for a pin mismatch the pins the upstream
// presented, so that an operator can correct TLS_PINS without openssl.
type dialError struct {
	stage     string
	presented []string
	err       error
}

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// dialLogAttrs returns the fields of a log line about err beyond the error
// itself: the stage of a failed dial, and the presented pins of a pin
// mismatch.
func dialLogAttrs(err error) []any {
	de, ok := errors.AsType[*dialError](err)
	if !ok {
		return nil
	}
	attrs := []any{"stage", de.stage}
	if len(de.presented) > 0 {
		attrs = append(attrs, "presented_pins", de.presented)
	}
	return attrs
}

// handshakeTimeout: the server accepted the TCP connection and did not
// complete the handshake within DialTimeout. Like a connect timeout, it is
// ErrUnreachable and context.DeadlineExceeded.
type handshakeTimeout struct {
	name  string
	limit time.Duration
}

func (e *handshakeTimeout) Error() string {
	return fmt.Sprintf("%v: %s: TCP connected, TLS handshake not completed within DIAL_TIMEOUT (%s)", ErrUnreachable, e.name, e.limit)
}

func (e *handshakeTimeout) Is(target error) bool {
	return target == ErrUnreachable || target == context.DeadlineExceeded
}

// pinMismatchError is ErrPinMismatch from VerifyConnection, carrying the
// pins of the certificates the upstream sent.
type pinMismatchError struct {
	presented []string
	err       error
}

func (e *pinMismatchError) Error() string { return e.err.Error() }
func (e *pinMismatchError) Unwrap() error { return e.err }

// presentedPins lists the SPKI pins of the certificates a server sent, leaf
// first, in TLS_PINS form (config.FormatPin).
func presentedPins(certs []*x509.Certificate) []string {
	out := make([]string, len(certs))
	for i, c := range certs {
		out[i] = config.FormatPin(PinOf(c))
	}
	return out
}

func isTransportErr(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		(errors.As(err, &ne) && ne.Timeout())
}
