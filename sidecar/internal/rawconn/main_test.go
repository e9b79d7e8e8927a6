package rawconn

import (
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// testkit.Main prints which tests skipped and why, once per package.
func TestMain(m *testing.M) { testkit.Main(m) }
