package upstream

import (
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
)

// Trust is what upstream certificates are verified against: the system roots
// or a CA bundle, and the default SPKI pins for upstreams that carry none of
// their own. Many upstreams share one Trust; Update swaps it atomically while
// queries run, and each DoT then re-checks its open connections (Reverify, or
// on its own within a housekeeping tick). A Trust loaded from files
// (LoadTrust) is kept up to date with them by a TrustReloader.
type Trust struct {
	state atomic.Pointer[trustState]
	files []trustFile // what LoadTrust built it from; fixed after
}

// trustState is immutable once published; a pointer change means "trust
// changed".
type trustState struct {
	roots *x509.CertPool // nil: the system roots
	pins  [][32]byte
}

// NewTrust returns a Trust of roots (nil for the system roots) and default
// pins (none: chain and name verification alone), watched by no file.
func NewTrust(roots *x509.CertPool, pins [][32]byte) *Trust {
	t := &Trust{}
	t.Update(roots, pins)
	return t
}

// Update replaces the roots and default pins. Handshakes started afterwards
// use the new ones; connections already open are re-checked by each DoT's
// Reverify.
func (t *Trust) Update(roots *x509.CertPool, pins [][32]byte) {
	t.state.Store(&trustState{roots: roots, pins: slices.Clone(pins)})
}

func (t *Trust) load() *trustState { return t.state.Load() }

// PinOf returns the SPKI pin of cert.
func PinOf(cert *x509.Certificate) [32]byte {
	return sha256.Sum256(cert.RawSubjectPublicKeyInfo)
}

// checkPins succeeds when no pins apply or when a certificate of a verified
// chain (leaf or CA) carries a pinned key. Only verified chains count: a pin
// never stands in for chain and name verification.
func checkPins(chains [][]*x509.Certificate, pins [][32]byte) error {
	if len(pins) == 0 {
		return nil
	}
	for _, chain := range chains {
		for _, cert := range chain {
			if slices.Contains(pins, PinOf(cert)) {
				return nil
			}
		}
	}
	return ErrPinMismatch
}

// verifyPeer verifies a peer's certificates from scratch against trust: the
// chain up to the roots, the server name, then the pins. Reverify uses it on
// connections verified under an older Trust.
func verifyPeer(certs []*x509.Certificate, serverName string, st *trustState, pins [][32]byte) error {
	if len(certs) == 0 {
		return fmt.Errorf("%w: no peer certificate", ErrTLS)
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	chains, err := certs[0].Verify(x509.VerifyOptions{
		DNSName:       serverName,
		Roots:         st.roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("%w: %w", ErrTLS, err)
	}
	return checkPins(chains, pins)
}

var errNoServerName = errors.New("ServerName is mandatory: the certificate is verified against it")
