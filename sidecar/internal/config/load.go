package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"

	"github.com/caarlos0/env/v9"
)

// Load builds the Config from the command-line arguments (os.Args[1:]) and
// the environment (os.Environ()). It reads nothing else from the process, so
// tests call it with tables of arguments and environments.
//
// A flag wins over its variable; an empty value means the default (except
// ADMIN_ADDRESS, where empty disables the admin listener). Every value is
// validated here: the error names the variable or flag that supplied the bad
// value, and the value, on one line. With -h or --help, Load returns ErrHelp;
// the command prints its help (Usage writes the settings' part of it).
func Load(args, environ []string, opts ...Option) (*Config, error) {
	l := newLoader(environ, opts)
	if err := l.parseFlags(args); err != nil {
		return nil, err
	}
	c, err := l.parse()
	if err != nil {
		return nil, err
	}
	if err := l.crossCheck(c); err != nil {
		return nil, err
	}
	l.warn(c)
	return c, nil
}

// Option adjusts Load.
type Option func(*options)

type options struct {
	flags []func(*flag.FlagSet)
}

// WithFlags lets a subcommand (such as `dot-sidecar wait --timeout=60s`)
// define flags of its own beside the settings' flags, so that it reads
// ADMIN_ADDRESS and the rest through Load like the server does. Defining a
// flag that a setting already has panics, as flag.FlagSet does.
func WithFlags(define func(fs *flag.FlagSet)) Option {
	return func(o *options) { o.flags = append(o.flags, define) }
}

// loader holds the raw values, after flags have overridden variables, and
// where each came from.
type loader struct {
	values   map[string]string // by variable name
	fromFlag map[string]bool   // variable name → value came from its flag
	flagErr  error
	errs     []error
	opts     options
}

// newLoader starts from the environment; parseFlags then lays the flags
// over it.
func newLoader(environ []string, opts []Option) *loader {
	l := &loader{
		values:   make(map[string]string),
		fromFlag: make(map[string]bool),
	}
	for _, o := range opts {
		o(&l.opts)
	}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			l.values[k] = v // later entries win, as in the process environment
		}
	}
	return l
}

// source names what supplied a setting's value, for error messages.
func (l *loader) source(s setting) string {
	if l.fromFlag[s.Env] {
		return "--" + s.Flag
	}
	return s.Env
}

// raw returns the value as the operator gave it, or the default.
func (l *loader) raw(s setting) string {
	v, ok := l.values[s.Env]
	if !ok || v == "" && !s.emptyOK {
		return s.Default
	}
	return v
}

// explicit reports whether the operator set the setting (an empty value
// counts only where it does not mean the default).
func (l *loader) explicit(s setting) bool {
	v, ok := l.values[s.Env]
	return ok && (v != "" || s.emptyOK)
}

func (l *loader) isPresent(s setting) bool {
	_, ok := l.values[s.Env]
	return ok
}

func (l *loader) fail(s setting, reason error) {
	l.errs = append(l.errs, &SettingError{Name: l.source(s), Value: l.raw(s), Reason: reason})
}

// flagValue collects a flag's raw value into the loader, where it overrides
// the variable before caarlos0/env parses everything in one pass: flags and
// variables share every parser and check.
type flagValue struct {
	l    *loader
	s    setting
	seen bool
}

func (f *flagValue) String() string { return "" }

func (f *flagValue) IsBoolFlag() bool { return f.s.isBool() }

func (f *flagValue) Set(v string) error {
	switch {
	case !f.seen:
		f.l.values[f.s.Env] = v
	case f.s.isList():
		f.l.values[f.s.Env] += f.s.sep + v
	default:
		f.l.flagErr = &SettingError{Name: "--" + f.s.Flag, Value: v, Reason: errors.New("given more than once")}
		return f.l.flagErr
	}
	f.seen = true
	f.l.fromFlag[f.s.Env] = true
	return nil
}

