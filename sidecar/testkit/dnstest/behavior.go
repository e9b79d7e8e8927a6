package dnstest

import (
	"sync/atomic"
	"time"
)

// CertKind selects the certificate the server presents on new handshakes.
type CertKind int32

const (
	// CertGood: the leaf for ServerName, issued by the server's CA.
	CertGood CertKind = iota
	// CertOtherCA: a leaf for ServerName issued by a CA no client trusts.
	CertOtherCA
	// CertOtherName: a leaf from the server's CA for another name.
	CertOtherName
	// CertOtherKey: a leaf from the server's CA for ServerName with another
	// key, so a pin on the leaf no longer matches while a pin on the CA does.
	CertOtherKey
)

// Mangle selects a way to spoil responses.
type Mangle int32

const (
	MangleNone Mangle = iota
	// MangleID sends the response with another ID.
	MangleID
	// MangleQuestion sends the response with another question name.
	MangleQuestion
)

// Behavior scripts how the server misbehaves. Every field may be changed
// while the server runs; each takes effect from the next query or
// connection. The zero value is a well-behaved server. Counts of queries are
// per connection.
type Behavior struct {
	// ReverseBatch > 1: hold answers until this many are ready on a
	// connection, then send them last first.
	ReverseBatch atomic.Int32
	// DelayNanos delays every answer (see SetDelay).
	DelayNanos atomic.Int64
	// Drop: read and count queries, never answer them.
	Drop atomic.Bool
	// CloseAfter > 0: after answering the Nth query of a connection (and
	// every earlier one, delayed answers included), close it (TLS
	// close_notify then FIN); queries sent behind the Nth are never read.
	CloseAfter atomic.Int32
	// ResetAfter > 0: on reading the Nth query of a connection, reset it
	// (RST) without answering it or anything still pending.
	ResetAfter atomic.Int32
	// ResetNextConns > 0: each new connection takes one, and is reset (RST)
	// on reading its first query, unanswered: a run of that many new
	// connections lost before any answer.
	ResetNextConns atomic.Int32
	// KeepaliveNanos > 0 (see SetKeepalive): answer each query that offers
	// edns-tcp-keepalive with the option announcing this idle timeout
	// (RFC 7828 §3.3.2), and close a connection that has had no query for
	// this long with nothing outstanding, as the announcement says. DoT only.
	KeepaliveNanos atomic.Int64
	// Mangle spoils each response; with MangleThenAnswer the right response
	// follows the spoiled one.
	Mangle           atomic.Int32 // a Mangle
	MangleThenAnswer atomic.Bool
	// Cert is the certificate presented on new handshakes (a CertKind).
	Cert atomic.Int32
	// BlackHole: accept TCP connections and never answer the TLS handshake.
	BlackHole atomic.Bool
	// HangUp: complete the TLS handshake, then close at once, as a server at
	// its connection limit might.
	HangUp atomic.Bool
	// SplitWrites: send each length prefix one byte per TLS record, and the
	// message in two more, to exercise the client's framing.
	SplitWrites atomic.Bool
	// Nagle: write answers with Nagle's algorithm on (no TCP_NODELAY), as
	// Unbound does on its TLS port, so that an answer waits for the previous
	// one's ACK. Takes effect on new connections.
	Nagle atomic.Bool

	// DNS over HTTPS only (Options.DoH):

	// Status, when set and not 200, is every response's HTTP status, with
	// a text body instead of the answer.
	Status atomic.Int32
	// ContentType, when set, replaces application/dns-message on answers.
	ContentType atomic.Pointer[string]
	// TruncateBody: answers declare their whole length, send half of it,
	// and end the stream there.
	TruncateBody atomic.Bool
	// OversizeBody: answers are padded to 65536 bytes, one more than a DNS
	// message can have.
	OversizeBody atomic.Bool
	// ResetStream: every request's stream is reset (RST_STREAM
	// INTERNAL_ERROR) instead of answered.
	ResetStream atomic.Bool
	// GoAwayAfter > 0: on answering the Nth request of a connection, the
	// server sends GOAWAY; it finishes the requests it has read, refuses
	// those it has not, and closes the connection.
	GoAwayAfter atomic.Int32
	// NoH2: new handshakes offer HTTP/1.1 instead of HTTP/2 in ALPN.
	NoH2 atomic.Bool
}

// SetContentType makes answers carry ct as their content type ("" sends
// the header empty).
func (b *Behavior) SetContentType(ct string) { b.ContentType.Store(&ct) }

// SetDelay delays every answer by d (0: no delay).
func (b *Behavior) SetDelay(d time.Duration) { b.DelayNanos.Store(int64(d)) }

// SetKeepalive announces d as the idle timeout, and keeps to it (0: no
// announcement, no idle close). d is sent in 100 ms units, rounded down.
func (b *Behavior) SetKeepalive(d time.Duration) { b.KeepaliveNanos.Store(int64(d)) }

// SetMangle spoils responses; thenAnswer also sends the right one after.
func (b *Behavior) SetMangle(m Mangle, thenAnswer bool) {
	b.MangleThenAnswer.Store(thenAnswer)
	b.Mangle.Store(int32(m))
}

// SetCert selects the certificate for new handshakes.
func (b *Behavior) SetCert(k CertKind) { b.Cert.Store(int32(k)) }

// Reset makes the server well-behaved again, field by field, while it runs.
func (b *Behavior) Reset() {
	for _, v := range []*atomic.Int32{&b.ReverseBatch, &b.CloseAfter, &b.ResetAfter, &b.ResetNextConns, &b.Mangle, &b.Cert,
		&b.Status, &b.GoAwayAfter} {
		v.Store(0)
	}
	for _, v := range []*atomic.Bool{&b.Drop, &b.MangleThenAnswer, &b.BlackHole, &b.HangUp, &b.SplitWrites, &b.Nagle,
		&b.TruncateBody, &b.OversizeBody, &b.ResetStream, &b.NoH2} {
		v.Store(false)
	}
	b.DelayNanos.Store(0)
	b.KeepaliveNanos.Store(0)
	b.ContentType.Store(nil)
}
