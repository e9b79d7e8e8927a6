package server

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestDeadlines(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tests := []struct {
		name  string
		check func(t *testing.T, d *deadlines, cancel context.CancelFunc)
	}{
		{"deadline is the timeout after arrival, at most one grain more", func(t *testing.T, d *deadlines, _ context.CancelFunc) {
			before := time.Now()
			ctx := d.get()
			after := time.Now()
			dl, ok := ctx.Deadline()
			if !ok {
				t.Fatal("no deadline")
			}
			if dl.Before(before.Add(timeout)) || dl.After(after.Add(timeout+deadlineGrain)) {
				t.Fatalf("deadline %v after arrival; want %v to %v", dl.Sub(before), timeout, timeout+deadlineGrain)
			}
		}},
		{"queries a grain apart get contexts of their own", func(t *testing.T, d *deadlines, _ context.CancelFunc) {
			a := d.get()
			time.Sleep(2 * deadlineGrain) // the pacing under test, not a wait for a condition
			if b := d.get(); a == b {
				t.Fatal("a query two grains later shares the earlier context")
			}
		}},
		{"the context ends at its deadline", func(t *testing.T, d *deadlines, _ context.CancelFunc) {
			ctx := d.get()
			select {
			case <-ctx.Done():
			case <-time.After(timeout + time.Second):
				t.Fatal("context still open a second past its deadline")
			}
			if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
				t.Fatalf("Err = %v; want DeadlineExceeded", ctx.Err())
			}
		}},
		{"cancelling base ends every context at once", func(t *testing.T, d *deadlines, cancel context.CancelFunc) {
			ctx := d.get()
			cancel()
			select {
			case <-ctx.Done():
			case <-time.After(timeout / 2):
				t.Fatal("context still open after base was cancelled")
			}
			if !errors.Is(ctx.Err(), context.Canceled) {
				t.Fatalf("Err = %v; want Canceled", ctx.Err())
			}
			if err := d.get().Err(); !errors.Is(err, context.Canceled) {
				t.Fatalf("a context handed out after the cancel has Err %v; want Canceled", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base, cancel := context.WithCancel(context.Background())
			defer cancel()
			tt.check(t, &deadlines{base: base, timeout: timeout}, cancel)
		})
	}
}