func (l *loader) parseFlags(args []string) error {
	fs := flag.NewFlagSet("dot-sidecar", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	for _, s := range settings() {
		fs.Var(&flagValue{l: l, s: s}, s.Flag, s.Help)
	}
	for _, define := range l.opts.flags {
		define(fs)
	}
	if err := fs.Parse(args); err != nil {
		switch {
		case errors.Is(err, flag.ErrHelp):
			return ErrHelp
		case l.flagErr != nil:
			return l.flagErr
		}
		return fmt.Errorf("%w (see --help)", DoubleDash(err))
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (settings are --name=value flags; see --help)", fs.Arg(0))
	}
	return nil
}

// parse runs caarlos0/env over the merged values, then checks each field.
func (l *loader) parse() (*Config, error) {
	c := new(Config)
	funcs := make(map[reflect.Type]env.ParserFunc)
	own := parsers()
	for t, p := range own {
		funcs[t] = env.ParserFunc(p)
	}
	byField := make(map[string]setting)
	for _, s := range settings() {
		byField[reflect.TypeFor[Config]().Field(s.index).Name] = s
	}
	failed := make(map[string]bool)
	err := env.ParseWithOptions(c, env.Options{Environment: l.values, FuncMap: funcs})
	if err != nil {
		var agg env.AggregateError
		if !errors.As(err, &agg) {
			return nil, err
		}
		for _, e := range agg.Errors {
			var pe env.ParseError
			if !errors.As(e, &pe) {
				return nil, e
			}
			s, ok := byField[pe.Name]
			if !ok {
				return nil, e
			}
			reason := pe.Err
			if p, ok := own[s.typ]; ok {
				if _, perr := p(l.raw(s)); perr != nil {
					reason = perr
				}
			}
			failed[s.Env] = true
			l.fail(s, reason)
		}
	}
	v := reflect.ValueOf(c).Elem()
	for _, s := range settings() {
		if failed[s.Env] {
			continue
		}
		f := v.Field(s.index)
		if s.emptyOK && l.isPresent(s) && l.values[s.Env] == "" {
			f.SetZero()
		}
		if err := checkValid(s, f); err != nil {
			l.fail(s, err)
			continue
		}
		if check := domainChecks[s.Env]; check != nil {
			if err := check(c, l.raw(s)); err != nil {
				l.fail(s, err)
			}
		}
	}
	c.bindAddressExplicit = l.explicit(l.setting("BIND_ADDRESS"))
	c.sources = make(map[string]source)
	for _, s := range settings() {
		c.sources[s.Env] = source{name: l.source(s), value: l.raw(s)}
	}
	if len(l.errs) > 0 {
		return nil, joinOneLine(l.errs)
	}
	return c, nil
}

// domainChecks validate what a type and a `valid` tag cannot express. They
// may normalise the field.
var domainChecks = map[string]func(c *Config, raw string) error{
	"DOT_ADDRESS": func(c *Config, raw string) error {
		a, err := parseIP(strings.TrimSpace(raw))
		c.DoTAddress = a
		return err
	},
	"DOT_SERVER_NAME": func(c *Config, _ string) error {
		name, err := parseServerName(strings.TrimSpace(c.DoTServerName))
		c.DoTServerName = name
		return err
	},
	// LOG_FILE is opened by NewLogger, after Load; a path that cannot work
	// is reported here with the other settings.
	"LOG_FILE": func(c *Config, _ string) error {
		if c.LogFile == "" {
			return nil
		}
		if fi, err := os.Stat(c.LogFile); err == nil && fi.IsDir() {
			return errors.New("is a directory")
		}
		dir := filepath.Dir(c.LogFile)
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return fmt.Errorf("directory %s does not exist", dir)
		}
		return nil
	},
	"CLUSTER_DOMAIN": func(c *Config, _ string) error {
		if c.ClusterDomain == "" {
			return nil
		}
		z, err := parseClusterDomain(c.ClusterDomain)
		c.ClusterDomain = z
		return err
	},
	"ADMIN_ADDRESS": func(c *Config, _ string) error {
		if c.AdminAddress == "" {
			return nil
		}
		return checkAdminAddress(c.AdminAddress)
	},
}

