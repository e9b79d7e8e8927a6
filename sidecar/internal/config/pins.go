package config

import (
	"encoding/base64"
	"fmt"
	"strings"
)

// ParsePin decodes one SPKI pin: the standard base64 of the SHA-256 digest of
// a certificate's DER SubjectPublicKeyInfo, as printed by
//
//	openssl x509 -pubkey -noout -in cert.pem | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64
//
// and taken by kdig +tls-pin. It is the one parser of a pin: TLS_PINS and
// UPSTREAMS' ;pin= here, each line of a TLS_PINS_FILE in package upstream,
// which loads and watches that file (docs/design.md says why it lives here).
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
