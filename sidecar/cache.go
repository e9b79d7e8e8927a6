package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/cache"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/config"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/server"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/upstream"
)

// newFront puts the answer cache in front of the router, unless CACHE_SIZE
// is 0: it returns what the listeners relay their misses through (the
// cache, or the router itself) and the cache their read loops answer hits
// from (nil without one). Closing the first closes the router too.
func newFront(cfg *config.Config, r *routing, log *slog.Logger, reg prometheus.Registerer) (upstream.Upstream, server.Cache, error) {
	if cfg.CacheSize == 0 {
		log.Info("cache off", "cache_size", 0)
		return r.router, nil, nil
	}
	c, err := cache.New(cache.Options{
		Upstream:            r.router,
		Size:                cfg.CacheSize,
		MaxTTL:              cfg.CacheMaxTTL,
		MinTTL:              cfg.CacheMinTTL,
		MaxNegativeTTL:      cfg.CacheMaxNegativeTTL,
		ServfailTTL:         cfg.CacheServfailTTL,
		StaleMax:            cfg.CacheStaleMax,
		StaleClientTimeout:  cfg.CacheStaleClientTimeout,
		StaleExclude:        cfg.CacheStaleExclude.Zones,
		StaleExcludeCluster: cfg.CacheStaleExclude.Cluster,
		PrefetchHits:        cfg.CachePrefetch,
		PrefetchWindow:      cfg.CachePrefetchWindow,
		PrefetchPercent:     cfg.CachePrefetchPercent,
		QueryTimeout:        cfg.QueryTimeout,
		UDPSize:             uint16(cfg.UDPMaxSize),
		Logger:              log,
		Registerer:          reg,
	})
	if err != nil {
		return nil, nil, err
	}
	log.Info("cache", "cache_size", cfg.CacheSize, "stale_max", cfg.CacheStaleMax,
		"stale_exclude", cfg.CacheStaleExclude.String(), "prefetch", cfg.CachePrefetch)
	return c, c, nil
}
