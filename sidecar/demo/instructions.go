package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// instructions is what the demo prints: every command a newcomer copies.
type instructions struct {
	Upstream string   // IP:PORT of the demo upstream
	Settings []string // VAR=value pairs for the sidecar, shell-quoted
	Pin      string   // TLS_PINS=... line
	Sidecar  []string // kdig commands against the sidecar, UDP and TCP
	Direct   string   // kdig command against the upstream itself, over TLS
	Dir      string   // removed on exit
}

func instructionsFor(u *upstream, sidecarPort int, dir string) instructions {
	in := instructions{
		Upstream: u.Addr.String(),
		Settings: []string{
			"UPSTREAMS=" + shellQuote("tls://"+u.Addr.String()+"#"+serverName),
			"TLS_CA_FILE=" + shellQuote(u.CAFile),
		},
		Pin: "TLS_PINS=" + shellQuote(u.Pin),
		Dir: dir,
	}
	if sidecarPort != defaultSidecarPort {
		in.Settings = append(in.Settings, "BIND_PORT="+strconv.Itoa(sidecarPort))
	}
	// The sidecar listens on 127.0.0.1 and ::1 by default.
	at := "kdig @127.0.0.1 -p " + strconv.Itoa(sidecarPort) + " "
	in.Sidecar = []string{
		at + "www." + serverName + " A",
		at + "+tcp www." + serverName + " AAAA",
		at + "txt." + serverName + " TXT",
		at + "+tcp nothing." + serverName + " A    # NXDOMAIN",
	}
	in.Direct = fmt.Sprintf("kdig @%s -p %d %s %s www.%s A",
		u.Addr.Addr(), u.Addr.Port(), shellQuote("+tls-ca="+u.CAFile), "+tls-hostname="+serverName, serverName)
	return in
}

func writeInstructions(w io.Writer, in instructions) {
	p := func(format string, a ...any) { fmt.Fprintf(w, format+"\n", a...) }
	p("dot-sidecar demo: a DNS-over-TLS upstream on %s for the zone %s,", in.Upstream, serverName)
	p("with a certificate from a CA made just now.")
	p("")
	p("1. In another terminal, from the repository root, start the sidecar against it:")
	p("")
	p("    %s go run ./sidecar", strings.Join(in.Settings, " "))
	p("")
	p("   To also pin the upstream's key (the chain and name are verified either way), add")
	p("")
	p("    %s", in.Pin)
	p("")
	p("2. Ask the sidecar over UDP and over TCP (dig takes the same arguments):")
	p("")
	for _, c := range in.Sidecar {
		p("    %s", c)
	}
	p("")
	p("   The upstream logs each query it answers below. Ask it directly, as the sidecar does:")
	p("")
	p("    %s", in.Direct)
	p("")
	p("Ctrl-C stops the demo and removes %s.", in.Dir)
}

// shellQuote returns s as one word for a POSIX shell (and zsh, whose
// extended globbing gives '#' a meaning): unchanged when it holds only safe
// characters, else in single quotes.
func shellQuote(s string) string {
	safe := s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("@%+=:,./_-", r))
	}) < 0
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
