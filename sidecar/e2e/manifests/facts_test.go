package manifests

import (
	"strconv"
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/imagetest"
)

// projectImage is the image every dot-sidecar container runs (a fixed fact of
// the project: the Dockerfile builds it, the release tags it).
const projectImage = "ghcr.io/dot-sidecar/dot-sidecar:0.1.0"

// imageFacts are what the manifests must agree with, read from the files
// that make the image: the Dockerfile, entrypoint.sh and the iptables script.
type imageFacts struct {
	Entrypoint  string          // ENTRYPOINT of the final stage (exec form)
	UID, GID    int64           // numeric USER of the final stage
	Subcommands map[string]bool // the words entrypoint.sh dispatches on
	ScriptUID   int64           // dns-redirect.sh's default SIDECAR_UID
}

// readImageFacts reads them with imagetest, as the builder and the runtime
// would.
func readImageFacts(t *testing.T) imageFacts {
	t.Helper()
	files := imagetest.Read(t)
	ep, err := files.Dockerfile.Entrypoint()
	if err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	f := imageFacts{Entrypoint: ep[0], Subcommands: files.Subcommands, ScriptUID: files.ScriptUID}
	if f.UID, f.GID, err = files.Dockerfile.User(); err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}
	return f
}

// loadSettings loads the environment a container would see into the
// sidecar's own configuration loader: the settings of the manifests are
// valid exactly when the sidecar would start with them.
func loadSettings(t testing.TB, environ []string) *config.Config {
	t.Helper()
	c, err := config.Load(nil, environ)
	if err != nil {
		t.Fatalf("the sidecar's config.Load rejects the manifest's settings %q: %v", environ, err)
	}
	return c
}

// portOf returns the port of a host:port address such as ":9253".
func portOf(t testing.TB, addr string) int32 {
	t.Helper()
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		t.Fatalf("address %q has no port", addr)
	}
	p, err := strconv.ParseInt(addr[i+1:], 10, 32)
	if err != nil {
		t.Fatalf("address %q: %v", addr, err)
	}
	return int32(p)
}
