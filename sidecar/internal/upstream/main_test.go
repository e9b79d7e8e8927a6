package upstream

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test closes what it opens; a goroutine left behind by a DoT (reader,
// writer, dial, housekeeping) or by dnstest fails the package.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
