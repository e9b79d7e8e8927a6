package config

import (
	"errors"
	"flag"
	"fmt"
)

// ErrHelp is returned by Load when the arguments ask for help (-h, --help).
// The caller prints Usage and exits 0.
var ErrHelp = flag.ErrHelp

// ErrInvalid is matched (errors.Is) by every *SettingError.
var ErrInvalid = errors.New("invalid setting")

// SettingError reports a bad value. Its message is one line naming what
// supplied the value, the variable (BIND_PORT) or the flag (--bind-port), and
// the value itself, so an operator can find it in a manifest at once.
type SettingError struct {
	// Name is the variable or flag that supplied Value, as the operator wrote
	// it: "BIND_PORT" or "--bind-port".
	Name   string
	Value  string
	Reason error
}

func (e *SettingError) Error() string {
	return fmt.Sprintf("invalid %s %q: %v", e.Name, e.Value, e.Reason)
}

func (e *SettingError) Unwrap() error { return e.Reason }

// Is makes errors.Is(err, ErrInvalid) true for every SettingError.
func (e *SettingError) Is(target error) bool { return target == ErrInvalid }
