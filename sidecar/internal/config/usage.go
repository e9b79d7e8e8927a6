package config

import (
	"fmt"
	"io"
	"strings"
)

// Usage writes the help text: every setting with its flag, variable, default
// and meaning, generated from Config's tags.
func Usage(w io.Writer) {
	var b strings.Builder
	b.WriteString(`Usage: dot-sidecar [--setting=value ...]

dot-sidecar answers plain DNS on loopback by relaying every query to
DNS-over-TLS upstreams over verified, pipelined TLS connections.

Each setting is an environment variable or the flag of the same name in
lower case with dashes; the flag wins. An empty value means the default
(except ADMIN_ADDRESS, where empty disables the admin listener).

Settings:
`)
	for _, s := range settings() {
		def := fmt.Sprintf("%q", s.Default)
		if s.Default == "" {
			def = "none"
		}
		fmt.Fprintf(&b, "\n  --%s, %s (default %s)\n", s.Flag, s.Env, def)
		for _, line := range wrap(s.Help, 72) {
			fmt.Fprintf(&b, "      %s\n", line)
		}
	}
	io.WriteString(w, b.String())
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
