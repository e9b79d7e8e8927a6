package config_test

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
)

// TestUsageListsEverySetting walks Config by reflection: each exported field
// must be a setting, and --help must show its flag, variable, default and
// meaning.
func TestUsageListsEverySetting(t *testing.T) {
	var buf bytes.Buffer
	config.Usage(&buf)
	out := buf.String()
	flat := strings.Join(strings.Fields(out), " ") // help text is wrapped
	ct := reflect.TypeFor[config.Config]()
	n := 0
	for i := range ct.NumField() {
		f := ct.Field(i)
		if !f.IsExported() {
			continue
		}
		n++
		env := f.Tag.Get("env")
		help := f.Tag.Get("help")
		if env == "" || help == "" {
			t.Errorf("field %s lacks an env or help tag", f.Name)
			continue
		}
		def, ok := f.Tag.Lookup("envDefault")
		if !ok {
			t.Errorf("field %s lacks an envDefault tag", f.Name)
		}
		shown := fmt.Sprintf("%q", def)
		if def == "" {
			shown = "none"
		}
		head := fmt.Sprintf("  %s, %s (default %s)\n", flagOf(env), env, shown)
		if !strings.Contains(out, head) {
			t.Errorf("usage lacks %q", head)
		}
		if !strings.Contains(flat, strings.Join(strings.Fields(help), " ")) {
			t.Errorf("usage lacks the meaning of %s: %q", env, help)
		}
	}
	if n < 35 {
		t.Errorf("only %d settings found by reflection", n)
	}
	for _, line := range strings.Split(out, "\n") {
		if len(line) > 80 {
			t.Errorf("usage line longer than 80 columns: %q", line)
		}
	}
}

// A command's help picks settings by name and shows its own flags in the
// settings' shape: double dashes, the default, the meaning.
func TestWriteSettingsAndFlags(t *testing.T) {
	var buf bytes.Buffer
	config.WriteSettings(&buf, "LOG_LEVEL", "ADMIN_ADDRESS")
	want := "\n  --log-level, LOG_LEVEL (default \"info\")\n"
	got := buf.String()
	if !strings.HasPrefix(got, want) || !strings.Contains(got, "\n  --admin-address, ADMIN_ADDRESS (default \":9253\")\n") {
		t.Errorf("WriteSettings(LOG_LEVEL, ADMIN_ADDRESS) =\n%s", got)
	}
	if n := strings.Count(got, "\n  --"); n != 2 {
		t.Errorf("WriteSettings of two settings wrote %d entries:\n%s", n, got)
	}

	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Duration("timeout", time.Minute, "how long to wait for something that takes its time to happen, in a help line long enough to wrap")
	fs.String("resolv-conf", "", "file naming the nameservers")
	buf.Reset()
	config.WriteFlags(&buf, fs)
	want = "\n  --resolv-conf (default none)\n      file naming the nameservers\n" +
		"\n  --timeout (default \"60s\")\n      how long to wait for something that takes its time to happen, in a help\n      line long enough to wrap\n"
	if got := buf.String(); got != want {
		t.Errorf("WriteFlags =\n%s\nwant\n%s", got, want)
	}
}

func TestDoubleDash(t *testing.T) {
	var d time.Duration
	var n int
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--foo"}, "flag provided but not defined: --foo"},
		{[]string{"-foo"}, "flag provided but not defined: --foo"},
		{[]string{"--timeout=5x"}, `invalid value "5x" for flag --timeout: parse error`},
		{[]string{"--timeout=a -b"}, `invalid value "a -b" for flag --timeout: parse error`},
		{[]string{"--timeout"}, "flag needs an argument: --timeout"},
		{[]string{"---x"}, "bad flag syntax: ---x"},
		{[]string{"--n=-1x"}, `invalid value "-1x" for flag --n: parse error`},
	} {
		fs := flag.NewFlagSet("x", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		fs.DurationVar(&d, "timeout", 0, "")
		fs.IntVar(&n, "n", 0, "")
		err := fs.Parse(tt.args)
		if got := config.DoubleDash(err); got.Error() != tt.want || !errors.Is(got, err) {
			t.Errorf("DoubleDash(%q) = %q, want %q wrapping it", err, got, tt.want)
		}
	}
}
