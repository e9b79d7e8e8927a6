package admin

import (
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func (a *Admin) routes() http.Handler {
	mux := http.NewServeMux()
	// "GET" patterns also answer HEAD; other methods get 405.
	mux.HandleFunc("GET /livez", a.livez)
	mux.HandleFunc("GET /startupz", a.startupz)
	mux.HandleFunc("GET /readyz", a.readyz)
	mux.Handle("GET /metrics", a.metricsHandler())
	return mux
}

func (a *Admin) livez(w http.ResponseWriter, _ *http.Request) {
	if err := a.live(); err != nil {
		writeStatus(w, http.StatusServiceUnavailable, "not live: "+err.Error())
		return
	}
	writeStatus(w, http.StatusOK, "ok")
}

func (a *Admin) startupz(w http.ResponseWriter, _ *http.Request) {
	if !a.started.Load() {
		writeStatus(w, http.StatusServiceUnavailable, "starting: DNS listeners not bound yet")
		return
	}
	writeStatus(w, http.StatusOK, "ok")
}

func (a *Admin) readyz(w http.ResponseWriter, _ *http.Request) {
	if ok, reason := a.readiness(); !ok {
		writeStatus(w, http.StatusServiceUnavailable, reason)
		return
	}
	writeStatus(w, http.StatusOK, "ok")
}

func writeStatus(w http.ResponseWriter, code int, body string) {
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	fmt.Fprintln(w, body)
}

// metricsHandler serves the Gatherer. A failing collector does not fail the
// scrape: the other series are served, the error is logged and counted in
// promhttp_metric_handler_errors_total{cause="gathering"}. One broken
// collector on every pod must not blank every dashboard, and the counter is
// there to alert on.
func (a *Admin) metricsHandler() http.Handler {
	reg := a.opts.Registerer
	h := promhttp.HandlerFor(a.opts.Gatherer, promhttp.HandlerOpts{
		ErrorLog:            promLogger{a.log},
		ErrorHandling:       promhttp.ContinueOnError,
		Registry:            reg,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
	return promhttp.InstrumentMetricHandler(reg, h)
}

// promLogger bridges promhttp's error log to slog.
type promLogger struct{ log *slog.Logger }

var _ promhttp.Logger = promLogger{}

func (l promLogger) Println(v ...any) {
	l.log.Warn("serving metrics", "err", fmt.Sprint(v...))
}
