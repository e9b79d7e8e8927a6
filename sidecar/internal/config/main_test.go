package config

import (
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
)

// testkit.Main prints which tests skipped and why (a missing tool), once per
// package.
func TestMain(m *testing.M) { testkit.Main(m) }
