package config_test

import (
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
)

// TestCacheOff: without a cache, its settings are not checked against each
// other nor against QUERY_TIMEOUT; they are only warned about.
func TestCacheOff(t *testing.T) {
	c, err := config.Load(nil, []string{"CACHE_SIZE=0", "QUERY_TIMEOUT=1s", "DIAL_TIMEOUT=1s", "CACHE_STALE_CLIENT_TIMEOUT=1s", "CACHE_MIN_TTL=2h"})
	if err != nil {
		t.Fatal(err)
	}
	if c.CacheSize != 0 || len(c.Warnings()) != 2 {
		t.Errorf("CacheSize %d, warnings %q", c.CacheSize, c.Warnings())
	}
}

// TestStaleClientTimeoutFollowsQueryTimeout: the default client response
// timer stays below a QUERY_TIMEOUT shorter than it.
func TestStaleClientTimeoutFollowsQueryTimeout(t *testing.T) {
	for qt, want := range map[string]time.Duration{"1s": 900 * time.Millisecond, "2s": 1800 * time.Millisecond, "5s": 1800 * time.Millisecond} {
		c, err := config.Load([]string{"--query-timeout=" + qt}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if c.CacheStaleClientTimeout != want {
			t.Errorf("QUERY_TIMEOUT %s: CACHE_STALE_CLIENT_TIMEOUT %v, want %v", qt, c.CacheStaleClientTimeout, want)
		}
	}
}

func TestStaleExcludeString(t *testing.T) {
	for in, want := range map[string]string{"auto": "auto", "none": "none", "auto,Corp.Example.": "auto,corp.example", "a.example,b.example": "a.example,b.example"} {
		c, err := config.Load(nil, []string{"CACHE_STALE_EXCLUDE=" + in})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.CacheStaleExclude.String(); got != want {
			t.Errorf("%q: String() = %q, want %q", in, got, want)
		}
	}
}
