package testkit

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// PeakRSS returns VmHWM of process pid: its resident set's high-water mark
// since it started, in bytes (Linux only).
func PeakRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	return ParseVmHWM(string(b))
}

// ParseVmHWM reads the VmHWM line of a /proc/PID/status text, in bytes.
func ParseVmHWM(status string) (int64, error) {
	for l := range strings.SplitSeq(status, "\n") {
		rest, ok := strings.CutPrefix(l, "VmHWM:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("/proc status: odd VmHWM line %q", l)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc status: %w", err)
		}
		return kb * 1024, nil
	}
	return 0, errors.New("/proc status: no VmHWM")
}

// OpenFDs counts the file descriptors process pid has open (Linux only).
func OpenFDs(pid int) (int, error) {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	return len(ents), err
}
