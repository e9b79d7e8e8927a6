package upstream

import (
	"crypto/sha256"
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

func testPin(seed string) [32]byte { return sha256.Sum256([]byte(seed)) }

// writeFile writes data to name in dir and returns its path.
func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

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

func TestParseCAs(t *testing.T) {
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
	t.Run("bundle trusts every CA in it", func(t *testing.T) {
		pool, err := parseCAs(append(append([]byte("# a comment before the blocks\n"), ca1.PEM...), ca2.PEM...))
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
		pool, err := parseCAs(append(append([]byte{}, leaf.KeyPEM...), ca1.PEM...))
		if err != nil || !verifies(t, pool, ca1) {
			t.Errorf("err = %v", err)
		}
	})
	for _, tt := range []struct {
		name     string
		data     []byte
		is       error
		contains string
	}{
		{"key only", leaf.KeyPEM, ErrNoCertificate, "no PEM certificate"},
		{"empty", nil, ErrNoCertificate, "no PEM certificate"},
		{"broken certificate", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), nil, "certificate 1:"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseCAs(tt.data)
			if err == nil || !strings.Contains(err.Error(), tt.contains) || tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("err = %v, want %q (is %v)", err, tt.contains, tt.is)
			}
		})
	}
}

func TestParsePins(t *testing.T) {
	a, b := config.FormatPin(testPin("a")), config.FormatPin(testPin("b"))
	tests := []struct {
		name, body string
		want       [][32]byte
		err        string
	}{
		{"one", a + "\n", [][32]byte{testPin("a")}, ""},
		{"no final newline", a, [][32]byte{testPin("a")}, ""},
		{"comments blanks and spaces", "# pins for q.example\n\n  " + a + "  \n# next key\n" + b + " # since June\n\n",
			[][32]byte{testPin("a"), testPin("b")}, ""},
		{"CRLF", a + "\r\n" + b + "\r\n", [][32]byte{testPin("a"), testPin("b")}, ""},
		{"duplicates kept once", a + "\n" + a + "\n", [][32]byte{testPin("a")}, ""},
		{"bad line named", a + "\n\nnot-a-pin\n", nil, `line 3: pin "not-a-pin" is not base64`},
		{"short pin", "# x\nYWJj\n", nil, `line 2: pin "YWJj" decodes to 3 bytes, want 32`},
		{"two pins on a line", a + " " + b + "\n", nil, `line 1: pin`},
		{"only comments", "# nothing\n\n", nil, "no pins"},
		{"empty", "", nil, "no pins"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePins([]byte(tt.body))
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
	if _, err := ParsePins([]byte("\n")); !errors.Is(err, ErrNoPins) {
		t.Errorf("empty file: err = %v, want ErrNoPins", err)
	}
}

// TestLoadTrust: a Trust of what the files hold, and a *FileError naming
// the file that cannot be used, with the reason apart from the path.
func TestLoadTrust(t *testing.T) {
	ca, err := testpki.NewCA("trust CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caFile := writeFile(t, dir, "ca.pem", ca.PEM)
	pinsFile := writeFile(t, dir, "pins", []byte("# rotation\n"+config.FormatPin(testPin("old"))+"\n"+config.FormatPin(testPin("new"))+"\n"))
	missing := filepath.Join(dir, "missing")

	tr, err := LoadTrust(TrustSource{CAFile: caFile, PinsFile: pinsFile})
	if err != nil {
		t.Fatal(err)
	}
	st := tr.load()
	if st.roots == nil || !verifies(t, st.roots, ca) || !reflect.DeepEqual(st.pins, [][32]byte{testPin("old"), testPin("new")}) {
		t.Errorf("LoadTrust from files: roots %v, pins %x", st.roots, st.pins)
	}
	if len(tr.files) != 2 {
		t.Errorf("Trust remembers %d files, want 2", len(tr.files))
	}

	tr, err = LoadTrust(TrustSource{Pins: [][32]byte{testPin("a")}})
	if err != nil || tr.load().roots != nil || !reflect.DeepEqual(tr.load().pins, [][32]byte{testPin("a")}) || len(tr.files) != 0 {
		t.Errorf("LoadTrust without files: %v, %+v", err, tr)
	}

	for _, tt := range []struct {
		name   string
		src    TrustSource
		kind   string
		reason string // the whole of FileError.Err
		is     error
	}{
		{"missing CA file", TrustSource{CAFile: missing}, TrustFileCA, "open " + missing + ": no such file or directory", fs.ErrNotExist},
		{"CA file without certificate", TrustSource{CAFile: pinsFile}, TrustFileCA, "no PEM certificate", ErrNoCertificate},
		{"missing pins file", TrustSource{PinsFile: missing}, TrustFilePins, "open " + missing + ": no such file or directory", fs.ErrNotExist},
		{"pins file without pin", TrustSource{PinsFile: writeFile(t, dir, "empty", []byte("# nothing yet\n\n"))}, TrustFilePins, "no pins", ErrNoPins},
		{"bad pin", TrustSource{PinsFile: writeFile(t, dir, "bad", []byte("x\nnot-a-pin\n"))}, TrustFilePins,
			`line 1: pin "x" is not base64 (want the base64 SHA-256 of a SubjectPublicKeyInfo)`, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadTrust(tt.src)
			var fe *FileError
			if !errors.As(err, &fe) || fe.Kind != tt.kind || fe.Err.Error() != tt.reason || tt.is != nil && !errors.Is(err, tt.is) {
				t.Fatalf("err = %#v, want a %s FileError saying %q", err, tt.kind, tt.reason)
			}
			if path := tt.src.CAFile + tt.src.PinsFile; fe.Path != path || err.Error() != tt.kind+" file "+path+": "+tt.reason {
				t.Errorf("error %q does not name %s", err, path)
			}
		})
	}
	if _, err := LoadTrust(TrustSource{PinsFile: pinsFile, Pins: [][32]byte{testPin("a")}}); err == nil {
		t.Error("LoadTrust took pins both inline and from a file")
	}
}
