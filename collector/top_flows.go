package collector

import "github.com/prometheus/client_golang/prometheus"

// topFlowsCollector exports the largest live flows; the agent bounds how
// many, so the series count stays bounded too.
type topFlowsCollector struct {
	src   Source
	bytes *prometheus.Desc
}

func newTopFlowsCollector(src Source) Collector {
	return &topFlowsCollector{src: src, bytes: prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "top_flow", "bytes_total"),
		"Bytes of the largest live flows (at most --collector.top-flows series).",
		[]string{"src_netns", "dst_netns", "protocol", "src", "dst", "src_port", "dst_port"}, nil)}
}

func (c *topFlowsCollector) Update(ch chan<- prometheus.Metric) error {
	s, err := c.src.Flows()
	if err != nil {
		return err
	}
	for _, f := range s.Top {
		ch <- constMetric(c.bytes, prometheus.CounterValue, float64(f.Bytes),
			f.Src, f.Dst, f.Protocol, f.SrcAddr, f.DstAddr, f.SrcPort, f.DstPort)
	}
	return nil
}
