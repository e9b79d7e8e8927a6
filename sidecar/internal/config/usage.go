package config

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// Help entries share one shape, whatever defines them:
//
//	--bind-port, BIND_PORT (default "5053")     a setting
//	--timeout (default "60s")                   a command's own flag
//	    meaning, wrapped at helpWidth
const helpWidth = 72

// Usage writes the settings part of the help: how settings are given, then
// every setting with its flag, variable, default and meaning, generated from
// Config's tags.
func Usage(w io.Writer) {
	io.WriteString(w, `Settings:

Each setting is an environment variable or the flag of the same name in
lower case with dashes; the flag wins. An empty value means the default
(except ADMIN_ADDRESS, where empty disables the admin listener).
`)
	WriteSettings(w)
}

// WriteSettings writes the help entries of the settings named by their
// variables (ADMIN_ADDRESS), in that order, or of every setting when none is
// named. It panics on a name that is not a setting, as a typo in a command's
// help is a bug.
func WriteSettings(w io.Writer, envs ...string) {
	var b strings.Builder
	list := settings()
	if len(envs) > 0 {
		list = list[:0:0]
		for _, e := range envs {
			list = append(list, settingNamed(e))
		}
	}
	for _, s := range list {
		writeEntry(&b, "--"+s.Flag+", "+s.Env, s.Default, s.Help)
	}
	io.WriteString(w, b.String())
}

// WriteFlags writes the help entries of a command's own flags (those that are
// not settings), defined on fs, in the settings' shape: double dashes, the
// default, the meaning.
func WriteFlags(w io.Writer, fs *flag.FlagSet) {
	var b strings.Builder
	fs.VisitAll(func(f *flag.Flag) {
		def := f.DefValue
		if g, ok := f.Value.(flag.Getter); ok {
			if _, ok := g.Get().(time.Duration); ok {
				if d, err := time.ParseDuration(def); err == nil {
					def = FormatDuration(d) // "60s", as settings write it, not "1m0s"
				}
			}
		}
		writeEntry(&b, "--"+f.Name, def, f.Usage)
	})
	io.WriteString(w, b.String())
}

func writeEntry(b *strings.Builder, names, def, help string) {
	shown := "none"
	if def != "" {
		shown = fmt.Sprintf("%q", def)
	}
	fmt.Fprintf(b, "\n  %s (default %s)\n", names, shown)
	for _, line := range wrap(help, helpWidth) {
		fmt.Fprintf(b, "      %s\n", line)
	}
}

// wrap breaks text into lines of at most width bytes, at spaces.
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(text) {
		switch {
		case line == "":
			line = word
		case len(line)+1+len(word) > width:
			lines = append(lines, line)
			line = word
		default:
			line += " " + word
		}
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}

// DoubleDash rewrites an error of package flag, which names flags with one
// dash ("flag provided but not defined: -foo"), to name them as the help and
// every other message do ("--foo"). Flags are parsed the same either way.
func DoubleDash(err error) error {
	msg := err.Error()
	// The flag's name comes last but for the reason of a bad value ("invalid
	// value "x" for flag -timeout: parse error"), which never holds " -"
	// followed by a letter; the value, quoted, comes before.
	i := strings.LastIndex(msg, " -")
	if i < 0 || i+2 >= len(msg) || !isLetter(msg[i+2]) {
		return err
	}
	return &dashedError{msg: msg[:i] + " --" + msg[i+2:], err: err}
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

type dashedError struct {
	msg string
	err error
}

func (e *dashedError) Error() string { return e.msg }
func (e *dashedError) Unwrap() error { return e.err }
