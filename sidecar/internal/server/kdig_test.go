package server

import (
	"context"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// TestKdigInterop asks the server with kdig (Knot's dig), a client we did
// not write: a truncated UDP answer makes it retry over TCP on its own and
// get all 40 records; EDNS version 1 gets BADVERS; the canary answers.
func TestKdigInterop(t *testing.T) {
	kdig := testkit.RequireTools(t, "kdig")["kdig"]
	ts := startServer(t, Options{})
	addr := ts.addr(t, "udp", loopback4)
	run := func(args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		args = append([]string{"@" + addr.Addr().String(), "-p", strconv.Itoa(int(addr.Port())), "+retry=0", "+time=5"}, args...)
		out, err := exec.CommandContext(ctx, kdig, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("kdig %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"truncated then TCP, no EDNS", []string{"big.example.", "TXT", "+noedns"}, []string{"status: NOERROR", "Received 4", "TCP"}},
		{"truncated then TCP, EDNS 1232", []string{"big.example.", "TXT", "+bufsize=1232"}, []string{"status: NOERROR", "TCP", "Version: 0;"}},
		{"BADVERS", []string{"www.example.", "A", "+edns=1"}, []string{"status: BADVERS", "Version: 0;"}},
		{"canary", []string{"canary.dot-sidecar.invalid.", "TXT", "+noedns"}, []string{"status: NOERROR", `"dot-sidecar intercepted"`}},
		{"SERVFAIL with EDE", []string{"err-tls.example.", "A", "+edns"}, []string{"status: SERVFAIL", "EDE: 23"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := run(tt.args...)
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("kdig output lacks %q:\n%s", w, out)
				}
			}
			if strings.HasPrefix(tt.name, "truncated") {
				if n := strings.Count(out, "\tTXT\t"); n != 40 {
					t.Errorf("%d TXT records in kdig's answer, want all 40:\n%s", n, out)
				}
			}
		})
	}
}
