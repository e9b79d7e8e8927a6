package check

import (
	"strings"
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/server"
)

// The canary is a contract between the server, which answers it, and check,
// which recognises the answer; the end-to-end test exercises it for real,
// this test names the mismatch when one side changes alone.
func TestCanaryMatchesServer(t *testing.T) {
	if !strings.EqualFold(server.CanaryName, CanaryName) {
		t.Errorf("server answers %q, check asks for %q", server.CanaryName, CanaryName)
	}
	if !strings.HasPrefix(server.CanaryText, CanaryPrefix) {
		t.Errorf("server's canary text %q lacks check's prefix %q", server.CanaryText, CanaryPrefix)
	}
}
