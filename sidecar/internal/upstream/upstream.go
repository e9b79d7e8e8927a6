// Package upstream sends DNS queries to encrypted resolvers. Everything that
// talks to the network toward an upstream lives here: the DNS-over-TLS client
// with its pool of pipelined connections, TLS verification and pinning, the
// group that chooses among several upstreams, retries and health checks.
//
// Data flows one way: server → (cache) → Group → Upstream → connection.
// Messages cross this package's boundary in wire format so that a relay never
// has to decode and re-encode what it only forwards.
package upstream

import "context"

// Upstream answers DNS queries. The DNS-over-TLS client, the Group that fails
// over between several of them, and later an answer cache or a DNS-over-HTTPS
// client all satisfy it, so each can wrap another.
type Upstream interface {
	// Exchange sends query, a complete DNS message in wire format, and returns
	// the response in wire format carrying the query's own ID. Exchange does
	// not keep or modify query after it returns; the caller owns the result.
	// It returns an error wrapping one of this package's sentinels (or ctx's
	// error) when no response could be had before ctx is done.
	Exchange(ctx context.Context, query []byte) ([]byte, error)
	// Name identifies the upstream in logs and metric labels.
	Name() string
	// Close releases connections; in-flight Exchanges fail with ErrClosed.
	Close() error
}
