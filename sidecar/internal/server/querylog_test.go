package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// At debug, each query gets one line whose fields name its protocol and its
// type by mnemonic (RFC 3597's TYPEnnn for a type without one).
func TestQueryLog(t *testing.T) {
	var buf syncBuffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ts := startServer(t, Options{Logger: log})
	want := map[string]bool{}
	for _, network := range []string{"udp", "tcp"} {
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA, 65280} {
			ask(t, network, ts.addr(t, network, loopback4), newQuery("log.example.", qt))
			want[network+" "+map[uint16]string{dns.TypeA: "A", dns.TypeAAAA: "AAAA", 65280: "TYPE65280"}[qt]] = true
		}
	}
	// The line is written after the answer; once the listeners have shut
	// down, every line is in.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var rec struct {
			Msg, Proto, Qtype, Qname, Rcode string
			Duration                        any // its form is the logger's (config)
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("%v: %s", err, line)
		}
		if rec.Msg != "query" {
			continue
		}
		if rec.Qname != "log.example." || rec.Rcode != "NOERROR" || rec.Duration == nil {
			t.Errorf("query line %s", line)
		}
		got[rec.Proto+" "+rec.Qtype] = true
	}
	for k := range want {
		if !got[k] {
			t.Errorf("no query line with proto and qtype %q; got %v", k, got)
		}
	}
}
