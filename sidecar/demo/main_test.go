package main

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
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
