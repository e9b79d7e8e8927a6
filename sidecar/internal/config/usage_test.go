package config_test

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"

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
