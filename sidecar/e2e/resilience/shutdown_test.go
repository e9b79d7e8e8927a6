package resilience

import (
	"fmt"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit"
	"github.com/dot-sidecar/dot-sidecar/sidecar/testkit/dnstest"
)

// SIGTERM with hundreds of queries in flight: /readyz turns 503 at once,
// the listeners keep answering through the lame duck, every query in flight
// gets its real answer before the process exits 0 within SHUTDOWN_GRACE.
func TestSIGTERMAnswersInFlight(t *testing.T) {
	tests := []struct {
		name     string
		lameduck time.Duration
	}{
		// Without a lame duck the listeners stop at once: the queries in
		// flight must still be answered on their way out.
		{"no lame duck", 0},
		{"lame duck", 1500 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			const (
				udpQueries = 200
				tcpQueries = 100
				delay      = time.Second
				grace      = 8 * time.Second
			)
			srv := dnstest.New(t, dnstest.Options{})
			srv.Behavior.SetDelay(delay)
			s := startSidecar(t, append(upstreamEnv(t, srv),
				fmt.Sprintf("SHUTDOWN_LAMEDUCK=%s", tt.lameduck),
				fmt.Sprintf("SHUTDOWN_GRACE=%s", grace),
				"QUERY_TIMEOUT=5s")...)

			errs := make(chan error, udpQueries+tcpQueries+1)
			var wg sync.WaitGroup
			send := func(netw string, i int) {
				defer wg.Done()
				name := fmt.Sprintf("%s%d.inflight.example.", netw, i)
				r, err := ask(s.DNS, netw, name, false, 10*time.Second)
				if err == nil {
					err = checkA(r, name)
				}
				if err != nil {
					errs <- fmt.Errorf("%s query %d: %w", netw, i, err)
				}
			}
			for i := range udpQueries {
				wg.Add(1)
				go send("udp", i)
			}
			for i := range tcpQueries {
				wg.Add(1)
				go send("tcp", i)
			}
			// Every query has reached the upstream: all are in flight.
			testkit.WaitFor(t, "every query to reach the upstream", 5*time.Second, func() error {
				if n := srv.Queries(); n < udpQueries+tcpQueries {
					return fmt.Errorf("only %d of %d so far", n, udpQueries+tcpQueries)
				}
				return nil
			})

			sigterm := time.Now()
			if err := s.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			// /readyz turns 503 at once; /livez stays 200.
			testkit.WaitFor(t, "/readyz to turn 503", 300*time.Millisecond, func() error {
				if code, body := s.Get("/readyz"); code != http.StatusServiceUnavailable {
					return fmt.Errorf("still %d %q", code, body)
				}
				return nil
			})
			t.Logf("/readyz 503 %s after SIGTERM", time.Since(sigterm).Round(time.Millisecond))
			if code, body := s.Get("/livez"); code != http.StatusOK {
				t.Errorf("/livez %d %q while draining, want 200", code, body)
			}
			if tt.lameduck > 0 {
				// A new query during the lame duck is still answered.
				wg.Add(1)
				go send("udp", udpQueries)
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if err := s.Wait(t, grace+2*time.Second); err != nil {
				t.Fatalf("exit after SIGTERM: %v", err)
			}
			took := s.ExitAt().Sub(sigterm)
			t.Logf("exited %s after SIGTERM", took.Round(time.Millisecond))
			if took > grace {
				t.Errorf("exit %s after SIGTERM, more than SHUTDOWN_GRACE %s", took, grace)
			}
			if took < tt.lameduck {
				t.Errorf("exit %s after SIGTERM, before the lame duck (%s) ended", took, tt.lameduck)
			}
		})
	}
}
