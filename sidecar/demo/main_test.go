package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

func TestFlags(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string // "" for none
		listen  string
		port    int
	}{
		{nil, "", "127.0.0.1:8853", 5053},
		{[]string{"--listen", "[::1]:0", "--sidecar-port", "15053"}, "", "[::1]:0", 15053},
		{[]string{"--listen=::ffff:127.0.0.1:853"}, `invalid --listen "::ffff:127.0.0.1:853"`, "", 0},
		{[]string{"--listen=[::ffff:127.0.0.1]:853"}, "", "127.0.0.1:853", 5053},
		{[]string{"--listen", "localhost:8853"}, `invalid --listen "localhost:8853": must be IP:PORT with an IP literal`, "", 0},
		{[]string{"--listen", "127.0.0.1"}, `invalid --listen "127.0.0.1"`, "", 0},
		{[]string{"--sidecar-port", "0"}, `invalid --sidecar-port "0": must be 1-65535`, "", 0},
		{[]string{"--sidecar-port", "65536"}, `invalid --sidecar-port "65536": must be 1-65535`, "", 0},
		{[]string{"--port", "1"}, "flag provided but not defined: -port", "", 0},
		{[]string{"extra"}, `unexpected argument "extra"`, "", 0},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			o, err := parseFlags(tc.args, io.Discard)
			if tc.wantErr != "" {
				var usage usageError
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &usage) {
					t.Fatalf("error %v, want a usage error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if o.listen.String() != tc.listen || o.sidecarPort != tc.port {
				t.Errorf("listen %s port %d, want %s %d", o.listen, o.sidecarPort, tc.listen, tc.port)
			}
		})
	}
}

// A port in use is an error that says what to do, not a hang.
func TestListenPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = run(context.Background(), []string{"--listen", ln.Addr().String()}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), "--listen") {
		t.Fatalf("error %v, want one saying the port is in use and naming --listen", err)
	}
}

func TestHelp(t *testing.T) {
	var out strings.Builder
	if err := run(context.Background(), []string{"-h"}, io.Discard, &out); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"-listen", "-sidecar-port", `(default "127.0.0.1:8853")`, "(default 5053)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("help lacks %s:\n%s", want, out.String())
		}
	}
}

// The README quotes the demo's output; the quote must be what the demo
// prints for the same port, path and pin, line for line and in order.
func TestReadmeQuotesTheDemo(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut(string(data), "It prints, with its own port, path and pin:\n")
	if !ok {
		t.Fatal("README.md quotes no demo output")
	}
	var quote []string
	for _, l := range strings.Split(after, "\n") {
		if l != "" && !strings.HasPrefix(l, "    ") {
			break
		}
		quote = append(quote, strings.TrimPrefix(l, "    "))
	}
	var pin string
	for _, l := range quote {
		if p, ok := strings.CutPrefix(strings.TrimSpace(l), "TLS_PINS="); ok {
			pin = p
		}
	}
	dir := "/tmp/dot-sidecar-demo-1234"
	u := &upstream{Addr: netip.MustParseAddrPort("127.0.0.1:8853"), CAFile: dir + "/ca.pem", Pin: pin}
	var out strings.Builder
	writeInstructions(&out, instructionsFor(u, defaultSidecarPort, dir))
	printed := strings.Split(out.String(), "\n")
	next := 0
	for _, q := range quote {
		i := slices.Index(printed[next:], q)
		if i < 0 {
			t.Fatalf("README.md quotes %q; the demo prints, from there on:\n%s", q, strings.Join(printed[next:], "\n"))
		}
		next += i + 1
	}
	if pin == "" || len(quote) < 10 {
		t.Errorf("the README's quote is too short to show the commands (%d lines, pin %q)", len(quote), pin)
	}
}