// checkAdminAddress accepts [IP]:PORT. A hostname is refused: in a pod whose
// DNS goes through this very sidecar, resolving it at start would be circular.
func checkAdminAddress(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want [IP]:PORT such as :9253 or 127.0.0.1:9253")
	}
	if host != "" {
		if _, err := netip.ParseAddr(host); err != nil {
			return fmt.Errorf("host %q must be an IP literal, or empty for all addresses", host)
		}
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("port %q must be 1-65535", port)
	}
	return nil
}

func (l *loader) setting(env string) setting { return settingNamed(env) }

// crossCheck validates settings against each other. The error blames the
// setting the operator gave explicitly, so it points at the line to change.
func (l *loader) crossCheck(c *Config) error {
	grace, lame := l.setting("SHUTDOWN_GRACE"), l.setting("SHUTDOWN_LAMEDUCK")
	if c.ShutdownGrace <= c.ShutdownLameduck {
		if l.explicit(lame) && !l.explicit(grace) {
			l.fail(lame, fmt.Errorf("must be less than %s (%s)", l.source(grace), c.ShutdownGrace))
		} else {
			l.fail(grace, fmt.Errorf("must exceed %s (%s)", l.source(lame), c.ShutdownLameduck))
		}
	}
	base, qt := l.setting("RETRY_BASE_DELAY"), l.setting("QUERY_TIMEOUT")
	if c.RetryBaseDelay >= c.QueryTimeout {
		if l.explicit(qt) && !l.explicit(base) {
			l.fail(qt, fmt.Errorf("must exceed %s (%s), or no retry could ever fit", l.source(base), c.RetryBaseDelay))
		} else {
			l.fail(base, fmt.Errorf("must be less than %s (%s), or no retry could ever fit", l.source(qt), c.QueryTimeout))
		}
	}
	l.checkCapacity(c)
	pins, pinsFile := l.setting("TLS_PINS"), l.setting("TLS_PINS_FILE")
	if len(c.TLSPins) > 0 && c.TLSPinsFile != "" {
		l.fail(pinsFile, fmt.Errorf("cannot be combined with %s: choose one source of default pins", l.source(pins)))
	}
	allowed := c.PlaintextAllowedCIDRs
	for _, r := range c.Routes {
		if err := checkPlaintext(r.Upstreams, allowed); err != nil {
			l.fail(l.setting("ROUTES"), fmt.Errorf("route %s: %w", r.Zone, err))
			break
		}
	}
	if err := checkPlaintext(c.ClusterDNS.Upstreams, allowed); err != nil {
		l.fail(l.setting("CLUSTER_DNS"), err)
	}
	l.checkCache(c)
	if len(l.errs) > 0 {
		return joinOneLine(l.errs)
	}
	return nil
}

// checkCapacity keeps admission within what an upstream's connections
// carry: past UPSTREAM_POOL_SIZE × UPSTREAM_MAX_INFLIGHT, queries admitted
// would wait for a connection slot, where slow names starve the others and
// the wait looks like the upstream's fault, rather than be answered at once
// or make room by giving up on old ones (MAX_INFLIGHT).
func (l *loader) checkCapacity(c *Config) {
	maxIn, pool, perConn := l.setting("MAX_INFLIGHT"), l.setting("UPSTREAM_POOL_SIZE"), l.setting("UPSTREAM_MAX_INFLIGHT")
	capacity := c.UpstreamPoolSize * c.UpstreamMaxInflight
	if c.MaxInflight <= capacity {
		return
	}
	fewer := fmt.Errorf("an upstream's connections then carry %d queries, fewer than %s (%d) admits: lower %s with it",
		capacity, l.source(maxIn), c.MaxInflight, l.source(maxIn))
	switch {
	case l.explicit(pool) && !l.explicit(maxIn):
		l.fail(pool, fmt.Errorf("with %s %d, %w", l.source(perConn), c.UpstreamMaxInflight, fewer))
	case l.explicit(perConn) && !l.explicit(maxIn):
		l.fail(perConn, fmt.Errorf("with %s %d, %w", l.source(pool), c.UpstreamPoolSize, fewer))
	default:
		l.fail(maxIn, fmt.Errorf("must not exceed what an upstream's connections carry, %s × %s (%d × %d = %d)",
			l.source(pool), l.source(perConn), c.UpstreamPoolSize, c.UpstreamMaxInflight, capacity))
	}
}

