package collector

import "github.com/prometheus/client_golang/prometheus"

// flowTableCollector exports the kernel flow table's occupancy and losses.
type flowTableCollector struct {
	src                                    Source
	entries, capacity, evictions, overflow *prometheus.Desc
}

func newFlowTableCollector(src Source) Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "flow_table", name), help, nil, nil)
	}
	return &flowTableCollector{
		src:       src,
		entries:   d("entries", "Live flows in the kernel flow table."),
		capacity:  d("capacity", "Maximum number of flows the kernel flow table holds."),
		evictions: d("evictions_total", "Flows removed from the kernel table by the agent (idle or of vanished ports); their counts stay in the namespace-pair totals."),
		overflow:  d("overflow_packets_total", "Packets not recorded per flow because the flow table was full (still counted per port)."),
	}
}

func (c *flowTableCollector) Update(ch chan<- prometheus.Metric) error {
	s, err := c.src.Flows()
	if err != nil {
		return err
	}
	t := s.Table
	ch <- constMetric(c.entries, prometheus.GaugeValue, float64(t.Entries))
	ch <- constMetric(c.capacity, prometheus.GaugeValue, float64(t.Capacity))
	ch <- constMetric(c.evictions, prometheus.CounterValue, float64(t.Evictions))
	ch <- constMetric(c.overflow, prometheus.CounterValue, float64(t.OverflowPackets))
	return nil
}
