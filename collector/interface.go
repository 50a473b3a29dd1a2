package collector

import "github.com/prometheus/client_golang/prometheus"

var interfaceLabels = []string{"netns", "interface", "family"}

// interfaceCollector exports per-port traffic from the kernel port table.
type interfaceCollector struct {
	src                              Source
	rxBytes, txBytes, rxPkts, txPkts *prometheus.Desc
}

func newInterfaceCollector(src Source) Collector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "interface", name), help, interfaceLabels, nil)
	}
	return &interfaceCollector{
		src:     src,
		rxBytes: d("receive_bytes_total", "Bytes received by an attached interface (tc ingress), by protocol family."),
		txBytes: d("transmit_bytes_total", "Bytes transmitted by an attached interface (tc egress), by protocol family."),
		rxPkts:  d("receive_packets_total", "Packets received by an attached interface (tc ingress), by protocol family."),
		txPkts:  d("transmit_packets_total", "Packets transmitted by an attached interface (tc egress), by protocol family."),
	}
}

func (c *interfaceCollector) Update(ch chan<- prometheus.Metric) error {
	ports, err := c.src.Ports()
	for _, p := range ports {
		l := []string{p.Netns, p.Interface, p.Family}
		ch <- constMetric(c.rxBytes, prometheus.CounterValue, float64(p.ReceiveBytes), l...)
		ch <- constMetric(c.txBytes, prometheus.CounterValue, float64(p.TransmitBytes), l...)
		ch <- constMetric(c.rxPkts, prometheus.CounterValue, float64(p.ReceivePackets), l...)
		ch <- constMetric(c.txPkts, prometheus.CounterValue, float64(p.TransmitPackets), l...)
	}
	return err
}
