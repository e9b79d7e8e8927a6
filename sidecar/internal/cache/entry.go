package cache

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/router"
)

// entry is one kept answer. Everything but the atomics is set before the
// entry is stored and never changed: readers share it without locks.
type entry struct {
	tpl      dnswire.Template
	kind     kind
	servfail bool

	// Clock times, in nanoseconds.
	stored     int64
	expires    int64 // fresh before this
	staleUntil int64 // may be served stale before this; expires when it may not
	prefetchAt int64 // a hot entry is refreshed from this time on

	// recheck: after a failed refresh, until this time the entry is served
	// stale without asking the upstream (RFC 8767 §5).
	recheck atomic.Int64
	// For prefetch: asks with no gap longer than the window, the latest,
	// and whether a refresh was started.
	hits       atomic.Int32
	lastHit    atomic.Int64
	refreshing atomic.Bool
}

// keep is how long otter holds the entry: its lifetime and stale window.
func (e *entry) keep() time.Duration { return time.Duration(e.staleUntil - e.stored) }

func (e *entry) fresh(now int64) bool { return now < e.expires }

// servableStale reports whether the entry has expired and may stand in for
// a failed refresh.
func (e *entry) servableStale(now int64) bool {
	return e != nil && now >= e.expires && now < e.staleUntil
}

// write appends the entry's answer for q: TTLs counted down, or the stale
// TTL and EDE 3.
func (e *entry) write(dst []byte, q *dnswire.Msg, now int64, stale bool, udpSize uint16) []byte {
	o := dnswire.WriteOptions{UDPSize: udpSize}
	if stale {
		o.FixTTL, o.TTL, o.HasEDE, o.EDE = true, staleTTL, true, dnswire.EDEStaleAnswer
	} else {
		o.Age = uint32(max(0, now-e.stored) / int64(time.Second))
	}
	return e.tpl.AppendTo(dst, q, o)
}

// newEntry builds the entry of ans, the upstream's answer to q (of route
// rt), received now; nil when it must not be kept.
func (c *Cache) newEntry(q, ans *dnswire.Msg, rt *router.Route, now int64) *entry {
	k, life, ok := c.lifetime(q, ans)
	if !ok {
		return nil
	}
	tpl, err := dnswire.NewTemplate(ans, uint32(min(life/time.Second, math.MaxUint32)))
	if err != nil {
		c.m.drops.Inc()
		return nil
	}
	e := &entry{tpl: tpl, kind: k, servfail: ans.Rcode() == dnswire.RcodeServerFailure, stored: now}
	e.expires = now + int64(life)
	e.staleUntil = e.expires
	if c.opts.StaleMax > 0 && !e.servfail && !c.excluded(q, rt) {
		e.staleUntil += int64(c.opts.StaleMax)
	}
	lead := max(life*time.Duration(c.opts.PrefetchPercent)/100, time.Second)
	e.prefetchAt = e.expires - int64(lead)
	return e
}

// lifetime decides, as CoreDNS's cache does, whether ans may be kept and for
// how long:
//   - only a well-formed answer to q's very question (the upstream checked
//     already; an answer that fails here is counted as a drop);
//   - not a truncated one, nor one with another rcode than NOERROR,
//     NXDOMAIN or SERVFAIL;
//   - a positive answer for its smallest TTL (all sections, the OPT
//     record aside), capped by MaxTTL;
//   - a negative one (NXDOMAIN, or NOERROR without answer records) only
//     with an SOA in its authority section, for the smaller of that
//     SOA's TTL and MINIMUM and the other records' TTLs (RFC 2308 §5),
//     capped by MaxNegativeTTL;
//   - either at least MinTTL, and not at all when that leaves 0;
//   - an upstream's SERVFAIL for ServfailTTL (RFC 2308 §7.1).
func (c *Cache) lifetime(q, ans *dnswire.Msg) (kind, time.Duration, bool) {
	if !ans.Valid() || !ans.Answers(q) {
		c.m.drops.Inc()
		return 0, 0, false
	}
	if ans.Truncated() {
		return 0, 0, false
	}
	switch ans.Rcode() {
	case dnswire.RcodeServerFailure:
		return denial, c.opts.ServfailTTL, c.opts.ServfailTTL > 0
	case dnswire.RcodeSuccess, dnswire.RcodeNameError:
	default:
		return 0, 0, false
	}
	least, soa := uint32(math.MaxUint32), false
	for rr := range ans.Records() {
		if rr.Type == dnswire.TypeOPT {
			continue
		}
		ttl := rr.TTL
		if rr.Section == dnswire.SectionAuthority && rr.Type == dnswire.TypeSOA {
			if minimum, ok := ans.SOAMinimum(rr); ok {
				soa, ttl = true, min(ttl, minimum)
			}
		}
		least = min(least, ttl)
	}
	k, ceiling := success, c.opts.MaxTTL
	if ans.Rcode() == dnswire.RcodeNameError || ans.ANCount == 0 {
		if !soa {
			return 0, 0, false
		}
		k, ceiling = denial, c.opts.MaxNegativeTTL
	}
	life := max(min(time.Duration(least)*time.Second, ceiling), c.opts.MinTTL)
	return k, life, life > 0
}
