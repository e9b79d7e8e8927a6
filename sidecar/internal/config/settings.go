package config

import (
	"cmp"
	"fmt"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
)

// setting describes one Config field, read from its tags.
type setting struct {
	index   int
	typ     reflect.Type
	Env     string // BIND_PORT
	Flag    string // bind-port
	Default string
	Help    string
	valid   string
	emptyOK bool
	sep     string // joins a repeated list flag's values
}

// settingNamed returns the setting of a variable; a name that is not one is
// a bug.
func settingNamed(env string) setting {
	for _, s := range settings() {
		if s.Env == env {
			return s
		}
	}
	panic("config: no setting " + env)
}

// isList reports whether the setting is a comma-separated list, whose flag
// may be repeated.
func (s setting) isList() bool { return s.typ.Kind() == reflect.Slice }

func (s setting) isBool() bool { return s.typ.Kind() == reflect.Bool }

// flagName turns a variable name into its flag: BIND_ADDRESS → bind-address.
func flagName(env string) string {
	return strings.ToLower(strings.ReplaceAll(env, "_", "-"))
}

var settings = sync.OnceValue(func() []setting {
	t := reflect.TypeFor[Config]()
	var out []setting
	for i := range t.NumField() {
		f := t.Field(i)
		name, ok := f.Tag.Lookup("env")
		if !ok || !f.IsExported() {
			continue
		}
		def, ok := f.Tag.Lookup("envDefault")
		if !ok {
			// Help and docs/settings.md show a default for every setting.
			panic("config: field " + f.Name + " lacks an envDefault tag")
		}
		out = append(out, setting{
			index:   i,
			typ:     f.Type,
			Env:     name,
			Flag:    flagName(name),
			Default: def,
			Help:    f.Tag.Get("help"),
			valid:   f.Tag.Get("valid"),
			emptyOK: f.Tag.Get("emptyOK") == "true",
			sep:     cmp.Or(f.Tag.Get("sep"), ","),
		})
	}
	return out
})

// parsers convert a raw value into a field of the given type. They are
// handed to caarlos0/env as its FuncMap, and also give the reason of a parse
// error: env prefers a type's own UnmarshalText (netip.Addr) and its own
// duration parser, whose messages are less helpful to an operator.
func parsers() map[reflect.Type]func(string) (any, error) {
	return map[reflect.Type]func(string) (any, error){
		reflect.TypeFor[int](): func(s string) (any, error) {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil {
				return nil, fmt.Errorf("must be an integer")
			}
			return n, nil
		},
		reflect.TypeFor[bool](): func(s string) (any, error) {
			b, err := strconv.ParseBool(strings.TrimSpace(s))
			if err != nil {
				return nil, fmt.Errorf("must be true or false")
			}
			return b, nil
		},
		reflect.TypeFor[time.Duration](): func(s string) (any, error) {
			d, err := time.ParseDuration(strings.TrimSpace(s))
			if err != nil {
				return nil, fmt.Errorf("must be a duration such as 500ms, 2s or 1m")
			}
			return d, nil
		},
		reflect.TypeFor[netip.Addr](): func(s string) (any, error) {
			a, err := parseIP(strings.TrimSpace(s))
			if err != nil {
				return nil, err
			}
			return a, nil
		},
		reflect.TypeFor[[]netip.Addr]():   func(s string) (any, error) { return parseBindList(s) },
		reflect.TypeFor[[][32]byte]():     func(s string) (any, error) { return parsePinList(s) },
		reflect.TypeFor[[]Upstream]():     func(s string) (any, error) { return ParseUpstreams(s) },
		reflect.TypeFor[[]Route]():        func(s string) (any, error) { return ParseRoutes(s) },
		reflect.TypeFor[ClusterDNS]():     func(s string) (any, error) { return parseClusterDNS(s) },
		reflect.TypeFor[[]netip.Prefix](): func(s string) (any, error) { return parseCIDRList(s) },
		reflect.TypeFor[StaleExclude]():   func(s string) (any, error) { return parseStaleExclude(s) },
	}
}

// parseBindList reads BIND_ADDRESS: IP literals to listen on. Unlike an
// upstream address, the unspecified address (0.0.0.0, ::) is allowed.
func parseBindList(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	seen := make(map[netip.Addr]bool)
	for i, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		if p == "" {
			return nil, fmt.Errorf("address %d is empty", i+1)
		}
		a, err := netip.ParseAddr(p)
		if err != nil {
			if looksLikeHostname(p) {
				return nil, fmt.Errorf("%q is a hostname; listen addresses must be IP literals", p)
			}
			return nil, fmt.Errorf("%q is not an IP address", p)
		}
		if a.IsMulticast() {
			return nil, fmt.Errorf("%s is a multicast address", a)
		}
		if seen[a] {
			return nil, fmt.Errorf("%s is listed twice", a)
		}
		seen[a] = true
		out = append(out, a)
	}
	return out, nil
}

// checkValid applies a setting's `valid` tag to the parsed field value; it
// lower-cases enumerated values in place.
func checkValid(s setting, v reflect.Value) error {
	rule := s.valid
	switch {
	case rule == "":
		return nil
	case rule == ">0":
		if v.Int() <= 0 {
			return fmt.Errorf("must be greater than 0")
		}
	case rule == ">=0":
		if v.Int() < 0 {
			return fmt.Errorf("must not be negative")
		}
	case strings.Contains(rule, ".."):
		lo, hi, _ := strings.Cut(rule, "..")
		min, err := strconv.ParseInt(lo, 10, 64)
		if err != nil {
			panic("config: bad valid tag on " + s.Env)
		}
		n := v.Int()
		if hi == "" {
			if n < min {
				return fmt.Errorf("must be at least %d", min)
			}
			return nil
		}
		max, err := strconv.ParseInt(hi, 10, 64)
		if err != nil {
			panic("config: bad valid tag on " + s.Env)
		}
		if n < min || n > max {
			return fmt.Errorf("must be %d-%d", min, max)
		}
	case strings.Contains(rule, "|"):
		choices := strings.Split(rule, "|")
		val := strings.ToLower(strings.TrimSpace(v.String()))
		for _, c := range choices {
			if val == c {
				v.SetString(val)
				return nil
			}
		}
		return fmt.Errorf("must be one of %s", strings.Join(choices, ", "))
	default:
		panic("config: bad valid tag on " + s.Env)
	}
	return nil
}
