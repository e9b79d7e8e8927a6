package image

import (
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// TestMain is testkit.Main: the package's last line names the tests that
// skipped for lack of a tool. Tests that share something for the whole
// package register its cleanup with testkit.AtExit.
func TestMain(m *testing.M) { testkit.Main(m) }
