package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// baseEnv keeps run from changing this test process's GOMAXPROCS (setProcs
// leaves it alone when the environment sets it).
func baseEnv() []string {
	return []string{fmt.Sprintf("GOMAXPROCS=%d", runtime.GOMAXPROCS(0))}
}

// logLine is one decoded JSON log line.
type logLine map[string]any

func (l logLine) str(k string) string { s, _ := l[k].(string); return s }

// jsonLines decodes every line of out as a JSON object, failing the test on
// any line that is not one.
func jsonLines(t *testing.T, out string) []logLine {
	t.Helper()
	var lines []logLine
	for i, s := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if s == "" && out == "" {
			break
		}
		var l logLine
		if err := json.Unmarshal([]byte(s), &l); err != nil {
			t.Fatalf("stderr line %d is not JSON (%v):\n%s\nall of stderr:\n%s", i+1, err, s, out)
		}
		lines = append(lines, l)
	}
	return lines
}

// withMsg returns the lines whose msg is msg.
func withMsg(lines []logLine, msg string) []logLine {
	var out []logLine
	for _, l := range lines {
		if l.str("msg") == msg {
			out = append(out, l)
		}
	}
	return out
}

// runCmd runs the program in-process and returns its exit code and output.
func runCmd(t *testing.T, args, environ []string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, append(baseEnv(), environ...), &out, &errb)
	return code, out.String(), errb.String()
}

// TestHelp: each command's help goes to stdout, exits 0, names its flags in
// the double-dash form (every flag the command accepts), and fits 80
// columns.
func TestHelp(t *testing.T) {
	var wf waitFlags
	waitOwn := flagNames(flagSet("wait", wf.define))
	var cf checkFlags
	checkOwn := flagNames(flagSet("check", cf.define))
	top := []string{"Usage: dot-sidecar [COMMAND]", "  serve ", "  wait ", "  check ", "  version ", "  help ",
		"\n  --bind-port, BIND_PORT (default \"5053\")\n", "\n  --log-format, LOG_FORMAT (default \"text\")\n"}
	wait := append([]string{"Usage: dot-sidecar wait ", "\n  --timeout (default \"60s\")\n",
		"\n  --admin-address, ADMIN_ADDRESS (default \":9253\")\n", "\n  --log-level, LOG_LEVEL (default \"info\")\n"}, waitOwn...)
	chk := append([]string{"Usage: dot-sidecar check ", "\n  --resolv-conf, RESOLV_CONF (default \"/etc/resolv.conf\")\n",
		"\n  --timeout (default \"2s\")\n", "\n  --sidecar-uid (default \"10053\")\n"}, checkOwn...)
	tests := []struct {
		args    []string
		want    []string
		notWant []string
	}{
		{[]string{"--help"}, top, nil},
		{[]string{"-h"}, top, nil},
		{[]string{"help"}, top, nil},
		{[]string{"serve", "--help"}, top, nil},
		{[]string{"--log-level=debug", "--help"}, top, nil},
		{[]string{"wait", "--help"}, wait, []string{"--bind-port"}},
		{[]string{"wait", "-h"}, wait, []string{"--bind-port"}},
		{[]string{"help", "wait"}, wait, []string{"--bind-port"}},
		{[]string{"check", "--help"}, chk, []string{"--admin-address", "--log-level"}},
		{[]string{"help", "check"}, chk, []string{"--admin-address", "--log-level"}},
		{[]string{"version", "--help"}, []string{"Usage: dot-sidecar version\n"}, nil},
		{[]string{"help", "version"}, []string{"Usage: dot-sidecar version\n"}, nil},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			// A bad setting in the environment does not hide the help.
			code, out, errOut := runCmd(t, tt.args, []string{"BIND_PORT=bad"})
			if code != exitOK || errOut != "" {
				t.Fatalf("exit %d, stderr %q; want 0 and nothing", code, errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("help lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(out, w) {
					t.Errorf("help has %q, which the command does not read:\n%s", w, out)
				}
			}
			for _, line := range strings.Split(out, "\n") {
				if len([]rune(line)) > 80 {
					t.Errorf("line longer than 80 columns: %q", line)
				}
				if f := strings.TrimSpace(line); strings.HasPrefix(f, "-") && !strings.HasPrefix(f, "--") {
					t.Errorf("flag with a single dash: %q", line)
				}
			}
		})
	}
}

// flagNames lists how the help must show each flag of fs: "\n  --name ".
func flagNames(fs *flag.FlagSet) []string {
	var out []string
	fs.VisitAll(func(f *flag.Flag) { out = append(out, "\n  --"+f.Name+" ") })
	return out
}

