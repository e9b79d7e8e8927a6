package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// openConns counts the TCP connections that process pid holds established to
// port (the upstream's DoT port): the sockets among its file descriptors that
// /proc/net/tcp{,6} lists as ESTABLISHED with that remote port. Unlike the
// SYN counter this is a snapshot; peakConns samples it during a run to check
// a relay against its pool size.
func openConns(pid, port int) (int, error) {
	inodes, err := socketInodes(pid)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(table)
		if err != nil {
			if os.IsNotExist(err) {
				continue
			}
			return 0, err
		}
		c, err := countEstablished(bufio.NewScanner(f), port, inodes)
		f.Close()
		if err != nil {
			return 0, fmt.Errorf("%s: %w", table, err)
		}
		n += c
	}
	return n, nil
}

// socketInodes returns the inodes of the sockets among pid's descriptors.
func socketInodes(pid int) (map[string]bool, error) {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	inodes := make(map[string]bool, len(ents))
	for _, e := range ents {
		link, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed since ReadDir
		}
		if ino, ok := strings.CutPrefix(link, "socket:["); ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		}
	}
	return inodes, nil
}

// countEstablished reads a /proc/net/tcp table: "sl local_address
// rem_address st ... inode" with addresses as HEX_IP:HEX_PORT and state 01
// meaning ESTABLISHED.
func countEstablished(sc *bufio.Scanner, port int, inodes map[string]bool) (int, error) {
	want := fmt.Sprintf(":%04X", port)
	n := 0
	first := true
	for sc.Scan() {
		if first { // header
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			continue
		}
		if f[3] == "01" && strings.HasSuffix(f[2], want) && inodes[f[9]] {
			n++
		}
	}
	return n, sc.Err()
}

// peakConns samples openConns every interval until ctx ends and returns the
// largest count seen.
func peakConns(ctx context.Context, pid, port int, interval time.Duration) (int, error) {
	peak := 0
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		n, err := openConns(pid, port)
		if err != nil {
			return peak, err
		}
		peak = max(peak, n)
		select {
		case <-ctx.Done():
			return peak, nil
		case <-tick.C:
		}
	}
}
