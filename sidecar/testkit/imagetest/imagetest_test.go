package imagetest

import (
	"slices"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	d, err := Parse(`# a comment
ARG GO_IMAGE=golang:1.26.8-bookworm
ARG BASE=debian:12.12-slim
ARG UNUSED

FROM ${GO_IMAGE} AS build
RUN apt-get update \
 &&   apt-get install x
FROM $BASE
USER 10053:10053
ENTRYPOINT ["/opt/e.sh", "arg"]
`)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Arg{{"GO_IMAGE", "golang:1.26.8-bookworm"}, {"BASE", "debian:12.12-slim"}, {"UNUSED", ""}}; !slices.Equal(d.Args, want) {
		t.Errorf("Args %v, want %v", d.Args, want)
	}
	if len(d.Stages) != 2 || d.Stages[0].From != "${GO_IMAGE}" || d.Stages[0].Image != "golang:1.26.8-bookworm" ||
		d.Stages[0].Name != "build" || d.Final().Image != "debian:12.12-slim" {
		t.Errorf("stages %+v", d.Stages)
	}
	if got := d.Stages[0].All("RUN"); !slices.Equal(got, []string{"apt-get update && apt-get install x"}) {
		t.Errorf("RUN with a continuation: %q", got)
	}
	if s, ok := d.Stage("build"); !ok || s.Image != d.Stages[0].Image {
		t.Errorf("Stage(build) = %+v, %v", s, ok)
	}
	ep, err := d.Entrypoint()
	if err != nil || !slices.Equal(ep, []string{"/opt/e.sh", "arg"}) {
		t.Errorf("Entrypoint %q, %v", ep, err)
	}
	if uid, gid, err := d.User(); err != nil || uid != 10053 || gid != 10053 {
		t.Errorf("User %d:%d, %v", uid, gid, err)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"no FROM", "RUN true\n", "before the first FROM"},
		{"empty", "# nothing\n", "no FROM"},
		{"undeclared argument", "FROM ${IMAGE}\n", "no ARG before the first FROM declares"},
		{"argument of a stage", "FROM a\nARG IMAGE=b\nFROM ${IMAGE}\n", "no ARG before the first FROM declares"},
		{"parser directive", "# syntax=docker/dockerfile:1\nFROM a\n", "parser directive"},
		{"bad AS", "FROM a NAME\n", "FROM IMAGE [AS NAME]"},
	} {
		if _, err := Parse(tc.text); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
}

func TestFinalStageFacts(t *testing.T) {
	for _, tc := range []struct {
		name, text    string
		entry         string
		uid, gid      int64
		wantErrSubstr string
	}{
		{name: "final stage wins", text: "FROM golang:1.26 AS build\nUSER 1:1\nENTRYPOINT [\"/x\"]\nFROM debian:trixie-slim\n" +
			"USER 10053:10053\nENTRYPOINT [\"/opt/e.sh\"]\n", entry: "/opt/e.sh", uid: 10053, gid: 10053},
		{name: "shell form", text: "FROM a\nUSER 1:1\nENTRYPOINT /opt/e.sh\n", wantErrSubstr: "exec form"},
		{name: "named user", text: "FROM a\nUSER nonroot:nonroot\nENTRYPOINT [\"/e\"]\n", wantErrSubstr: "not numeric"},
		{name: "no group", text: "FROM a\nUSER 10053\nENTRYPOINT [\"/e\"]\n", wantErrSubstr: "uid:gid"},
		{name: "no user", text: "FROM a\nENTRYPOINT [\"/e\"]\n", wantErrSubstr: "as root"},
		{name: "entrypoint of an earlier stage only", text: "FROM a\nENTRYPOINT [\"/e\"]\nFROM b\nUSER 1:1\n", wantErrSubstr: "no ENTRYPOINT"},
	} {
		d, err := Parse(tc.text)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		ep, eerr := d.Entrypoint()
		uid, gid, uerr := d.User()
		if tc.wantErrSubstr != "" {
			if (eerr == nil || !strings.Contains(eerr.Error(), tc.wantErrSubstr)) && (uerr == nil || !strings.Contains(uerr.Error(), tc.wantErrSubstr)) {
				t.Errorf("%s: errors %v / %v, want one to mention %q", tc.name, eerr, uerr, tc.wantErrSubstr)
			}
			continue
		}
		if eerr != nil || uerr != nil || ep[0] != tc.entry || uid != tc.uid || gid != tc.gid {
			t.Errorf("%s: got %q %d:%d (%v, %v)", tc.name, ep, uid, gid, eerr, uerr)
		}
	}
}

