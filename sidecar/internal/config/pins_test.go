package config_test

import (
	"testing"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
)

func TestPinRoundTrip(t *testing.T) {
	p := pinBytes("x")
	got, err := config.ParsePin(config.FormatPin(p))
	if err != nil || got != p {
		t.Errorf("ParsePin(FormatPin(p)) = %x, %v", got, err)
	}
}
