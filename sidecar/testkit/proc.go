package testkit

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// PeakRSS returns VmHWM of process pid: its resident set's high-water mark
// since it started, in bytes (Linux only).
func PeakRSS(pid int) (int64, error) { return ProcSize(pid, "VmHWM") }

// ProcSize returns a size field of process pid's /proc/PID/status (VmRSS,
// VmHWM, ...), in bytes (Linux only).
func ProcSize(pid int, field string) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	return ParseProcSize(string(b), field)
}

// ParseProcSize reads the line of a size field of a /proc/PID/status text,
// in bytes.
func ParseProcSize(status, field string) (int64, error) {
	for l := range strings.SplitSeq(status, "\n") {
		rest, ok := strings.CutPrefix(l, field+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("/proc status: odd %s line %q", field, l)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc status: %w", err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("/proc status: no %s", field)
}

// OpenFDs counts the file descriptors process pid has open (Linux only).
func OpenFDs(pid int) (int, error) {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	return len(ents), err
}
