package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

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
			return checkPins(cs.VerifiedChains, pins)
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
		return nil, fmt.Errorf("%w: dialing %s: %w", ErrUnreachable, d.name, err)
	}
	tc := tls.Client(rawconn.Wrap(raw, true), d.tlsConfig(st))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		if d.ctx.Err() != nil {
			return nil, ErrClosed
		}
		d.m.hsFailures.Inc()
		switch {
		case errors.Is(err, ErrTLS):
			if errors.Is(err, ErrPinMismatch) {
				d.m.pinFails.Inc()
			}
			return nil, fmt.Errorf("TLS handshake with %s: %w", d.name, err)
		case isTransportErr(err):
			// Silence or a reset before the handshake completes says nothing
			// about certificates: the upstream is not really there.
			return nil, fmt.Errorf("%w: TLS handshake with %s: %w", ErrUnreachable, d.name, err)
		default:
			return nil, fmt.Errorf("%w: TLS handshake with %s: %w", ErrTLS, d.name, err)
		}
	}
	d.m.opened.Inc()
	d.m.open.Inc()
	return newConn(d, tc, st), nil
}

func isTransportErr(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		(errors.As(err, &ne) && ne.Timeout())
}
