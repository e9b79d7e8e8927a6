package upstream

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// Every test closes what it opens; a goroutine left behind by a DoT (reader,
// writer, dial, housekeeping) or by dnstest fails the package.
func TestMain(m *testing.M) {
	testkit.Main(m, func() error { return goleak.Find() })
}
