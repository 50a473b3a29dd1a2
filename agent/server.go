package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"path"
	"strings"
	"time"

	"github.com/nsflow/nsflow/internal/version"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
)

// WebConfig is the HTTP side, with exporter conventions.
type WebConfig struct {
	ListenAddress string // --web.listen-address
	TelemetryPath string // --web.telemetry-path
	ConfigFile    string // --web.config.file: TLS and basic auth (exporter-toolkit)
}

// ValidateTelemetryPath checks --web.telemetry-path before anything
// starts. The path goes to an http.ServeMux as a pattern, so it must be a
// plain, clean path (no wildcard, no method, nothing the mux would
// redirect away from) that does not take one of the agent's own routes.
func ValidateTelemetryPath(p string) error {
	bad := func(why string) error { return fmt.Errorf("--web.telemetry-path %q: %s", p, why) }
	switch {
	case p == "" || p[0] != '/' || p == "/":
		return bad("want an absolute path other than /")
	case strings.IndexFunc(p, func(r rune) bool { return !strings.ContainsRune(pathChars, r) }) >= 0:
		return bad("want letters, digits and " + pathChars[62:] + " only")
	case path.Clean(p) != strings.TrimSuffix(p, "/") && path.Clean(p) != p:
		return bad("not a clean path (want " + path.Clean(p) + ")")
	case p == "/-" || strings.HasPrefix(p, "/-/") || p == "/debug/pprof" || strings.HasPrefix(p, "/debug/pprof/"):
		return bad("taken by the agent's own /-/healthy, /-/ready or /debug/pprof/")
	}
	return nil
}

// pathChars are the characters a telemetry path may have: RFC 3986's
// unreserved ones, / and a few sub-delimiters.
const pathChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~/:@!,;="

// ValidateWebConfig checks the web config file before anything starts.
func ValidateWebConfig(cfg WebConfig) error {
	if cfg.ConfigFile == "" {
		return nil
	}
	if err := web.Validate(cfg.ConfigFile); err != nil {
		return fmt.Errorf("--web.config.file %s: %w", cfg.ConfigFile, err)
	}
	return nil
}

// Handler serves the metrics, a landing page at /, /-/healthy (the
// process serves) and /-/ready (the initial discovery is done).
func Handler(log *slog.Logger, reg *prometheus.Registry, cfg WebConfig, ready func() bool) (http.Handler, error) {
	mux := http.NewServeMux()
	mux.Handle(cfg.TelemetryPath, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(log.Handler(), slog.LevelError),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Registry:            reg,
	}))
	mux.HandleFunc("/-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "Healthy")
	})
	mux.HandleFunc("/-/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "initial discovery in progress", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "Ready")
	})
	// Go profiles, as Prometheus and node_exporter serve them: the way to
	// see where an agent's CPU and memory go on a busy host.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	landing, err := web.NewLandingPage(web.LandingConfig{
		Name:        "nsflow agent",
		Description: "Per-namespace traffic of Linux network namespaces, counted by tc eBPF programs",
		Version:     version.Get().Version,
		Profiling:   "true",
		Links: []web.LandingLinks{
			{Address: cfg.TelemetryPath, Text: "Metrics"},
			{Address: "/-/healthy", Text: "Health"},
			{Address: "/-/ready", Text: "Readiness"},
		},
	})
	if err != nil {
		return nil, err
	}
	mux.Handle("/", landing)
	return mux, nil
}

// Serve serves h on l (TLS and basic auth per cfg.ConfigFile) until ctx
// is cancelled.
func Serve(ctx context.Context, log *slog.Logger, l net.Listener, h http.Handler, cfg WebConfig) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	errc := make(chan error, 1)
	go func() {
		errc <- web.Serve(l, srv, &web.FlagConfig{WebConfigFile: &cfg.ConfigFile}, log)
	}()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}
