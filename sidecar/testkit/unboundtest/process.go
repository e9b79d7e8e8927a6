package unboundtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// launch picks ports, writes the configuration, starts unbound and waits for
// it to answer. On error the caller kills the process.
func (s *Server) launch(ctx context.Context) error {
	taken := map[int]bool{}
	pick := func(fixed int) (int, error) {
		if fixed != 0 {
			taken[fixed] = true
			return fixed, nil
		}
		for {
			p, err := freePort(s.opts.Address)
			if err != nil {
				return 0, err
			}
			if !taken[p] {
				taken[p] = true
				return p, nil
			}
		}
	}
	dotPort, err := pick(s.opts.Port)
	if err != nil {
		return err
	}
	var plainPort int
	if s.opts.Plain {
		if plainPort, err = pick(s.opts.PlainPort); err != nil {
			return err
		}
	}
	extra := make([]int, s.opts.ExtraDoTPorts)
	s.ExtraAddrs = s.ExtraAddrs[:0]
	for i := range extra {
		if extra[i], err = pick(0); err != nil {
			return err
		}
		s.ExtraAddrs = append(s.ExtraAddrs, net.JoinHostPort(s.opts.Address, strconv.Itoa(extra[i])))
	}
	var httpsPort int
	if s.opts.HTTPS {
		if httpsPort, err = pick(s.opts.HTTPSPort); err != nil {
			return err
		}
	}
	s.Addr = net.JoinHostPort(s.opts.Address, strconv.Itoa(dotPort))
	s.PlainAddr, s.HTTPSAddr = "", ""
	if s.opts.Plain {
		s.PlainAddr = net.JoinHostPort(s.opts.Address, strconv.Itoa(plainPort))
	}
	s.ExtraHTTPSAddrs = s.ExtraHTTPSAddrs[:0]
	if s.opts.HTTPS {
		s.HTTPSAddr = net.JoinHostPort(s.opts.Address, strconv.Itoa(httpsPort))
		for i := range s.opts.ExtraHTTPS {
			s.ExtraHTTPSAddrs = append(s.ExtraHTTPSAddrs, net.JoinHostPort(fmt.Sprintf("127.0.0.%d", i+2), strconv.Itoa(httpsPort)))
		}
	}
	s.ConfigFile = filepath.Join(s.Dir, "unbound.conf")
	if err := os.WriteFile(s.ConfigFile, []byte(s.config(dotPort, plainPort, httpsPort, extra)), 0o644); err != nil {
		return fmt.Errorf("writing config: %w", err)
	}
	bin, err := s.unboundBinary()
	if err != nil {
		return err
	}
	s.LogFile = filepath.Join(s.Dir, "unbound.log")
	if s.logF, err = os.Create(s.LogFile); err != nil {
		return fmt.Errorf("creating log: %w", err)
	}
	// -d -d: stay in the foreground and keep logging to stderr (our file).
	argv := append(append([]string{}, s.opts.Prefix...), bin, "-d", "-d", "-c", s.ConfigFile)
	s.cmd = exec.Command(argv[0], argv[1:]...)
	s.cmd.Stdout, s.cmd.Stderr = s.logF, s.logF
	// Its own process group, so that a Ctrl-C meant for the harness does not
	// race Stop, and a wrapper's children can be killed together.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if s.opts.KillWithParent {
		s.cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := s.cmd.Start(); err != nil {
		_ = s.logF.Close()
		return fmt.Errorf("starting %s: %w", strings.Join(argv, " "), err)
	}
	s.PID = s.cmd.Process.Pid
	s.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		s.waitErr = cmd.Wait()
		close(exited)
	}(s.cmd, s.exited)
	return s.waitReady(ctx)
}

// unboundBinary returns the program to run. Debian ships an AppArmor profile
// for /usr/sbin/unbound that confines it to /etc/unbound; where AppArmor is
// enforcing, a copy in the temporary directory runs unconfined and can read
// its configuration there.
func (s *Server) unboundBinary() (string, error) {
	bin := s.tools.unbound
	if !appArmorEnabled() {
		return bin, nil
	}
	cp := filepath.Join(s.Dir, "unbound")
	if _, err := os.Stat(cp); err == nil {
		return cp, nil
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		return "", fmt.Errorf("copying %s out of AppArmor's reach: %w", bin, err)
	}
	if err := os.WriteFile(cp, data, 0o755); err != nil {
		return "", fmt.Errorf("copying %s out of AppArmor's reach: %w", bin, err)
	}
	return cp, nil
}

func appArmorEnabled() bool {
	b, err := os.ReadFile("/sys/module/apparmor/parameters/enabled")
	return err == nil && strings.HasPrefix(string(b), "Y")
}

// waitReady polls with real queries until one gets the expected answer, the
// process exits, or the start timeout passes.
func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.startTimeout())
	defer cancel()
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		last = s.probe(pctx)
		if last == nil && s.HTTPSAddr != "" {
			last = s.probeHTTPS(pctx)
		}
		pcancel()
		if last == nil {
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("%w before answering: %v", errExited, s.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("unbound at %s not answering: %w (last probe: %v)", s.Addr, ctx.Err(), last)
		case <-tick.C:
		}
	}
}

// Stop terminates unbound, waits for it and removes its directory. It is safe
// to call more than once.
func (s *Server) Stop() error {
	if s.stopped {
		return nil
	}
	s.stopped = true
	err := s.kill()
	if rerr := os.RemoveAll(s.Dir); rerr != nil && err == nil {
		err = rerr
	}
	return err
}

// kill sends SIGTERM, then SIGKILL if unbound has not exited within 5s.
func (s *Server) kill() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	defer func() {
		if s.logF != nil {
			_ = s.logF.Close()
		}
	}()
	select {
	case <-s.exited:
		return nil
	default:
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		return nil
	case <-time.After(5 * time.Second):
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.exited
	return fmt.Errorf("unbound (pid %d) ignored SIGTERM for 5s; killed", s.PID)
}

// Exited is closed when the unbound process has exited.
func (s *Server) Exited() <-chan struct{} { return s.exited }

// LogTail returns the last n lines of unbound's log.
func (s *Server) LogTail(n int) string {
	b, err := os.ReadFile(s.LogFile)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}

// freePort asks the kernel for a port free on both TCP and UDP at addr (or on
// loopback when addr is not local, e.g. inside another namespace).
func freePort(addr string) (int, error) {
	for range 20 {
		l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
		if err != nil {
			host := "127.0.0.1"
			if ip := net.ParseIP(addr); ip != nil && ip.To4() == nil {
				host = "::1"
			}
			if l, err = net.Listen("tcp", net.JoinHostPort(host, "0")); err != nil {
				return 0, fmt.Errorf("picking a free port: %w", err)
			}
			addr = host
		}
		port := l.Addr().(*net.TCPAddr).Port
		u, uerr := net.ListenPacket("udp", net.JoinHostPort(addr, strconv.Itoa(port)))
		_ = l.Close()
		if uerr == nil {
			_ = u.Close()
			return port, nil
		}
	}
	return 0, errors.New("picking a free port: no port free on both TCP and UDP")
}
