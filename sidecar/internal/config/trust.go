package config

import (
	"bufio"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"strings"
)

// ParsePin decodes one SPKI pin: the standard base64 of the SHA-256 digest of
// a certificate's DER SubjectPublicKeyInfo, as printed by
//
//	openssl x509 -pubkey -noout -in cert.pem | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64
//
// and taken by kdig +tls-pin.
func ParsePin(s string) ([32]byte, error) {
	var pin [32]byte
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return pin, fmt.Errorf("pin %q is not base64 (want the base64 SHA-256 of a SubjectPublicKeyInfo)", s)
	}
	if len(b) != len(pin) {
		return pin, fmt.Errorf("pin %q decodes to %d bytes, want 32 (a SHA-256 digest)", s, len(b))
	}
	copy(pin[:], b)
	return pin, nil
}

// FormatPin is the inverse of ParsePin.
func FormatPin(pin [32]byte) string {
	return base64.StdEncoding.EncodeToString(pin[:])
}

// parsePinList parses the comma-separated TLS_PINS form.
func parsePinList(s string) ([][32]byte, error) {
	var pins [][32]byte
	for i, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			return nil, fmt.Errorf("pin %d is empty", i+1)
		}
		pin, err := ParsePin(p)
		if err != nil {
			return nil, err
		}
		pins = appendPin(pins, pin)
	}
	return pins, nil
}

// appendPin adds pin unless it is already there: a repeated pin is harmless,
// and keeping the list unique keeps comparisons by the reloader simple.
func appendPin(pins [][32]byte, pin [32]byte) [][32]byte {
	for _, p := range pins {
		if p == pin {
			return pins
		}
	}
	return append(pins, pin)
}

// ParsePins reads the TLS_PINS_FILE format: one pin a line; blank lines and
// everything after a '#' are ignored. A file without any pin is an error
// (ErrNoPins).
func ParsePins(r io.Reader) ([][32]byte, error) {
	var pins [][32]byte
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		pin, err := ParsePin(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		pins = appendPin(pins, pin)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(pins) == 0 {
		return nil, ErrNoPins
	}
	return pins, nil
}

// LoadPinsFile reads and parses a pins file (see ParsePins).
func LoadPinsFile(path string) ([][32]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	pins, err := ParsePins(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pins, nil
}

// LoadCAFile reads a PEM bundle and returns a pool holding its certificates.
// Unlike x509.CertPool.AppendCertsFromPEM, it fails on a CERTIFICATE block
// that does not parse and on a file without any certificate (ErrNoCertificate),
// so a damaged bundle is noticed instead of quietly trusting less or nothing.
// Blocks of other types (a key shipped alongside) are ignored.
func LoadCAFile(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool, err := parseCAs(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pool, nil
}

func parseCAs(data []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if n == 0 {
		return nil, ErrNoCertificate
	}
	return pool, nil
}
