package upstream

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
)

// A Trust is loaded from files (LoadTrust) and watched for changes
// (TrustReloader) here, next to what verifies connections against it. Each
// Trust remembers the files it was built from and the content it holds, so
// that several can coexist (the shared one of TLS_CA_FILE and TLS_PINS_FILE,
// and one per upstream entry naming a CA file of its own), each watched the
// same way.

// Trust file kinds: the `file` label of ReloadMetrics, and FileError.Kind.
const (
	TrustFileCA   = "ca"
	TrustFilePins = "pins"
)

// ErrNoPins: a pins file holds no pin. An empty file is refused rather than
// read as "pin nothing", so that truncating the file by accident (or a
// half-written ConfigMap) never silently turns pinning off.
var ErrNoPins = errors.New("no pins")

// ErrNoCertificate: a CA file holds no PEM certificate.
var ErrNoCertificate = errors.New("no PEM certificate")

// FileError is a trust file that cannot be used.
type FileError struct {
	Kind string // TrustFileCA or TrustFilePins
	Path string
	Err  error // why, without the path (an open error names it already)
}

func (e *FileError) Error() string { return e.Kind + " file " + e.Path + ": " + e.Err.Error() }

func (e *FileError) Unwrap() error { return e.Err }

// TrustSource says what a Trust is built from.
type TrustSource struct {
	// CAFile is a PEM bundle of the roots to verify upstreams against; ""
	// means the system roots. Watched.
	CAFile string
	// Pins are default pins for upstreams without pins of their own.
	Pins [][32]byte
	// PinsFile holds the default pins instead, one a line (ParsePins).
	// Watched.
	PinsFile string
}

// trustFile is one file a Trust was built from, with the digest of the
// content it holds.
type trustFile struct {
	kind, path string
	sum        [32]byte
}

// LoadTrust reads src's files and returns a Trust of what they hold. An
// unreadable or unusable file is a *FileError.
func LoadTrust(src TrustSource) (*Trust, error) {
	if src.PinsFile != "" && len(src.Pins) > 0 {
		return nil, errors.New("trust: default pins come from Pins or from PinsFile, not both")
	}
	var files []trustFile
	if src.CAFile != "" {
		files = append(files, trustFile{kind: TrustFileCA, path: src.CAFile})
	}
	if src.PinsFile != "" {
		files = append(files, trustFile{kind: TrustFilePins, path: src.PinsFile})
	}
	var roots *x509.CertPool
	pins := src.Pins
	for i := range files {
		f := &files[i]
		data, err := os.ReadFile(f.path)
		if err == nil {
			roots, pins, err = f.parse(data, roots, pins)
		}
		if err != nil {
			return nil, &FileError{Kind: f.kind, Path: f.path, Err: err}
		}
		f.sum = sha256.Sum256(data)
	}
	t := NewTrust(roots, pins)
	t.files = files
	return t, nil
}

// parse reads data as f's kind of file and returns roots and pins with what
// it holds in place of the ones it replaces.
func (f *trustFile) parse(data []byte, roots *x509.CertPool, pins [][32]byte) (*x509.CertPool, [][32]byte, error) {
	var err error
	switch f.kind {
	case TrustFileCA:
		roots, err = parseCAs(data)
	case TrustFilePins:
		pins, err = ParsePins(data)
	}
	return roots, pins, err
}

// parseCAs reads a PEM bundle and returns a pool holding its certificates.
// Unlike x509.CertPool.AppendCertsFromPEM, it fails on a CERTIFICATE block
// that does not parse and on a bundle without any certificate
// (ErrNoCertificate), so a damaged bundle is noticed instead of quietly
// trusting less or nothing. Blocks of other types (a key shipped alongside)
// are ignored.
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

// ParsePins reads the TLS_PINS_FILE format: one pin a line, in the form
// TLS_PINS takes (config.ParsePin); blank lines and everything after a '#'
// are ignored; a pin listed twice counts once. A file without any pin is an
// error (ErrNoPins).
func ParsePins(data []byte) ([][32]byte, error) {
	var pins [][32]byte
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		pin, err := config.ParsePin(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if !slices.Contains(pins, pin) {
			pins = append(pins, pin)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(pins) == 0 {
		return nil, ErrNoPins
	}
	return pins, nil
}
