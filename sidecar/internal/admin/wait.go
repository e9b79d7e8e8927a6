package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/go-retryablehttp"
)

// Polling bounds for Wait. The backoff stays small because the point of
// `wait` is to let the application container start as soon as the sidecar is
// ready; the poll target is on loopback and cheap to ask.
const (
	waitBackoffMin  = 100 * time.Millisecond
	waitBackoffMax  = 500 * time.Millisecond
	waitAttemptMax  = 2 * time.Second // one request; a hung listener is retried
	waitBodyLimit   = 512             // bytes of a non-200 body kept for the message
	waitRetryMaxCap = 1 << 30         // attempts are bounded by the deadline, not a count
)

// ReadyURL turns an ADMIN_ADDRESS value into the URL Wait polls. A wildcard or
// empty host (":9253", "0.0.0.0:9253", "[::]:9253") means 127.0.0.1, since a
// listener on all addresses is reachable on loopback and Wait runs in the same
// pod; any other host ("[::1]:9253", "10.0.0.5:9253") is kept.
func ReadyURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("admin address %q: %w", addr, err)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("admin address %q: port must be a number from 1 to 65535", addr)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	u := url.URL{Scheme: "http", Host: net.JoinHostPort(host, port), Path: "/readyz"}
	return u.String(), nil
}

// Wait polls /readyz of the admin listener at addr (ADMIN_ADDRESS form, see
// ReadyURL) until it answers 200, and returns nil then. Connection errors and
// any other status are retried with a backoff from 100 ms to 500 ms until
// timeout has passed or ctx is done; the error is then a *NotReadyError
// (errors.Is ErrNotReady) saying where it asked, for how long, and what the
// last attempt saw, e.g.
//
//	sidecar not ready at http://127.0.0.1:9253/readyz after 60s: status 503: shutting down
//
// Each attempt is logged at debug level on logger (nil discards); the
// outcome is the caller's to report.
func Wait(ctx context.Context, addr string, timeout time.Duration, logger *slog.Logger) error {
	target, err := ReadyURL(addr)
	if err != nil {
		return err
	}
	if timeout <= 0 {
		return fmt.Errorf("wait timeout must be positive, got %s", timeout)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	begin := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	var last string // what the last completed attempt saw
	attempts := 0
	client := &retryablehttp.Client{
		HTTPClient: &http.Client{
			Timeout: min(waitAttemptMax, timeout),
			Transport: &http.Transport{
				// Never through a proxy from the environment: the target is
				// in this pod.
				Proxy:             nil,
				DialContext:       (&net.Dialer{Timeout: min(waitAttemptMax, timeout)}).DialContext,
				DisableKeepAlives: true,
			},
		},
		Logger:       slogLeveled{logger},
		RetryWaitMin: waitBackoffMin,
		RetryWaitMax: waitBackoffMax,
		RetryMax:     waitRetryMaxCap,
		Backoff:      cappedBackoff,
		CheckRetry: func(ctx context.Context, resp *http.Response, err error) (bool, error) {
			attempts++
			if err != nil {
				// An attempt cut short by our own deadline or cancellation
				// says nothing new; keep what the attempt before it saw.
				if ctx.Err() == nil {
					last = describeErr(err)
				}
			} else {
				if resp.StatusCode == http.StatusOK {
					return false, nil
				}
				body, _ := io.ReadAll(io.LimitReader(resp.Body, waitBodyLimit))
				resp.Body = io.NopCloser(strings.NewReader(""))
				last = fmt.Sprintf("status %d", resp.StatusCode)
				if b := strings.TrimSpace(string(body)); b != "" {
					last += ": " + b
				}
			}
			if last != "" {
				logger.Debug("sidecar not ready yet", "url", target, "attempt", attempts, "saw", last)
			}
			if err := ctx.Err(); err != nil {
				return false, err
			}
			return true, nil
		},
	}

	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("building request for %s: %w", target, err)
	}
	resp, err := client.Do(req)
	if err == nil {
		_ = resp.Body.Close()
		return nil
	}
	if last == "" {
		last = "no answer"
	}
	if ctx.Err() == context.DeadlineExceeded {
		return &NotReadyError{URL: target, Waited: timeout, Last: last}
	}
	return &NotReadyError{URL: target, Waited: time.Since(begin).Round(time.Millisecond), Last: last, Err: ctx.Err()}
}

// NotReadyError is Wait's error when it gave up: errors.Is(err, ErrNotReady).
// Its fields are what a log line reports.
type NotReadyError struct {
	URL    string        // the /readyz URL polled
	Waited time.Duration // the timeout, or how long until ctx was done
	// Last is what the last attempt saw: "status 503: shutting down", a
	// connection error, or "no answer".
	Last string
	// Err is ctx's error when Wait was cut short (cancellation, or a
	// deadline of ctx's own before the timeout); nil when the timeout passed.
	Err error
}

func (e *NotReadyError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%v at %s: gave up after %s (%v): %s", ErrNotReady, e.URL, e.Waited, e.Err, e.Last)
	}
	return fmt.Sprintf("%v at %s after %s: %s", ErrNotReady, e.URL, e.Waited, e.Last)
}

func (e *NotReadyError) Is(target error) bool { return target == ErrNotReady }

func (e *NotReadyError) Unwrap() error { return e.Err }

// cappedBackoff doubles from min up to max. It ignores Retry-After: the only
// server we poll is ours, and a stray header must not stretch the wait.
func cappedBackoff(min, max time.Duration, attempt int, _ *http.Response) time.Duration {
	d := min
	for range attempt {
		if d >= max {
			break
		}
		d *= 2
	}
	if d > max {
		d = max
	}
	return d
}

// describeErr drops net/http's `Get "url": ` prefix, which the message already
// carries, keeping e.g. "dial tcp 127.0.0.1:9253: connect: connection refused".
func describeErr(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}

// slogLeveled bridges go-retryablehttp's leveled logger to slog. Every level
// goes to Debug: failed polls are the expected state while waiting, and the
// caller reports the outcome. The original level is kept as an attribute.
type slogLeveled struct{ log *slog.Logger }

var _ retryablehttp.LeveledLogger = slogLeveled{}

func (l slogLeveled) Error(msg string, kv ...any) { l.emit("error", msg, kv) }
func (l slogLeveled) Warn(msg string, kv ...any)  { l.emit("warn", msg, kv) }
func (l slogLeveled) Info(msg string, kv ...any)  { l.emit("info", msg, kv) }
func (l slogLeveled) Debug(msg string, kv ...any) { l.emit("debug", msg, kv) }

func (l slogLeveled) emit(level, msg string, kv []any) {
	args := append([]any{"component", "wait", "retryablehttp_level", level}, kv...)
	l.log.Debug(msg, args...)
}
