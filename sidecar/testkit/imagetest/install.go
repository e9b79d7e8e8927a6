package imagetest

import (
	"path"
	"slices"
	"strconv"
	"strings"
)

// BuiltBinary stands, as an Installed source, for the file a RUN's
// `go build -o` writes.
const BuiltBinary = "(go build)"

// file is a file a stage's instructions put in its filesystem.
type file struct {
	src  string // path in the build context (a directory ends in /), or BuiltBinary
	exec bool   // made executable by COPY --chmod or RUN chmod
}

// Installed returns where the build-context file src lands in the image,
// and whether the Dockerfile itself makes it executable there (COPY
// --chmod, or RUN chmod with every execute bit), rather than relying on the
// mode the file happens to have in the checkout. It follows COPY from the
// context and from earlier stages, WORKDIR and RUN chmod.
func (d *Dockerfile) Installed(src string) (dest string, executable, ok bool) {
	files := d.files(len(d.Stages) - 1)
	for p, f := range files {
		if f.src == src && (!ok || p < dest) {
			dest, executable, ok = p, f.exec, true
		}
	}
	return dest, executable, ok
}

// files replays stage i's instructions.
func (d *Dockerfile) files(i int) map[string]file {
	fs := map[string]file{}
	cwd := "/"
	abs := func(p string) string {
		if path.IsAbs(p) {
			return cleanKeepSlash(p)
		}
		return cleanKeepSlash(path.Join(cwd, p) + trailing(p))
	}
	for _, in := range d.Stages[i].Instr {
		f := strings.Fields(in.Args)
		switch in.Cmd {
		case "WORKDIR":
			cwd = abs(in.Args)
		case "COPY", "ADD":
			var from string
			exec := false
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				if v, ok := strings.CutPrefix(f[0], "--from="); ok {
					from = v
				}
				if v, ok := strings.CutPrefix(f[0], "--chmod="); ok {
					exec = modeExec(v)
				}
				f = f[1:]
			}
			if len(f) < 2 {
				continue
			}
			srcs, dest := f[:len(f)-1], abs(f[len(f)-1])
			intoDir := strings.HasSuffix(dest, "/") || len(srcs) > 1
			for _, s := range srcs {
				if from == "" {
					to := dest
					switch {
					case strings.HasSuffix(s, "/"):
						to = strings.TrimSuffix(dest, "/") + "/"
					case intoDir:
						to = strings.TrimSuffix(dest, "/") + "/" + path.Base(s)
					}
					fs[to] = file{src: s, exec: exec}
					continue
				}
				j := d.stageIndex(from, i)
				if j < 0 {
					continue // another image's files: not followed
				}
				for p, fl := range d.files(j) {
					to, ok := copied(s, p, dest, intoDir)
					if ok {
						fl.exec = fl.exec || exec
						fs[to] = fl
					}
				}
			}
		case "RUN":
			for _, cmd := range splitShell(in.Args) {
				w := strings.Fields(cmd)
				switch {
				case len(w) >= 3 && w[0] == "chmod":
					args := w[1:]
					for len(args) > 0 && strings.HasPrefix(args[0], "-") {
						args = args[1:]
					}
					if len(args) < 2 {
						continue
					}
					for _, p := range args[1:] {
						if fl, ok := fs[abs(p)]; ok {
							fl.exec = modeExec(args[0])
							fs[abs(p)] = fl
						}
					}
				case slices.Index(w, "build") > 0 && path.Base(w[slices.Index(w, "build")-1]) == "go":
					if o := slices.Index(w, "-o"); o >= 0 && o+1 < len(w) {
						fs[abs(w[o+1])] = file{src: BuiltBinary, exec: true}
					}
				}
			}
		}
	}
	return fs
}

// copied maps path p of another stage through COPY --from=... src dest.
func copied(src, p, dest string, intoDir bool) (string, bool) {
	src = cleanKeepSlash(src)
	if strings.HasSuffix(src, "/") {
		rel, ok := strings.CutPrefix(p, src)
		if !ok {
			return "", false
		}
		return strings.TrimSuffix(dest, "/") + "/" + rel, true
	}
	if p != src {
		return "", false
	}
	if intoDir {
		return strings.TrimSuffix(dest, "/") + "/" + path.Base(p), true
	}
	return dest, true
}

func (d *Dockerfile) stageIndex(name string, before int) int {
	for j := range before {
		if d.Stages[j].Name == name || strconv.Itoa(j) == name {
			return j
		}
	}
	return -1
}

// modeExec: an octal mode with every execute bit, or a symbolic one adding
// them (+x, a+x).
func modeExec(m string) bool {
	if v, err := strconv.ParseUint(m, 8, 32); err == nil {
		return v&0o111 == 0o111
	}
	return m == "+x" || m == "a+x" || m == "ugo+x"
}

// splitShell splits a RUN's shell text into its simple commands.
func splitShell(s string) []string {
	s = strings.NewReplacer("&&", ";", "||", ";", "|", ";").Replace(s)
	return strings.Split(s, ";")
}

func trailing(p string) string {
	if strings.HasSuffix(p, "/") {
		return "/"
	}
	return ""
}

func cleanKeepSlash(p string) string {
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c
}
