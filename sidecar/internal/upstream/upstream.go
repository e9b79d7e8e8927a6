// Package upstream sends DNS queries to encrypted resolvers. Everything that
// talks to the network toward an upstream lives here: the DNS-over-TLS client
// with its pool of pipelined connections, TLS verification and pinning, the
// trust files it is verified against, the group that chooses among several
// upstreams, retries and health checks.
//
// Data flows one way: server → (cache) → Group → Upstream → connection.
// Messages cross this package's boundary as dnswire.Msg: the query as the
// server parsed it, the answer as the connection that read it parsed and
// matched it, so that a relay never decodes what it only forwards, nor reads
// the same bytes twice.
package upstream

import (
	"context"

	"github.com/dot-sidecar/dot-sidecar/sidecar/internal/dnswire"
)

// Upstream answers DNS queries. The DNS-over-TLS client, the Group that fails
// over between several of them, and later an answer cache, a router by zone
// or a DNS-over-HTTPS client all satisfy it, so each can wrap another.
type Upstream interface {
	// Exchange sends q, a query that dnswire.Parse accepted whole, with
	// exactly one question, and returns its answer: parsed whole, QR set,
	// the query's question and the query's own ID. Anything else from the
	// upstream is never returned as an answer: an answer to the query that
	// does not parse is ErrBadResponse, one to another query is dropped.
	//
	// Exchange does not keep q, nor change its bytes; the caller owns the
	// answer and its bytes. It returns an error wrapping one of this
	// package's sentinels (or ctx's error) when no answer could be had
	// before ctx is done; a q it cannot send is ErrBadQuery.
	Exchange(ctx context.Context, q dnswire.Msg) (dnswire.Msg, error)
	// Name identifies the upstream in logs and metric labels.
	Name() string
	// Close releases connections; in-flight Exchanges fail with ErrClosed.
	Close() error
}
