package collector

import "github.com/prometheus/client_golang/prometheus"

// Violation is traffic seen between two namespaces that the topology's
// isolation section says must not reach each other.
type Violation struct {
	Src, Dst string
	Packets  uint64
}

// ViolationsFunc returns the current violation counters; whoever owns the
// isolation rules (verify) decides what counts.
type ViolationsFunc func() ([]Violation, error)

type isolationCollector struct {
	violations ViolationsFunc
	desc       *prometheus.Desc
}

func newIsolationCollector(f ViolationsFunc) Collector {
	return &isolationCollector{violations: f, desc: prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "isolation", "violation_packets_total"),
		"Packets seen from one namespace to another that the topology file's wiring cannot deliver (--topology).",
		[]string{"src_netns", "dst_netns"}, nil)}
}

func (c *isolationCollector) Update(ch chan<- prometheus.Metric) error {
	vs, err := c.violations()
	for _, v := range vs {
		ch <- constMetric(c.desc, prometheus.CounterValue, float64(v.Packets), v.Src, v.Dst)
	}
	return err
}
