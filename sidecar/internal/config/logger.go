package config

import (
	"fmt"
	"io"
	"log/slog"
	"os"
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
	out, closer := stderr, io.Closer(nopCloser{})
	if c.LogFile != "" {
		f, err := os.OpenFile(c.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, nil, fmt.Errorf("opening LOG_FILE: %w", err)
		}
		out, closer = f, f
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch c.LogFormat {
	case "json":
		h = slog.NewJSONHandler(out, opts)
	case "text", "":
		h = slog.NewTextHandler(out, opts)
	default:
		closer.Close()
		return nil, nil, fmt.Errorf("unknown LOG_FORMAT %q", c.LogFormat)
	}
	return slog.New(h), closer, nil
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }
