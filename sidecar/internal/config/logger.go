package config

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"
)

// NewLogger builds the program's logger from LOG_LEVEL, LOG_FORMAT and
// LOG_FILE. With LOG_FILE empty it writes to stderr and the Closer does
// nothing; otherwise it appends to the file (created 0640 if missing) and the
// Closer closes it.
func (c *Config) NewLogger(stderr io.Writer) (*slog.Logger, io.Closer, error) {
	var level slog.Level
	switch c.LogLevel {
	case "debug":
		level = slog.LevelDebug
	case "info", "":
		level = slog.LevelInfo
	case "warn":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	default:
		return nil, nil, fmt.Errorf("unknown LOG_LEVEL %q", c.LogLevel)
	}
	switch c.LogFormat {
	case LogFormatText, LogFormatJSON, "":
	default:
		return nil, nil, fmt.Errorf("unknown LOG_FORMAT %q", c.LogFormat)
	}
	out, closer := stderr, io.Closer(nopCloser{})
	if c.LogFile != "" {
		f, err := os.OpenFile(c.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, nil, fmt.Errorf("opening LOG_FILE: %w", err)
		}
		out, closer = f, f
	}
	return slog.New(newHandler(c.LogFormat, level, out)), closer, nil
}

// ReportLogger returns the logger for the line that says why the process
// stops: log itself, or, when LOG_FILE takes the log off stderr, log and
// stderr both, so that the container's own output (kubectl logs, a failed
// hook's event) says it too.
func (c *Config) ReportLogger(log *slog.Logger, stderr io.Writer) *slog.Logger {
	if c.LogFile == "" {
		return log
	}
	return slog.New(slog.NewMultiHandler(log.Handler(), newHandler(c.LogFormat, slog.LevelInfo, stderr)))
}

// FallbackLogger is the logger for reporting an error of Load itself, when
// there is no Config to build one from: on stderr, in the LOG_FORMAT that the
// arguments (parsed with the same opts) or the environment ask for, and in
// text when that cannot be told. So a manifest with LOG_FORMAT=json gets JSON
// even for the line saying that another setting is wrong.
func FallbackLogger(args, environ []string, stderr io.Writer, opts ...Option) *slog.Logger {
	l := newLoader(environ, opts)
	_ = l.parseFlags(args) // flags up to a bad one are recorded; that is enough here
	format := strings.ToLower(strings.TrimSpace(l.values["LOG_FORMAT"]))
	if format != LogFormatJSON {
		format = LogFormatText
	}
	return slog.New(newHandler(format, slog.LevelInfo, stderr))
}

// newHandler is the one place log lines get their shape, for every logger
// above.
func newHandler(format string, level slog.Level, w io.Writer) slog.Handler {
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: readableDurations}
	if format == LogFormatJSON {
		return slog.NewJSONHandler(w, opts)
	}
	return slog.NewTextHandler(w, opts)
}

// readableDurations writes every time.Duration attribute the way settings
// are written ("1.5s", "60s", "250ms") instead of slog's JSON nanoseconds, so
// that no call site has to convert and a logged timeout reads like the
// setting it came from.
func readableDurations(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(FormatDuration(a.Value.Duration()))
	}
	return a
}

// FormatDuration prints whole seconds as seconds ("60s", where time prints
// "1m0s"), and anything else as time.Duration does ("1.5s", "250ms").
func FormatDuration(d time.Duration) string {
	if d >= time.Second && d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return d.String()
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }
