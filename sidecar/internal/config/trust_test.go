package config_test

import (
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
)

// verifies reports whether pool accepts a leaf issued by ca for dns.example.
func verifies(t *testing.T, pool *x509.CertPool, ca *testpki.CA) bool {
	t.Helper()
	leaf, err := ca.Issue([]string{"dns.example"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = leaf.Cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "dns.example"})
	return err == nil
}

func TestLoadCAFile(t *testing.T) {
	ca1, err := testpki.NewCA("first CA")
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := testpki.NewCA("second CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca1.Issue([]string{"dns.example"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bundle := write("bundle.pem", append(append([]byte("# a comment before the blocks\n"), ca1.PEM...), ca2.PEM...))
	withKey := write("with-key.pem", append(append([]byte{}, leaf.KeyPEM...), ca1.PEM...))
	keyOnly := write("key.pem", leaf.KeyPEM)
	empty := write("empty.pem", nil)
	broken := write("broken.pem", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))

	t.Run("bundle trusts every CA in it", func(t *testing.T) {
		pool, err := config.LoadCAFile(bundle)
		if err != nil {
			t.Fatal(err)
		}
		if !verifies(t, pool, ca1) || !verifies(t, pool, ca2) {
			t.Error("a CA of the bundle is not trusted")
		}
		other, err := testpki.NewCA("stranger")
		if err != nil {
			t.Fatal(err)
		}
		if verifies(t, pool, other) {
			t.Error("a CA outside the bundle is trusted")
		}
	})
	t.Run("other blocks are ignored", func(t *testing.T) {
		pool, err := config.LoadCAFile(withKey)
		if err != nil || !verifies(t, pool, ca1) {
			t.Errorf("err = %v", err)
		}
	})
	for _, tt := range []struct {
		name, path string
		is         error
		contains   string
	}{
		{"key only", keyOnly, config.ErrNoCertificate, "no PEM certificate"},
		{"empty", empty, config.ErrNoCertificate, "no PEM certificate"},
		{"broken certificate", broken, nil, "certificate 1:"},
		{"missing", filepath.Join(dir, "nope.pem"), fs.ErrNotExist, "no such file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.LoadCAFile(tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.contains) || tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("err = %v, want %q (is %v)", err, tt.contains, tt.is)
			}
		})
	}
	t.Run("through Load", func(t *testing.T) {
		c, err := config.Load([]string{"--tls-ca-file", bundle}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if c.RootCAs() == nil || !verifies(t, c.RootCAs(), ca2) {
			t.Error("RootCAs() does not hold TLS_CA_FILE's certificates")
		}
	})
}

func TestParsePins(t *testing.T) {
	a, b := pin("a"), pin("b")
	tests := []struct {
		name, body string
		want       [][32]byte
		err        string
	}{
		{"one", a + "\n", [][32]byte{pinBytes("a")}, ""},
		{"no final newline", a, [][32]byte{pinBytes("a")}, ""},
		{"comments blanks and spaces", "# pins for q.example\n\n  " + a + "  \n# next key\n" + b + " # since June\n\n",
			[][32]byte{pinBytes("a"), pinBytes("b")}, ""},
		{"CRLF", a + "\r\n" + b + "\r\n", [][32]byte{pinBytes("a"), pinBytes("b")}, ""},
		{"duplicates kept once", a + "\n" + a + "\n", [][32]byte{pinBytes("a")}, ""},
		{"bad line named", a + "\n\nnot-a-pin\n", nil, `line 3: pin "not-a-pin" is not base64`},
		{"short pin", "# x\nYWJj\n", nil, `line 2: pin "YWJj" decodes to 3 bytes, want 32`},
		{"two pins on a line", a + " " + b + "\n", nil, `line 1: pin`},
		{"only comments", "# nothing\n\n", nil, "no pins"},
		{"empty", "", nil, "no pins"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := config.ParsePins(strings.NewReader(tt.body))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %x, want %x", got, tt.want)
			}
		})
	}
	if _, err := config.ParsePins(strings.NewReader("\n")); !errors.Is(err, config.ErrNoPins) {
		t.Errorf("empty file: err = %v, want ErrNoPins", err)
	}
}

func TestLoadPinsFile(t *testing.T) {
	_, pinsFile, _ := trustFiles(t)
	got, err := config.LoadPinsFile(pinsFile)
	if err != nil {
		t.Fatal(err)
	}
	if want := [][32]byte{pinBytes("old"), pinBytes("new")}; !reflect.DeepEqual(got, want) {
		t.Errorf("got %x, want %x", got, want)
	}
	c, err := config.Load(nil, []string{"TLS_PINS_FILE=" + pinsFile})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c.PinsFromFile(), got) {
		t.Errorf("PinsFromFile() = %x, want %x", c.PinsFromFile(), got)
	}
	if _, err := config.LoadPinsFile(filepath.Join(t.TempDir(), "nope")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: err = %v", err)
	}
}

func TestPinRoundTrip(t *testing.T) {
	p := pinBytes("x")
	got, err := config.ParsePin(config.FormatPin(p))
	if err != nil || got != p {
		t.Errorf("ParsePin(FormatPin(p)) = %x, %v", got, err)
	}
}
