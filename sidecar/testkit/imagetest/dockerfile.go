// Package imagetest reads the files that make the project's image (the
// Dockerfile, entrypoint.sh, iptables/dns-redirect.sh) the way the builder
// and the container runtime read them, for the tests that hold the image and
// the manifests to those files. No container engine is needed: the
// Dockerfile is parsed into stages, its build arguments resolved, and the
// files of the build context followed to where they land in the final
// image (Installed).
//
//	files := imagetest.Read(t)
//	final := files.Dockerfile.Final()     // FROM, USER, ENTRYPOINT, ...
//	dest, exec := files.Dockerfile.Installed("iptables/dns-redirect.sh")
//	files.Subcommands["init"]             // entrypoint.sh dispatches it
//	files.ScriptUID                       // dns-redirect.sh's SIDECAR_UID
package imagetest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Instruction is one Dockerfile instruction, continuation lines joined and
// runs of blanks made one.
type Instruction struct {
	Cmd  string // upper case: FROM, RUN, COPY, ...
	Args string
}

// Stage is one FROM and the instructions that follow it.
type Stage struct {
	From  string // as written, e.g. ${GO_IMAGE}
	Image string // From with the build arguments' defaults substituted
	Name  string // AS name, if any
	Instr []Instruction
}

// All returns the arguments of every instruction cmd of the stage, in order.
func (s Stage) All(cmd string) []string {
	var out []string
	for _, in := range s.Instr {
		if in.Cmd == cmd {
			out = append(out, in.Args)
		}
	}
	return out
}

// Dockerfile is a parsed Dockerfile.
type Dockerfile struct {
	// Args are the ARG instructions before the first FROM, the only ones a
	// FROM may use, with their defaults ("" when none), in order.
	Args []Arg
	// Stages in order; the last is the image.
	Stages []Stage
}

// Arg is a global build argument.
type Arg struct{ Name, Default string }

var argRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// Parse reads a Dockerfile. It knows the syntax this project's Dockerfile
// uses (comments, continuation lines, global ARGs, FROM ... AS ...), and
// refuses a parser directive, which would change how the rest is read.
func Parse(text string) (*Dockerfile, error) {
	d := &Dockerfile{}
	var cur strings.Builder
	sc := bufio.NewScanner(strings.NewReader(text))
	first := true
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if first && regexp.MustCompile(`^#\s*[a-z]+=`).MatchString(l) {
			return nil, fmt.Errorf("parser directive %q: the image must build the same with every builder", l)
		}
		first = false
		if strings.HasPrefix(l, "#") || (l == "" && cur.Len() == 0) {
			continue
		}
		if strings.HasSuffix(l, `\`) {
			cur.WriteString(strings.TrimSuffix(l, `\`) + " ")
			continue
		}
		cur.WriteString(l)
		line := strings.Join(strings.Fields(cur.String()), " ")
		cur.Reset()
		cmd, args, _ := strings.Cut(line, " ")
		in := Instruction{Cmd: strings.ToUpper(cmd), Args: args}
		switch {
		case in.Cmd == "ARG" && len(d.Stages) == 0:
			name, def, _ := strings.Cut(args, "=")
			d.Args = append(d.Args, Arg{Name: name, Default: def})
		case in.Cmd == "FROM":
			from, name, _ := strings.Cut(args, " ")
			if name != "" {
				as, n, ok := strings.Cut(name, " ")
				if !ok || !strings.EqualFold(as, "AS") {
					return nil, fmt.Errorf("FROM %s: want FROM IMAGE [AS NAME]", args)
				}
				name = n
			}
			image, err := d.expand(from)
			if err != nil {
				return nil, err
			}
			d.Stages = append(d.Stages, Stage{From: from, Image: image, Name: name})
		case len(d.Stages) == 0:
			return nil, fmt.Errorf("%s before the first FROM", in.Cmd)
		default:
			d.Stages[len(d.Stages)-1].Instr = append(d.Stages[len(d.Stages)-1].Instr, in)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(d.Stages) == 0 {
		return nil, fmt.Errorf("no FROM")
	}
	return d, nil
}

// expand substitutes the global build arguments' defaults into s.
func (d *Dockerfile) expand(s string) (string, error) {
	var err error
	out := argRef.ReplaceAllStringFunc(s, func(ref string) string {
		m := argRef.FindStringSubmatch(ref)
		name := m[1] + m[2]
		for _, a := range d.Args {
			if a.Name == name {
				return a.Default
			}
		}
		err = fmt.Errorf("%s uses %s, which no ARG before the first FROM declares", s, ref)
		return ref
	})
	return out, err
}

// Final is the last stage: the image.
func (d *Dockerfile) Final() Stage { return d.Stages[len(d.Stages)-1] }

// Stage returns the stage named name.
func (d *Dockerfile) Stage(name string) (Stage, bool) {
	for _, s := range d.Stages {
		if s.Name == name {
			return s, true
		}
	}
	return Stage{}, false
}

// Entrypoint is the final stage's ENTRYPOINT, which must be in exec form
// (JSON) so that signals reach the process rather than a shell.
func (d *Dockerfile) Entrypoint() ([]string, error) {
	eps := d.Final().All("ENTRYPOINT")
	if len(eps) == 0 {
		return nil, fmt.Errorf("no ENTRYPOINT in the final stage")
	}
	var ep []string
	if err := json.Unmarshal([]byte(eps[len(eps)-1]), &ep); err != nil || len(ep) == 0 {
		return nil, fmt.Errorf("ENTRYPOINT %s: want the exec form [\"/path\", ...] so signals reach the process", eps[len(eps)-1])
	}
	return ep, nil
}

// User is the final stage's numeric USER uid:gid (runAsNonRoot can only
// verify a numeric user).
func (d *Dockerfile) User() (uid, gid int64, err error) {
	users := d.Final().All("USER")
	if len(users) == 0 {
		return 0, 0, fmt.Errorf("no USER in the final stage: the image would run as root")
	}
	user := users[len(users)-1]
	u, g, ok := strings.Cut(user, ":")
	if !ok {
		return 0, 0, fmt.Errorf("USER %q: want numeric uid:gid", user)
	}
	if uid, err = strconv.ParseInt(u, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("USER %q: uid is not numeric (runAsNonRoot can only verify a numeric USER)", user)
	}
	if gid, err = strconv.ParseInt(g, 10, 64); err != nil {
		return 0, 0, fmt.Errorf("USER %q: gid is not numeric", user)
	}
	return uid, gid, nil
}