func TestInstalled(t *testing.T) {
	d, err := Parse(`FROM golang AS build
WORKDIR /src
COPY go.mod go.sum ./
COPY sidecar/ sidecar/
RUN CGO_ENABLED=0 go build -trimpath -o /out/dot-sidecar ./sidecar
COPY entrypoint.sh /out/opt/app/
COPY iptables/dns-redirect.sh /out/opt/app/iptables/dns-redirect.sh
COPY README.md /out/opt/app/README.md
RUN chmod 0755 /out/opt/app/entrypoint.sh /out/opt/app/iptables/dns-redirect.sh && chmod 0644 /out/opt/app/README.md
FROM debian
COPY --from=build /out/dot-sidecar /usr/local/bin/dot-sidecar
COPY --from=build /out/opt/app/ /opt/app/
COPY --chmod=0755 tool.sh /usr/local/bin/
COPY plain.sh /usr/local/bin/plain.sh
COPY --from=alpine /bin/busybox /bin/busybox
`)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		src, dest string
		exec, ok  bool
	}{
		{BuiltBinary, "/usr/local/bin/dot-sidecar", true, true},
		{"entrypoint.sh", "/opt/app/entrypoint.sh", true, true},
		{"iptables/dns-redirect.sh", "/opt/app/iptables/dns-redirect.sh", true, true},
		{"README.md", "/opt/app/README.md", false, true},
		{"tool.sh", "/usr/local/bin/tool.sh", true, true},
		// Executable only if the checkout says so: not the Dockerfile's doing.
		{"plain.sh", "/usr/local/bin/plain.sh", false, true},
		// Only in the build stage.
		{"go.mod", "", false, false},
	} {
		dest, exec, ok := d.Installed(tc.src)
		if dest != tc.dest || exec != tc.exec || ok != tc.ok {
			t.Errorf("Installed(%q) = %q, exec %v, %v; want %q, exec %v, %v", tc.src, dest, exec, ok, tc.dest, tc.exec, tc.ok)
		}
	}
}

func TestParseEntrypointAndScript(t *testing.T) {
	subs, err := ParseEntrypoint("case \"${1:-}\" in\ninit | cleanup | dry-run)\n  exec x ;;\n  wait|check) exec y ;;\n*) exec z ;;\nesac\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"init", "cleanup", "dry-run", "wait", "check"} {
		if !subs[w] {
			t.Errorf("%s not found in %v", w, subs)
		}
	}
	if subs["*"] || len(subs) != 5 {
		t.Errorf("got %v, want exactly the five words", subs)
	}
	if _, err := ParseEntrypoint("exec x\n"); err == nil {
		t.Error("a script without case patterns was accepted")
	}
	if uid, err := ParseScriptUID("SIDECAR_UID=${SIDECAR_UID:-10053}\n"); err != nil || uid != 10053 {
		t.Errorf("got %d, %v", uid, err)
	}
	if _, err := ParseScriptUID("SIDECAR_UID=10053\n"); err == nil {
		t.Error("a value without default syntax was accepted")
	}
}

// TestReadRepository: the repository's own files parse.
func TestReadRepository(t *testing.T) {
	f := Read(t)
	if len(f.Dockerfile.Stages) < 2 || len(f.Subcommands) == 0 || f.ScriptUID == 0 {
		t.Errorf("Read: %+v", f)
	}
}
