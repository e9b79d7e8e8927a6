package config

import (
	"fmt"
	"reflect"
	"strings"
	"time"
)

// StaleExclude is CACHE_STALE_EXCLUDE: the zones whose answers are never
// served stale.
type StaleExclude struct {
	// Cluster (auto): the zones of the cluster route and of every
	// plaintext route, and the private reverse zones. Their names follow
	// the cluster's state (Pods and Services come and go, addresses are
	// reused), so a stale answer for them can be wrong.
	Cluster bool
	// Zones besides those, lower case, without the final dot.
	Zones []string
}

func (s StaleExclude) String() string {
	var parts []string
	if s.Cluster {
		parts = append(parts, "auto")
	}
	parts = append(parts, s.Zones...)
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}

// parseStaleExclude reads CACHE_STALE_EXCLUDE: auto, none, or a list of
// zones, auto among them to keep its zones too.
func parseStaleExclude(s string) (StaleExclude, error) {
	var out StaleExclude
	seen := make(map[string]bool)
	for i, p := range strings.Split(s, ",") {
		p = strings.TrimSpace(p)
		switch lower := strings.ToLower(p); {
		case p == "":
			return StaleExclude{}, fmt.Errorf("entry %d is empty", i+1)
		case lower == "none":
			if strings.Contains(s, ",") {
				return StaleExclude{}, fmt.Errorf("none cannot be combined with zones")
			}
			return StaleExclude{}, nil
		case lower == "auto":
			out.Cluster = true
		case p == ".":
			return StaleExclude{}, fmt.Errorf("the root zone would exclude every name: set CACHE_STALE_MAX=0 to turn serve-stale off")
		default:
			zone, err := parseZoneName(p)
			if err != nil {
				return StaleExclude{}, err
			}
			if seen[zone] {
				return StaleExclude{}, fmt.Errorf("zone %s is listed twice", zone)
			}
			seen[zone] = true
			out.Zones = append(out.Zones, zone)
		}
	}
	return out, nil
}

// maxServfailTTL: RFC 2308 §7.1 allows caching a server failure for five
// minutes at most.
const maxServfailTTL = 5 * time.Minute

// checkCache validates the cache's settings against each other and against
// QUERY_TIMEOUT. With CACHE_SIZE=0 there is no cache, and nothing to check.
func (l *loader) checkCache(c *Config) {
	if c.CacheSize == 0 {
		return
	}
	minTTL, ceiling := l.setting("CACHE_MIN_TTL"), l.setting("CACHE_MAX_TTL")
	for _, name := range []string{"CACHE_MAX_TTL", "CACHE_MAX_NEGATIVE_TTL"} {
		if s := l.setting(name); l.duration(c, s) < time.Second {
			l.fail(s, fmt.Errorf("must be at least 1s: TTLs count whole seconds"))
		}
	}
	if c.CacheMaxNegativeTTL < c.CacheMaxTTL {
		ceiling = l.setting("CACHE_MAX_NEGATIVE_TTL")
	}
	// The default minimum is 0: only a minimum set too high conflicts.
	if c.CacheMinTTL > l.duration(c, ceiling) {
		l.fail(minTTL, fmt.Errorf("must not exceed %s (%s)", l.source(ceiling), l.duration(c, ceiling)))
	}
	if c.CacheServfailTTL > maxServfailTTL {
		l.fail(l.setting("CACHE_SERVFAIL_TTL"), fmt.Errorf("must be at most %s (RFC 2308 §7.1)", maxServfailTTL))
	}
	st, qt := l.setting("CACHE_STALE_CLIENT_TIMEOUT"), l.setting("QUERY_TIMEOUT")
	switch {
	case c.CacheStaleMax == 0 || c.CacheStaleClientTimeout < c.QueryTimeout:
	case !l.explicit(st):
		// The default (RFC 8767's 1.8 s, for clients that give up after
		// 2) follows a shorter QUERY_TIMEOUT.
		c.CacheStaleClientTimeout = c.QueryTimeout * 9 / 10
	default:
		l.blame(st, qt, fmt.Errorf("must be less than %s (%s), or a stale answer would come after the client gave up", l.source(qt), c.QueryTimeout),
			fmt.Errorf("must exceed %s (%s), or a stale answer would come after the client gave up", l.source(st), c.CacheStaleClientTimeout))
	}
}

// duration reads the cache TTL setting s of c.
func (l *loader) duration(c *Config, s setting) time.Duration {
	return reflect.ValueOf(c).Elem().Field(s.index).Interface().(time.Duration)
}

// blame reports a conflict between settings a and b against the one the
// operator set explicitly, a unless only b was: the error points at the
// line to change. A setting already reported is not reported twice.
func (l *loader) blame(a, b setting, aReason, bReason error) {
	s, reason := a, aReason
	if l.explicit(b) && !l.explicit(a) {
		s, reason = b, bReason
	}
	for _, err := range l.errs {
		if se, ok := err.(*SettingError); ok && se.Name == l.source(s) {
			return
		}
	}
	l.fail(s, reason)
}

// warnCache records cache settings that have no effect: any with
// CACHE_SIZE=0, serve-stale's with CACHE_STALE_MAX=0, prefetch's with
// CACHE_PREFETCH=0.
func (l *loader) warnCache(c *Config) {
	off := func(cause string, names ...string) {
		for _, name := range names {
			if s := l.setting(name); l.explicit(s) {
				c.warnings = append(c.warnings, fmt.Sprintf("%s has no effect with %s=0", l.source(s), l.source(l.setting(cause))))
			}
		}
	}
	switch {
	case c.CacheSize == 0:
		off("CACHE_SIZE", "CACHE_MAX_TTL", "CACHE_MIN_TTL", "CACHE_MAX_NEGATIVE_TTL", "CACHE_SERVFAIL_TTL", "CACHE_STALE_MAX",
			"CACHE_STALE_EXCLUDE", "CACHE_STALE_CLIENT_TIMEOUT", "CACHE_PREFETCH", "CACHE_PREFETCH_WINDOW", "CACHE_PREFETCH_PERCENT")
		return
	case c.CacheStaleMax == 0:
		off("CACHE_STALE_MAX", "CACHE_STALE_EXCLUDE", "CACHE_STALE_CLIENT_TIMEOUT")
	}
	if c.CachePrefetch == 0 {
		off("CACHE_PREFETCH", "CACHE_PREFETCH_WINDOW", "CACHE_PREFETCH_PERCENT")
	}
}
