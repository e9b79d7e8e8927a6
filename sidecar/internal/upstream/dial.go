package upstream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/rawconn"
)

// tlsConfig is built per dial from one snapshot of the Trust, so the roots
// Go verifies the chain against and the pins checked below always agree.
// Verification is never skipped: the pin check only narrows it.
func (d *DoT) tlsConfig(st *trustState) *tls.Config {
	pins := d.pinsFor(st)
	return &tls.Config{
		ServerName: d.opts.ServerName,
		RootCAs:    st.roots,
		MinVersion: tls.VersionTLS12,
		// No ALPN: RFC 7858 does not ask for it, common DoT clients (kdig,
		// stubby, Unbound) send none, and a TLS front end that speaks ALPN
		// for other protocols answers an unknown "dot" with a fatal
		// no_application_protocol alert.
		ClientSessionCache: d.sessions,
		// VerifyConnection, unlike VerifyPeerCertificate, also runs when a
		// session is resumed, so a pin change cannot be bypassed by a ticket.
		// On resumption Go has re-checked the session's chains against
		// RootCAs before offering it.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if d.verifyHook != nil {
				d.verifyHook(cs)
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

func (d *DoT) pinsFor(st *trustState) [][32]byte {
	if len(d.opts.Pins) > 0 {
		return d.opts.Pins
	}
	return st.pins
}

// dial opens and verifies one TLS connection. It is bounded by DialTimeout
// and by Close, not by the query that asked for it: queries waiting for it
// give up at their own deadlines, and the connection serves whoever comes
// next.
func (d *DoT) dial() (*conn, error) {
	ctx, cancel := context.WithTimeout(d.ctx, d.opts.DialTimeout)
	defer cancel()
	st := d.opts.Trust.load()

	var nd net.Dialer
	raw, err := nd.DialContext(ctx, "tcp", d.addr)
	if err != nil {
		if d.ctx.Err() != nil {
			return nil, ErrClosed
		}
		return nil, &dialError{stage: stageConnect, err: fmt.Errorf("%w: dialing %s: %w", ErrUnreachable, d.name, err)}
	}
	tc := tls.Client(rawconn.Wrap(raw, true), d.tlsConfig(st))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		if d.ctx.Err() != nil {
			return nil, ErrClosed
		}
		d.m.hsFailures.Inc()
		return nil, d.handshakeError(ctx, err)
	}
	d.m.opened.Inc()
	d.m.open.Inc()
	return newConn(d, tc, st), nil
}

// handshakeError classifies a failed handshake, whose TCP connection was
// made, and says so: an operator must tell a server that accepts and then
// says nothing (a firewall, a port that is not DoT) from one that refuses,
// and both from a certificate that does not verify.
func (d *DoT) handshakeError(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, ErrTLS):
		// Our own check rejected what the server presented.
		e := &dialError{stage: stageVerify, err: fmt.Errorf("TLS handshake with %s: %w", d.name, err)}
		if pm, ok := errors.AsType[*pinMismatchError](err); ok {
			d.m.pinFails.Inc()
			e.presented = pm.presented
		}
		return e
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		return &dialError{stage: stageHandshake, err: &handshakeTimeout{name: d.name, limit: d.opts.DialTimeout}}
	case isTransportErr(err):
		// Silence or a reset before the handshake completes says nothing
		// about certificates: the upstream is not really there.
		return &dialError{stage: stageHandshake, err: fmt.Errorf("%w: TLS handshake with %s: %w", ErrUnreachable, d.name, err)}
	}
	stage := stageHandshake // an alert, a protocol or version mismatch
	if _, ok := errors.AsType[*tls.CertificateVerificationError](err); ok {
		stage = stageVerify // Go's own chain or name check
	}
	return &dialError{stage: stage, err: fmt.Errorf("%w: TLS handshake with %s: %w", ErrTLS, d.name, err)}
}

// How far a failed dial got, the stage field of its log lines.
const (
	stageConnect   = "tcp_connect"   // no TCP connection: refused, unreachable, timed out
	stageHandshake = "tls_handshake" // TCP connected; the TLS handshake failed or never completed
	stageVerify    = "tls_verify"    // a certificate came, and the chain, the name or a pin was rejected
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
