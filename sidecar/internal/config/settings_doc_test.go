package config_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/testpki"
)

// settingsDoc returns the lines of docs/settings.md, the settings reference.
func settingsDoc(t *testing.T) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testkit.RepoRoot(t), "docs", "settings.md"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(string(data), "\n")
}

var tableRow = regexp.MustCompile("^\\| `([A-Z0-9_]+)` \\| `(--[a-z0-9-]+)` \\| (?:`([^`]*)`|\\(none\\)) \\| .+ \\|$")

// TestSettingsDocTable keeps the tables of docs/settings.md in step with
// Config: the same variables, in the same order, with the same flags and
// defaults. Every table row of the file is a setting.
func TestSettingsDocTable(t *testing.T) {
	type row struct{ env, flag, def string }
	var got, want []row
	for _, line := range settingsDoc(t) {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		m := tableRow.FindStringSubmatch(line)
		if m == nil {
			t.Errorf("docs/settings.md row not in the form | `VAR` | `--flag` | `default` or (none) | meaning |:\n%s", line)
			continue
		}
		got = append(got, row{m[1], m[2], m[3]})
	}
	ct := reflect.TypeFor[config.Config]()
	for i := range ct.NumField() {
		f := ct.Field(i)
		if env, ok := f.Tag.Lookup("env"); ok && f.IsExported() {
			want = append(want, row{env, flagOf(env), f.Tag.Get("envDefault")})
		}
	}
	if reflect.DeepEqual(got, want) {
		return
	}
	inDoc := make(map[string]row)
	for _, r := range got {
		inDoc[r.env] = r
	}
	inCode := make(map[string]bool)
	for _, w := range want {
		inCode[w.env] = true
		r, ok := inDoc[w.env]
		def := "(none)"
		if w.def != "" {
			def = "`" + w.def + "`"
		}
		switch {
		case !ok:
			t.Errorf("docs/settings.md lacks | `%s` | `%s` | %s | ... |", w.env, w.flag, def)
		case r != w:
			t.Errorf("docs/settings.md row for %s says flag %s, default %q; the code says %s, %s", w.env, r.flag, r.def, w.flag, def)
		}
	}
	for _, r := range got {
		if !inCode[r.env] {
			t.Errorf("docs/settings.md lists %s, which config.Config does not have", r.env)
		}
	}
	if !t.Failed() {
		t.Errorf("docs/settings.md rows are not in the order of config.Config's fields")
	}
}

// TestSettingsDocExamples runs what docs/settings.md shows: its UPSTREAMS
// examples must load, its error lines must be the errors Load gives, and its
// pins file must parse.
func TestSettingsDocExamples(t *testing.T) {
	lines := settingsDoc(t)
	var upstreams, routes, errorLines, pinFiles int
	errLine := regexp.MustCompile(`^    level=ERROR msg="invalid setting" setting=(\S+) value=(\S+) reason=("(?:[^"\\]|\\.)*")$`)
	for i, line := range lines {
		if v, ok := strings.CutPrefix(line, "    UPSTREAMS="); ok {
			upstreams++
			v = strings.Trim(v, "'")
			if _, err := config.Load(nil, []string{"UPSTREAMS=" + v}); err != nil {
				t.Errorf("docs/settings.md example %q: %v", line, err)
			}
		}
		for _, env := range []string{"ROUTES", "CLUSTER_DNS"} {
			if v, ok := strings.CutPrefix(line, "    "+env+"="); ok {
				routes++
				v = strings.Trim(v, "'")
				if _, err := config.Load(nil, []string{env + "=" + v}); err != nil {
					t.Errorf("docs/settings.md example %q: %v", line, err)
				}
			}
		}
		if m := errLine.FindStringSubmatch(line); m != nil {
			errorLines++
			value := m[2]
			if strings.HasPrefix(value, `"`) {
				// slog quotes a value holding '=' or a blank.
				var err error
				if value, err = strconv.Unquote(value); err != nil {
					t.Errorf("docs/settings.md: value %s of %q: %v", m[2], line, err)
				}
			}
			var args, environ []string
			if strings.HasPrefix(m[1], "--") {
				args = []string{m[1] + "=" + value}
			} else {
				environ = []string{m[1] + "=" + value}
			}
			// The program logs a *SettingError's fields (sidecar/main.go);
			// the line must show what Load finds.
			_, err := config.Load(args, environ)
			se, ok := errors.AsType[*config.SettingError](err)
			reason, uerr := strconv.Unquote(m[3])
			if !ok || uerr != nil || se.Name != m[1] || se.Value != value || se.Reason.Error() != reason {
				t.Errorf("docs/settings.md shows\n  %s\nbut Load says\n  %v", strings.TrimSpace(line), err)
			}
		}
		if strings.Contains(line, "holds one pin a line") {
			pinFiles++
			var block []string
			for _, l := range lines[i+1:] {
				if strings.HasPrefix(l, "    ") {
					block = append(block, strings.TrimPrefix(l, "    "))
				} else if len(block) > 0 {
					break
				}
			}
			pins, err := upstream.ParsePins([]byte(strings.Join(block, "\n")))
			if err != nil || len(pins) != 2 {
				t.Errorf("docs/settings.md pins file example: %d pins, %v", len(pins), err)
			}
		}
	}
	if upstreams < 3 || routes < 2 || errorLines < 3 || pinFiles != 1 {
		t.Errorf("found %d UPSTREAMS examples, %d ROUTES examples, %d error lines and %d pins file examples in docs/settings.md, want at least 3, 2, 3 and 1",
			upstreams, routes, errorLines, pinFiles)
	}
}

// TestSettingsDocPinCommand runs the openssl command of docs/settings.md on a
// certificate made by testpki and checks that ParsePin reads its output as
// the SHA-256 of the certificate's SubjectPublicKeyInfo, which is what the
// upstream compares.
func TestSettingsDocPinCommand(t *testing.T) {
	var command string
	for _, line := range settingsDoc(t) {
		if c, ok := strings.CutPrefix(line, "    openssl x509 -pubkey"); ok {
			command = "openssl x509 -pubkey" + c
		}
	}
	if !strings.Contains(command, "cert.pem") {
		t.Fatal("docs/settings.md shows no openssl pin command reading cert.pem")
	}
	tools := testkit.RequireTools(t, "openssl", "base64", "sh")
	ca, err := testpki.NewCA("openssl CA")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue([]string{"dns.example"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if _, _, _, err := testpki.WriteFiles(dir, ca, leaf); err != nil {
		t.Fatal(err)
	}
	// cert.pem holds the leaf, then its CA; openssl x509 reads the first.
	cmd := exec.Command(tools["sh"], "-c", strings.ReplaceAll(command, "cert.pem", strconv.Quote(filepath.Join(dir, "cert.pem"))))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v: %s", command, err, stderr.String())
	}
	got, err := config.ParsePin(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	if want := sha256.Sum256(leaf.Cert.RawSubjectPublicKeyInfo); got != want {
		t.Errorf("docs/settings.md command gives pin %x, want %x", got, want)
	}
	if testpki.Pin(leaf.Cert) != strings.TrimSpace(string(out)) {
		t.Error("testpki.Pin disagrees with the docs/settings.md command")
	}
}