// warn records settings that are valid but probably not meant.
func (l *loader) warn(c *Config) {
	if len(c.UpstreamList) > 0 {
		var ignored []string
		for _, name := range []string{"DOT_ADDRESS", "DOT_PORT", "DOT_SERVER_NAME"} {
			if s := l.setting(name); l.explicit(s) {
				ignored = append(ignored, l.source(s))
			}
		}
		if len(ignored) > 0 {
			c.warnings = append(c.warnings, fmt.Sprintf("%s ignored: %s replaces it", strings.Join(ignored, ", "), l.source(l.setting("UPSTREAMS"))))
		}
		own := true
		for _, u := range c.UpstreamList {
			own = own && len(u.Pins) > 0
		}
		for _, name := range []string{"TLS_PINS", "TLS_PINS_FILE"} {
			if s := l.setting(name); own && l.explicit(s) {
				c.warnings = append(c.warnings, fmt.Sprintf("%s applies to no upstream: every %s entry has its own pins", l.source(s), l.source(l.setting("UPSTREAMS"))))
			}
		}
	}
	if !c.ReadyRequiresUpstream {
		for _, name := range []string{"READY_FAIL_THRESHOLD", "READY_SUCCESS_THRESHOLD"} {
			if s := l.setting(name); l.explicit(s) {
				c.warnings = append(c.warnings, fmt.Sprintf("%s has no effect unless READY_REQUIRES_UPSTREAM is true", l.source(s)))
			}
		}
	}
	if c.ClusterDNS.Mode == ClusterDNSOff {
		for _, name := range []string{"CLUSTER_DOMAIN", "RESOLV_CONF"} {
			if s := l.setting(name); l.explicit(s) {
				c.warnings = append(c.warnings, fmt.Sprintf("%s has no effect with %s=off", l.source(s), l.source(l.setting("CLUSTER_DNS"))))
			}
		}
	}
	if len(c.PlaintextAllowedCIDRs) > 0 && len(c.Routes) == 0 && c.ClusterDNS.Mode != "" {
		c.warnings = append(c.warnings, fmt.Sprintf("%s has no effect: no ROUTES or CLUSTER_DNS entry sends plaintext to an address of your choosing",
			l.source(l.setting("PLAINTEXT_ALLOWED_CIDRS"))))
	}
	l.warnCache(c)
	if c.DialTimeout > c.QueryTimeout {
		c.warnings = append(c.warnings, fmt.Sprintf("%s (%s) exceeds %s (%s): a query gives up before a slow dial completes",
			l.source(l.setting("DIAL_TIMEOUT")), c.DialTimeout, l.source(l.setting("QUERY_TIMEOUT")), c.QueryTimeout))
	}
}

// multiError reports several bad settings on one line.
type multiError []error

func (m multiError) Error() string {
	parts := make([]string, len(m))
	for i, e := range m {
		parts[i] = e.Error()
	}
	return strings.Join(parts, "; ")
}

func (m multiError) Unwrap() []error { return m }

func joinOneLine(errs []error) error {
	if len(errs) == 1 {
		return errs[0]
	}
	return multiError(errs)
}
