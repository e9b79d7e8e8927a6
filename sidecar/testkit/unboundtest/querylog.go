package unboundtest

import (
	"errors"
	"os"
	"strings"
)

// Query is one query as unbound logged it on arrival.
type Query struct {
	Client string // the client's address
	Name   string // fully qualified, as asked (case kept)
	Type   string // "A", "AAAA", ...
}

// Queries returns the queries unbound has received, in order, read from its
// log; the server must have been started with LogQueries. Unbound logs a
// query when it arrives, before answering it, and flushes the line at once:
// every query a client has had an answer to is in the list.
func (s *Server) Queries() ([]Query, error) {
	if !s.opts.LogQueries {
		return nil, errors.New("unboundtest: Queries needs Options.LogQueries")
	}
	b, err := os.ReadFile(s.LogFile)
	if err != nil {
		return nil, err
	}
	return parseQueryLog(string(b)), nil
}

// parseQueryLog reads log-queries lines,
// "[1700000000] unbound[123:0] info: 192.0.2.10 api.example.com. A IN",
// and nothing else (log-replies lines carry more fields).
func parseQueryLog(log string) []Query {
	var qs []Query
	for _, l := range strings.Split(log, "\n") {
		_, rest, ok := strings.Cut(l, "] info: ")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 4 || !strings.HasSuffix(f[1], ".") || (f[3] != "IN" && f[3] != "CH") {
			continue
		}
		qs = append(qs, Query{Client: f[0], Name: f[1], Type: f[2]})
	}
	return qs
}
