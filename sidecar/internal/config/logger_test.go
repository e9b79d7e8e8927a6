package config_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
)

// logAll logs one line at each level and returns the messages that came out.
func logAll(t *testing.T, c *config.Config, stderr *bytes.Buffer) {
	t.Helper()
	log, closer, err := c.NewLogger(stderr)
	if err != nil {
		t.Fatal(err)
	}
	log.Debug("m-debug")
	log.Info("m-info")
	log.Warn("m-warn")
	log.Error("m-error")
	if err := closer.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestNewLogger(t *testing.T) {
	tests := []struct {
		level, format string
		want          []string
	}{
		{"debug", "text", []string{"m-debug", "m-info", "m-warn", "m-error"}},
		{"info", "json", []string{"m-info", "m-warn", "m-error"}},
		{"warn", "text", []string{"m-warn", "m-error"}},
		{"ERROR", "JSON", []string{"m-error"}},
	}
	for _, tt := range tests {
		t.Run(tt.level+"/"+tt.format, func(t *testing.T) {
			c, err := config.Load([]string{"--log-level=" + tt.level, "--log-format=" + tt.format}, nil)
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			logAll(t, c, &stderr)
			var got []string
			sc := bufio.NewScanner(&stderr)
			for sc.Scan() {
				line := sc.Text()
				if strings.ToLower(tt.format) == "json" {
					var rec struct{ Msg string }
					if err := json.Unmarshal([]byte(line), &rec); err != nil {
						t.Fatalf("not JSON: %q: %v", line, err)
					}
					got = append(got, rec.Msg)
					continue
				}
				_, msg, ok := strings.Cut(line, " msg=")
				if !ok || !strings.HasPrefix(line, "time=") {
					t.Fatalf("not slog text: %q", line)
				}
				got = append(got, msg)
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("logged %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNewLoggerFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sidecar.log")
	if err := os.WriteFile(path, []byte("earlier line\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(nil, []string{"LOG_FILE=" + path})
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	logAll(t, c, &stderr)
	if stderr.Len() != 0 {
		t.Errorf("stderr got %q with LOG_FILE set", stderr.String())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 4 || lines[0] != "earlier line" || !strings.Contains(lines[3], "msg=m-error") {
		t.Errorf("log file holds %q, want the earlier line then info, warn and error", lines)
	}

	// A file that cannot be opened any more (its directory vanished after
	// Load) is an error, not a silent fallback to stderr.
	c, err = config.Load(nil, []string{"LOG_FILE=" + filepath.Join(t.TempDir(), "gone", "x.log")})
	if err == nil {
		t.Fatalf("Load accepted a LOG_FILE in a missing directory: %+v", c)
	}
	dir := t.TempDir()
	c, err = config.Load(nil, []string{"LOG_FILE=" + filepath.Join(dir, "x.log")})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.NewLogger(&stderr); err == nil {
		t.Error("NewLogger opened a file in a removed directory")
	}
}
