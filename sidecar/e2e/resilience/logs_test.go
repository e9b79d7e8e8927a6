package resilience

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

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
