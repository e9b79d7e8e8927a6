package resilience

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/bintest"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// LOG_FORMAT=json writes one JSON object a line; LOG_FILE takes the logs
// off stderr; a line per query appears only at LOG_LEVEL=debug.
func TestLogs(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	for _, tt := range []struct {
		level      string
		queryLines bool
	}{
		{"info", false},
		{"debug", true},
	} {
		t.Run(tt.level, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(t.TempDir(), "sidecar.log")
			s := startSidecar(t, append(upstreamEnv(t, srv),
				"LOG_FORMAT=json", "LOG_FILE="+file, "LOG_LEVEL="+tt.level)...)
			const n = 10
			for i := range n {
				name := fmt.Sprintf("log%d.example.", i)
				r, err := ask(s.DNS, "udp", name, false, 2*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				if err := checkA(r, name); err != nil {
					t.Fatal(err)
				}
			}
			// Read the file once the process has exited: every line it was
			// going to write is there.
			if err := s.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if err := s.Wait(t, 10*time.Second); err != nil {
				t.Fatalf("exit: %v", err)
			}
			lines := readJSONLines(t, file)
			want := 0
			if tt.queryLines {
				want = n
			}
			if got := countQueryLines(lines); got != want {
				t.Errorf("%d per-query lines at %s, want %d", got, tt.level, want)
			}
			started, stopped := false, false
			for _, l := range lines {
				for _, k := range []string{"time", "level", "msg"} {
					if _, ok := l[k]; !ok {
						t.Errorf("log line without %q: %v", k, l)
					}
				}
				switch l["msg"] {
				case "dot-sidecar serving":
					started = true
				case "stopped":
					stopped = true
				}
			}
			if !started || !stopped {
				t.Errorf("LOG_FILE lacks the start-up or the stop line (%v, %v)", started, stopped)
			}
			if e := s.Stderr.String(); e != "" {
				t.Errorf("stderr not empty with LOG_FILE set:\n%s", e)
			}
		})
	}
}

func readJSONLines(t *testing.T, file string) []map[string]any {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %d is not JSON: %v\n%s", i+1, err, line)
		}
		out = append(out, m)
	}
	return out
}

func countQueryLines(lines []map[string]any) int {
	n := 0
	for _, l := range lines {
		if l["msg"] == "query" && strings.HasSuffix(fmt.Sprint(l["qname"]), ".example.") {
			n++
		}
	}
	return n
}

// The binary itself, without LOG_FILE: with LOG_FORMAT=json every line on
// stderr is JSON, through a start and a SIGTERM and through a start-up that
// fails, whose last line says why it stopped.
func TestLogsJSONOnStderr(t *testing.T) {
	srv := dnstest.New(t, dnstest.Options{})
	t.Run("start and SIGTERM", func(t *testing.T) {
		s := startSidecar(t, append(upstreamEnv(t, srv), "LOG_FORMAT=json")...)
		if err := s.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := s.Wait(t, 10*time.Second); err != nil {
			t.Fatalf("exit: %v", err)
		}
		lines := jsonLinesOf(t, s.Stderr.String())
		if last := lines[len(lines)-1]; last["msg"] != "stopped" {
			t.Errorf("last line %v, want the stopped line", last)
		}
	})
	t.Run("start-up failure", func(t *testing.T) {
		taken, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer taken.Close()
		cmd := exec.Command(bintest.Binary(t))
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "LOG_FORMAT=json", "BIND_ADDRESS=127.0.0.1", "PROTO=tcp",
			fmt.Sprintf("BIND_PORT=%d", taken.Addr().(*net.TCPAddr).Port),
			fmt.Sprintf("ADMIN_ADDRESS=127.0.0.1:%d", bintest.FreePort(t))}, upstreamEnv(t, srv)...)
		var stderr testkit.Buffer
		cmd.Stderr = &stderr
		err = cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
			t.Fatalf("exit %v, want status 1\n%s", err, stderr.String())
		}
		lines := jsonLinesOf(t, stderr.String())
		if last := lines[len(lines)-1]; last["msg"] != "cannot start" || last["level"] != "ERROR" {
			t.Errorf("last line %v, want the reason at ERROR", last)
		}
	})
}

// jsonLinesOf decodes each line of out, failing on any that is not JSON.
func jsonLinesOf(t *testing.T, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for i, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("stderr line %d is not JSON: %v\n%s", i+1, err, out)
		}
		lines = append(lines, m)
	}
	if len(lines) == 0 {
		t.Fatal("nothing on stderr")
	}
	return lines
}
