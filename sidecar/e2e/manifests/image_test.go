package manifests

import (
	"net/http"
	"slices"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestManifestsAgreeWithImage checks every container running the project's
// image against the files that build it: the command is the Dockerfile's
// ENTRYPOINT, every subcommand used is one entrypoint.sh dispatches, and the
// sidecar's identity is the Dockerfile's USER and the iptables script's
// default SIDECAR_UID (three places that must name the same UID, or the
// sidecar's own queries would be redirected back to it).
func TestManifestsAgreeWithImage(t *testing.T) {
	t.Parallel()
	facts := readImageFacts(t)
	if facts.UID != facts.ScriptUID {
		t.Errorf("Dockerfile USER uid %d differs from dns-redirect.sh's default SIDECAR_UID %d", facts.UID, facts.ScriptUID)
	}
	used := map[string]string{iptablesName: "init", checkName: "check"}
	for _, p := range dotSidecarPods(t) {
		t.Run(p.where, func(t *testing.T) {
			for _, c := range slices.Concat(p.spec.InitContainers, p.spec.Containers) {
				if c.Image != projectImage {
					continue
				}
				where := p.where + " " + c.Name
				switch c.Name {
				case nodeInitName:
					// The image's iptables script itself, run directly (not a
					// subcommand of the entrypoint): checkNodeInit holds it to
					// the Dockerfile and to the script's commands.
					continue
				case iptablesName, checkName, sidecarName:
				default:
					t.Errorf("%s: runs the dot-sidecar image under a name this test does not know", where)
					continue
				}
				if !slices.Equal(c.Command, []string{facts.Entrypoint}) {
					t.Errorf("%s: command %v, want the image's ENTRYPOINT [%s]", where, c.Command, facts.Entrypoint)
				}
				want := used[c.Name]
				switch {
				case want == "" && len(c.Args) > 0 && facts.Subcommands[c.Args[0]]:
					t.Errorf("%s: args %v would run the entrypoint's %q, not the sidecar", where, c.Args, c.Args[0])
				case want != "" && !slices.Equal(c.Args, []string{want}):
					t.Errorf("%s: args %v, want [%s]", where, c.Args, want)
				case want != "" && !facts.Subcommands[want]:
					t.Errorf("%s: entrypoint.sh has no %q subcommand (it has %v)", where, want, sortedKeys(facts.Subcommands))
				}
				if c.Lifecycle != nil && c.Lifecycle.PostStart != nil {
					cmd := c.Lifecycle.PostStart.Exec.Command
					if len(cmd) != 2 || cmd[0] != facts.Entrypoint || cmd[1] != "wait" || !facts.Subcommands["wait"] {
						t.Errorf("%s: postStart %v, want [%s wait] with wait handled by entrypoint.sh", where, cmd, facts.Entrypoint)
					}
				}
				sc := c.SecurityContext
				switch c.Name {
				case sidecarName:
					if *sc.RunAsUser != facts.UID || *sc.RunAsGroup != facts.GID {
						t.Errorf("%s: runs as %d:%d, the Dockerfile's USER is %d:%d", where, *sc.RunAsUser, *sc.RunAsGroup, facts.UID, facts.GID)
					}
				case checkName:
					if *sc.RunAsUser == facts.UID || *sc.RunAsUser == facts.ScriptUID {
						t.Errorf("%s: runs as the sidecar's UID %d, which is never redirected", where, *sc.RunAsUser)
					}
				case iptablesName:
					uid, set := lookup(p.env(t, c), "SIDECAR_UID")
					if set && uid != strconv.FormatInt(facts.UID, 10) {
						t.Errorf("%s: SIDECAR_UID %s, the image's USER is %d", where, uid, facts.UID)
					}
				}
			}
		})
	}
}

// TestScrapeAndProbePathsAnswer asks the sidecar's real admin listener for
// every path the manifests probe or scrape.
func TestScrapeAndProbePathsAnswer(t *testing.T) {
	t.Parallel()
	paths := make(map[string]string) // path → where it is used
	for _, p := range dotSidecarPods(t) {
		c := p.container(t, sidecarName)
		for _, pr := range []*corev1.Probe{c.StartupProbe, c.LivenessProbe, c.ReadinessProbe} {
			if pr != nil && pr.HTTPGet != nil {
				paths[pr.HTTPGet.Path] = p.where + " probe"
			}
		}
		a := p.meta.Annotations
		if a["prometheus.io/scrape"] == "true" {
			paths[a["prometheus.io/path"]] = p.where + " prometheus.io/path"
			if port := strconv.Itoa(int(probePort(t, p.where, c, c.ReadinessProbe))); a["prometheus.io/port"] != port {
				t.Errorf("%s: prometheus.io/port %q, the admin port is %s", p.where, a["prometheus.io/port"], port)
			}
		}
	}
	for _, ep := range podMonitorEndpoints(t) {
		paths[ep.Path] = "PodMonitor"
	}
	status := adminStatus(t)
	for _, path := range sortedKeys(paths) {
		if got := status(path); got != http.StatusOK {
			t.Errorf("%s: GET %q answers %d, want 200", paths[path], path, got)
		}
	}
	// And the listener is not one that answers anything: a wrong path fails.
	if got := status("/healthz"); got == http.StatusOK {
		t.Errorf("GET /healthz answers 200; the check above would prove nothing")
	}
}
