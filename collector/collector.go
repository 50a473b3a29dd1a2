// Package collector turns the agent's view of namespaces, ports and flows
// into Prometheus metrics at scrape time, node_exporter style: one small
// Collector per file, descriptors declared once, and a failing collector
// reported as nsflow_scrape_collector_success 0 instead of a failed scrape.
package collector

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
)

// Namespace is the metric name prefix.
const Namespace = "nsflow"

// Collector is one source of metrics. Update sends what it can and returns
// an error when it could not produce all of it.
type Collector interface {
	Update(ch chan<- prometheus.Metric) error
}

var (
	scrapeDurationDesc = prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "scrape", "collector_duration_seconds"),
		"Duration of a collector scrape.",
		[]string{"collector"}, nil)
	scrapeSuccessDesc = prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "scrape", "collector_success"),
		"Whether a collector succeeded (1) or failed (0) in this scrape.",
		[]string{"collector"}, nil)
)

// Set runs named collectors concurrently on each scrape. It is a
// prometheus.Collector; its metrics are unchecked because what a
// collector emits depends on the host.
type Set struct {
	names      []string
	collectors map[string]Collector
	logger     *slog.Logger
}

// NewSet returns a Set of the given collectors, reported under their names
// in the order given.
func NewSet(logger *slog.Logger, names []string, collectors map[string]Collector) *Set {
	return &Set{names: names, collectors: collectors, logger: logger}
}

// Describe implements prometheus.Collector.
func (s *Set) Describe(ch chan<- *prometheus.Desc) {
	ch <- scrapeDurationDesc
	ch <- scrapeSuccessDesc
}

// ErrNoData is what a collector's error wraps (errors.Is) when it has
// nothing to report yet, or any more, in the normal course of things (the
// agent starting or stopping): the scrape still says success 0, but it is
// logged at debug level, not as a failure.
var ErrNoData = errors.New("no data")

// Collect implements prometheus.Collector.
func (s *Set) Collect(ch chan<- prometheus.Metric) {
	var wg sync.WaitGroup
	for _, name := range s.names {
		wg.Go(func() { s.run(name, s.collectors[name], ch) })
	}
	wg.Wait()
}

func (s *Set) run(name string, c Collector, ch chan<- prometheus.Metric) {
	start := time.Now()
	err := update(c, ch)
	success := 1.0
	switch {
	case errors.Is(err, ErrNoData):
		success = 0
		s.logger.Debug("collector has no data yet", "collector", name, "err", err)
	case err != nil:
		success = 0
		s.logger.Error("collector failed", "collector", name, "err", err)
	}
	ch <- constMetric(scrapeDurationDesc, prometheus.GaugeValue, time.Since(start).Seconds(), name)
	ch <- constMetric(scrapeSuccessDesc, prometheus.GaugeValue, success, name)
}

// update runs c.Update; a panic in it (a bug) fails this collector's
// scrape instead of killing the process, which runs it on a goroutine of
// its own where nothing else could recover it.
func update(c Collector, ch chan<- prometheus.Metric) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return c.Update(ch)
}

// constMetric is prometheus.MustNewConstMetric for label values taken
// from the host: names of namespaces and interfaces, process names and
// paths, which need not be UTF-8 (any process can write bytes to its
// comm), and which client_golang would refuse with a panic. See
// LabelValue.
// The caller's slice is left as it is: collectors pass one slice for
// several metrics, and escaping an escaped value again would change it.
func constMetric(desc *prometheus.Desc, typ prometheus.ValueType, v float64, labels ...string) prometheus.Metric {
	values := make([]string, len(labels))
	for i, l := range labels {
		values[i] = LabelValue(l)
	}
	return prometheus.MustNewConstMetric(desc, typ, v, values...)
}

// LabelValue returns s as a label value: as it is when it is valid UTF-8
// without a backslash (every name in practice), else with each invalid
// byte written as \xNN and each backslash as \\, so that two names never
// give one value.
func LabelValue(s string) string {
	if utf8.ValidString(s) && !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, "\\x%02x", s[i])
		case r == '\\':
			b.WriteString(`\\`)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}