func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}, {"-version"}} {
		code, out, errOut := runCmd(t, args, nil)
		if code != exitOK || out != "dot-sidecar "+version+"\n" || errOut != "" {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", args, code, out, errOut)
		}
	}
}

// TestCommandLineErrors: with LOG_FORMAT=json, every way the command line
// or the settings can be wrong is reported as JSON lines whose fields say
// what is wrong, and exits 2.
func TestCommandLineErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.pem")
	tests := []struct {
		name    string
		args    []string
		environ []string
		want    []logLine // fields each line must have, in order
	}{
		{"unknown command", []string{"serv", "--bind-port=1"}, nil,
			[]logLine{{"msg": "unknown command", "command": "serv", "commands": "serve, wait, check, version, help"}}},
		{"help for an unknown command", []string{"help", "nope"}, nil,
			[]logLine{{"msg": "unknown command", "command": "nope"}}},
		{"bad settings", []string{"--bind-port=70000"}, []string{"PROTO=sctp"},
			[]logLine{
				{"msg": "invalid setting", "setting": "--bind-port", "value": "70000", "reason": "must be 1-65535"},
				{"msg": "invalid setting", "setting": "PROTO", "value": "sctp"},
			}},
		{"json by flag", []string{"--log-format=json", "--bind-port=x"}, []string{"LOG_FORMAT=text"},
			[]logLine{{"msg": "invalid setting", "setting": "--bind-port", "value": "x"}}},
		{"unknown flag", []string{"--bind-prot=1"}, nil,
			[]logLine{{"msg": "cannot start", "err": "flag provided but not defined: --bind-prot (see --help)"}}},
		{"stray argument", []string{"--bind-port=1", "wait"}, nil, []logLine{{"msg": "cannot start"}}},
		{"unusable trust file", nil, []string{"TLS_CA_FILE=" + missing},
			[]logLine{{"msg": "invalid setting", "setting": "TLS_CA_FILE", "value": missing}}},
		{"version with an argument", []string{"version", "x"}, nil, []logLine{{"msg": "invalid command line"}}},
		{"wait without a timeout", []string{"wait", "--timeout=0s"}, nil,
			[]logLine{{"msg": "invalid setting", "setting": "--timeout", "value": "0s", "reason": "must be greater than 0"}}},
		{"wait without the admin listener", []string{"wait", "--admin-address="}, nil,
			[]logLine{{"msg": "invalid setting", "setting": "--admin-address", "value": ""}}},
		{"wait with a bad setting", []string{"wait", "--timeout=1s"}, []string{"ADMIN_ADDRESS=localhost:1"},
			[]logLine{{"msg": "invalid setting", "setting": "ADMIN_ADDRESS"}}},
		{"wait with a bad flag", []string{"wait", "--timeout=soon"}, nil,
			[]logLine{{"msg": "cannot wait", "err": `invalid value "soon" for flag --timeout: parse error (see --help)`}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			environ := append([]string{"LOG_FORMAT=json"}, tt.environ...)
			code, out, errOut := runCmd(t, tt.args, environ)
			if code != exitConfig || out != "" {
				t.Errorf("exit %d, stdout %q; want 2 and nothing", code, out)
			}
			lines := jsonLines(t, errOut)
			if len(lines) != len(tt.want) {
				t.Fatalf("%d lines, want %d:\n%s", len(lines), len(tt.want), errOut)
			}
			for i, want := range tt.want {
				if lines[i].str("level") != "ERROR" {
					t.Errorf("line %d at level %v, want ERROR", i+1, lines[i]["level"])
				}
				for k, v := range want {
					if lines[i][k] != v {
						t.Errorf("line %d: %s = %q, want %q\n%s", i+1, k, lines[i][k], v, errOut)
					}
				}
			}
		})
	}
}

// check prints a report for a person, not logs: its usage errors are one
// plain line naming the flag in the double-dash form.
func TestCheckUsageErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"check", "--nope"}, "dot-sidecar check: flag provided but not defined: --nope (see --help)\n"},
		{[]string{"check", "x"}, "dot-sidecar check: unexpected argument \"x\" (settings are --name=value flags; see --help)\n"},
	} {
		code, out, errOut := runCmd(t, tt.args, []string{"LOG_FORMAT=json"})
		if code != exitConfig || out != "" || errOut != tt.want {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want 2 and %q", tt.args, code, out, errOut, tt.want)
		}
	}
}

