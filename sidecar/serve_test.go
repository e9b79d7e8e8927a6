package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
)

// TestLoadTrustErrors: a trust file that cannot be used is a bad setting
// like any other: one line naming the variable or the flag that gave it, and
// the value; the reason as package upstream found it.
func TestLoadTrustErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	sum := sha256.Sum256([]byte("a"))
	notPEM := write("not.pem", "not a certificate\n")
	emptyPins := write("empty.pins", "# nothing yet\n\n")
	badPins := write("bad.pins", config.FormatPin(sum)+"\nnot-a-pin\n")
	missing := filepath.Join(dir, "missing")
	for _, tt := range []struct {
		env, value, reason string
	}{
		{"TLS_CA_FILE", missing, "open " + missing + ": no such file or directory"},
		{"TLS_CA_FILE", notPEM, "no PEM certificate"},
		{"TLS_PINS_FILE", missing, "open " + missing + ": no such file or directory"},
		{"TLS_PINS_FILE", emptyPins, "no pins"},
		{"TLS_PINS_FILE", badPins, `line 2: pin "not-a-pin" is not base64 (want the base64 SHA-256 of a SubjectPublicKeyInfo)`},
	} {
		for _, viaFlag := range []bool{false, true} {
			name, args, environ := tt.env, []string(nil), []string{tt.env + "=" + tt.value}
			if viaFlag {
				name = map[string]string{"TLS_CA_FILE": "--tls-ca-file", "TLS_PINS_FILE": "--tls-pins-file"}[tt.env]
				args, environ = []string{name + "=" + tt.value}, nil
			}
			t.Run(name+"="+filepath.Base(tt.value), func(t *testing.T) {
				cfg, err := config.Load(args, environ)
				if err != nil {
					t.Fatal(err)
				}
				_, err = loadTrust(cfg)
				want := fmt.Sprintf("invalid %s %q: %s", name, tt.value, tt.reason)
				if err == nil || err.Error() != want || !errors.Is(err, config.ErrInvalid) {
					t.Errorf("error\n got: %v\nwant: %s", err, want)
				}
			})
		}
	}
}

// TestLoadTrust: the files' roots and pins, or TLS_PINS, make the shared
// Trust.
func TestLoadTrust(t *testing.T) {
	ca, err := testpki.NewCA("serve test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, ca.PEM, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("a"))
	for _, environ := range [][]string{
		nil,
		{"TLS_CA_FILE=" + caFile, "TLS_PINS=" + config.FormatPin(sum)},
	} {
		cfg, err := config.Load(nil, environ)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := loadTrust(cfg); err != nil {
			t.Errorf("%q: %v", environ, err)
		}
	}
}
