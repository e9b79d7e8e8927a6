package config_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// Every time.Duration attribute is written as a setting would be, in both
// formats, wherever it is logged from.
func TestLoggerDurations(t *testing.T) {
	for _, format := range []string{"text", "json"} {
		c, err := config.Load([]string{"--log-format=" + format}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		log, _, err := c.NewLogger(&buf)
		if err != nil {
			t.Fatal(err)
		}
		log.Info("m", "whole", 60*time.Second, "frac", 1500*time.Millisecond,
			slog.Duration("small", 250*time.Microsecond), slog.Group("g", "d", 2*time.Second))
		line := strings.TrimSpace(buf.String())
		want := map[string]string{"whole": "60s", "frac": "1.5s", "small": "250µs", "g.d": "2s"}
		got := map[string]string{}
		if format == "json" {
			var rec struct {
				Whole, Frac, Small string
				G                  struct{ D string }
			}
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			got = map[string]string{"whole": rec.Whole, "frac": rec.Frac, "small": rec.Small, "g.d": rec.G.D}
		} else {
			for _, f := range strings.Fields(line) {
				if k, v, ok := strings.Cut(f, "="); ok {
					got[k] = v
				}
			}
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s logged as %q, want %q\n%s", format, k, got[k], v, line)
			}
		}
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0s", 90 * time.Second: "90s", 1500 * time.Millisecond: "1.5s",
		2 * time.Millisecond: "2ms", time.Hour: "3600s", 1234567 * time.Nanosecond: "1.234567ms",
	} {
		if got := config.FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%d) = %q, want %q", d, got, want)
		}
	}
}

// Load's own errors are reported in the format the flags or the environment
// ask for, even when another setting is what is wrong; text when the format
// itself cannot be told.
func TestFallbackLogger(t *testing.T) {
	var timeout time.Duration
	extra := config.WithFlags(func(fs *flag.FlagSet) { fs.DurationVar(&timeout, "timeout", 0, "") })
	tests := []struct {
		args, environ []string
		json          bool
	}{
		{nil, nil, false},
		{nil, []string{"LOG_FORMAT=json", "BIND_PORT=bad"}, true},
		{nil, []string{"LOG_FORMAT= JSON "}, true},
		{[]string{"--log-format=json", "--bind-port=bad"}, nil, true},
		{[]string{"--log-format", "json"}, []string{"LOG_FORMAT=text"}, true},
		{[]string{"--log-format=text"}, []string{"LOG_FORMAT=json"}, false},
		{nil, []string{"LOG_FORMAT=yaml"}, false},
		// A command's own flags before it do not hide it.
		{[]string{"--timeout=1s", "--log-format=json"}, nil, true},
		// Flags after a bad one are not seen; the variable still is.
		{[]string{"--no-such-flag", "--log-format=text"}, []string{"LOG_FORMAT=json"}, true},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		config.FallbackLogger(tt.args, tt.environ, &buf, extra).Error("bad", "k", "v")
		isJSON := json.Valid(bytes.TrimSpace(buf.Bytes()))
		if isJSON != tt.json {
			t.Errorf("args %q env %q: logged %q, want JSON %v", tt.args, tt.environ, buf.String(), tt.json)
		}
	}
}

// With LOG_FILE set, the line saying why the process stops goes to the file
// and to stderr; without it, once to stderr.
func TestReportLogger(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sidecar.log")
	for _, environ := range [][]string{{"LOG_FORMAT=json"}, {"LOG_FORMAT=json", "LOG_FILE=" + path}} {
		c, err := config.Load(nil, environ)
		if err != nil {
			t.Fatal(err)
		}
		var stderr bytes.Buffer
		log, closer, err := c.NewLogger(&stderr)
		if err != nil {
			t.Fatal(err)
		}
		c.ReportLogger(log, &stderr).Error("cannot start", "err", "x")
		closer.Close()
		var rec struct{ Msg, Err string }
		if err := json.Unmarshal(stderr.Bytes(), &rec); err != nil || rec.Msg != "cannot start" {
			t.Errorf("%q: stderr %q (%v), want the one JSON line", environ, stderr.String(), err)
		}
		if c.LogFile != "" {
			data, err := os.ReadFile(path)
			if err != nil || !json.Valid(bytes.TrimSpace(data)) || !bytes.Contains(data, []byte(`"cannot start"`)) {
				t.Errorf("LOG_FILE holds %q (%v), want the line too", data, err)
			}
		}
	}
}