// upstreamEnv points the sidecar at an in-process DoT server it trusts.
func upstreamEnv(t *testing.T) []string {
	t.Helper()
	srv := dnstest.New(t, dnstest.Options{})
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, srv.CAPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return []string{fmt.Sprintf("UPSTREAMS=tls://%s#%s", srv.Addr, srv.ServerName), "TLS_CA_FILE=" + ca}
}

// serving is an in-process serve.
type serving struct {
	stderr *testkit.Buffer
	admin  string
	port   int // DNS
	cancel context.CancelFunc
	code   chan int
}

// startServe runs serve in-process on ports of its own with environ after
// the defaults, and returns once /startupz answers 200, or once serve has
// returned (a start-up failure).
func startServe(t *testing.T, environ ...string) *serving {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &serving{
		stderr: new(testkit.Buffer),
		admin:  fmt.Sprintf("127.0.0.1:%d", bintest.FreePort(t)),
		port:   bintest.FreePort(t),
		cancel: cancel,
		code:   make(chan int, 1),
	}
	env := append(append(baseEnv(), "BIND_ADDRESS=127.0.0.1", fmt.Sprintf("BIND_PORT=%d", s.port),
		"ADMIN_ADDRESS="+s.admin, "SHUTDOWN_LAMEDUCK=0s"), environ...)
	go func() { s.code <- run(ctx, nil, env, new(bytes.Buffer), s.stderr) }()
	t.Cleanup(func() {
		cancel()
		if t.Failed() {
			t.Logf("stderr:\n%s", s.stderr)
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case code := <-s.code:
			s.code <- code
			return s
		default:
		}
		resp, err := http.Get("http://" + s.admin + "/startupz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		time.Sleep(10 * time.Millisecond) // polling interval
	}
	t.Fatalf("serve neither started nor failed within 10s\n%s", s.stderr)
	return nil
}

// exitCode waits for serve to return.
func (s *serving) exitCode(t *testing.T) int {
	t.Helper()
	select {
	case code := <-s.code:
		return code
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not return within 15s")
		return -1
	}
}

// TestServeLogsJSON: a start and a SIGTERM (ctx done) write JSON lines only;
// the serving line names each listener once with its protocol; durations
// read like settings.
func TestServeLogsJSON(t *testing.T) {
	s := startServe(t, append(upstreamEnv(t), "LOG_FORMAT=json", "SHUTDOWN_GRACE=3s")...)
	s.cancel()
	if code := s.exitCode(t); code != exitOK {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
	lines := jsonLines(t, s.stderr.String())
	serving := withMsg(lines, "dot-sidecar serving")
	if len(serving) != 1 {
		t.Fatalf("%d serving lines, want 1", len(serving))
	}
	var listen []string
	for _, v := range serving[0]["listen"].([]any) {
		listen = append(listen, v.(string))
	}
	if want := []string{fmt.Sprintf("udp 127.0.0.1:%d", s.port), fmt.Sprintf("tcp 127.0.0.1:%d", s.port)}; !slices.Equal(listen, want) {
		t.Errorf("listen = %q, want %q", listen, want)
	}
	down := withMsg(lines, "shutting down")
	if len(down) != 1 || down[0]["lameduck"] != "0s" || down[0]["grace"] != "3s" {
		t.Errorf("shutting-down lines %v, want one with lameduck \"0s\" and grace \"3s\"", down)
	}
	stopped := withMsg(lines, "stopped")
	if len(stopped) != 1 {
		t.Fatalf("%d stopped lines, want 1", len(stopped))
	}
	if d, err := time.ParseDuration(stopped[0].str("took")); err != nil || d > 3*time.Second {
		t.Errorf("stopped took = %v (%v), want a duration like \"12ms\"", stopped[0]["took"], err)
	}
	for _, l := range lines {
		if l.str("level") == "ERROR" {
			t.Errorf("error logged during a clean start and stop: %v", l)
		}
	}
}

// TestStartupFailureLogs: a sidecar that cannot bind says why in a JSON
// line, exits 1, and never claims to have served or to be shutting down.
func TestStartupFailureLogs(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	takenPort := taken.Addr().(*net.TCPAddr).Port
	logFile := filepath.Join(t.TempDir(), "sidecar.log")
	tests := []struct {
		name, reason string
		environ      []string
	}{
		{"DNS port taken", fmt.Sprintf("127.0.0.1:%d", takenPort),
			[]string{"PROTO=tcp", fmt.Sprintf("BIND_PORT=%d", takenPort)}},
		{"admin port taken", "ADMIN_ADDRESS", []string{fmt.Sprintf("ADMIN_ADDRESS=127.0.0.1:%d", takenPort)}},
		{"DNS port taken, LOG_FILE", fmt.Sprintf("127.0.0.1:%d", takenPort),
			[]string{"PROTO=tcp", fmt.Sprintf("BIND_PORT=%d", takenPort), "LOG_FILE=" + logFile}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := startServe(t, append(upstreamEnv(t), append([]string{"LOG_FORMAT=json"}, tt.environ...)...)...)
			if code := s.exitCode(t); code != exitFail {
				t.Fatalf("exit %d, want 1", code)
			}
			lines := jsonLines(t, s.stderr.String())
			if slices.Contains(tt.environ, "LOG_FILE="+logFile) {
				// The failure goes to stderr too, and only it.
				if len(lines) != 1 {
					t.Errorf("stderr with LOG_FILE has %d lines, want the failure alone", len(lines))
				}
				data, err := os.ReadFile(logFile)
				if err != nil {
					t.Fatal(err)
				}
				lines = jsonLines(t, string(data))
			}
			last := lines[len(lines)-1]
			if last.str("msg") != "cannot start" || last.str("level") != "ERROR" || !strings.Contains(last.str("err"), tt.reason) {
				t.Errorf("last line %v, want msg \"cannot start\" at ERROR with an err naming %s", last, tt.reason)
			}
			for _, msg := range []string{"dot-sidecar serving", "shutting down: readyz 503", "shutting down", "stopped"} {
				if n := len(withMsg(lines, msg)); n != 0 {
					t.Errorf("%d lines %q from a sidecar that never served", n, msg)
				}
			}
		})
	}
}

// TestWaitLogs: wait logs like serve: its polls at debug only, its outcome
// as one line with the URL, how long it waited and what it saw.
func TestWaitLogs(t *testing.T) {
	closed := fmt.Sprintf("127.0.0.1:%d", bintest.FreePort(t))
	ready := httpServer(t, http.StatusOK)
	tests := []struct {
		name, level, addr string
		code              int
		outcome           logLine
		debugPolls        bool
	}{
		{"not ready, info", "info", closed, exitFail,
			logLine{"msg": "sidecar not ready", "level": "ERROR", "url": "http://" + closed + "/readyz", "waited": "300ms"}, false},
		{"not ready, debug", "debug", closed, exitFail,
			logLine{"msg": "sidecar not ready", "level": "ERROR", "url": "http://" + closed + "/readyz", "waited": "300ms"}, true},
		{"ready", "info", ready, exitOK, logLine{"msg": "sidecar ready", "level": "INFO", "url": "http://" + ready + "/readyz"}, false},
		{"ready, warn", "warn", ready, exitOK, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCmd(t, []string{"wait", "--timeout=300ms"},
				[]string{"LOG_FORMAT=json", "LOG_LEVEL=" + tt.level, "ADMIN_ADDRESS=" + tt.addr})
			if code != tt.code || out != "" {
				t.Fatalf("exit %d, stdout %q; want %d and nothing", code, out, tt.code)
			}
			lines := jsonLines(t, errOut)
			polls := withMsg(lines, "sidecar not ready yet")
			if tt.debugPolls != (len(polls) > 0) {
				t.Errorf("%d poll lines at LOG_LEVEL=%s", len(polls), tt.level)
			}
			for _, p := range polls {
				if p.str("level") != "DEBUG" || !strings.Contains(p.str("saw"), "connection refused") {
					t.Errorf("poll line %v, want DEBUG with what it saw", p)
				}
			}
			var others []logLine
			for _, l := range lines {
				if l.str("level") != "DEBUG" {
					others = append(others, l)
				}
			}
			if tt.outcome == nil {
				if len(others) != 0 {
					t.Errorf("lines above debug at LOG_LEVEL=%s: %v", tt.level, others)
				}
				return
			}
			if len(others) != 1 {
				t.Fatalf("%d lines above debug, want the outcome alone:\n%s", len(others), errOut)
			}
			for k, v := range tt.outcome {
				if others[0][k] != v {
					t.Errorf("outcome %s = %v, want %v", k, others[0][k], v)
				}
			}
			if tt.code == exitFail && !strings.Contains(others[0].str("last"), "connection refused") {
				t.Errorf("outcome last = %q, want what the last poll saw", others[0]["last"])
			}
		})
	}
}

// httpServer answers every request with code and returns its address.
func httpServer(t *testing.T, code int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) })}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return ln.Addr().String()
}
