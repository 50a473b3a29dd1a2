package collector

import "github.com/prometheus/client_golang/prometheus"

// netnsFlowCollector exports traffic between namespace pairs, in total
// and by destination port.
type netnsFlowCollector struct {
	src                                 Source
	bytes, packets, portBytes, portPkts *prometheus.Desc
}

func newNetnsFlowCollector(src Source) Collector {
	pair := []string{"src_netns", "dst_netns", "protocol"}
	port := append(pair[:len(pair):len(pair)], "port")
	d := func(name, help string, labels []string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "netns", name), help, labels, nil)
	}
	return &netnsFlowCollector{
		src:       src,
		bytes:     d("flow_bytes_total", "Bytes sent from one namespace to another, each packet counted once.", pair),
		packets:   d("flow_packets_total", "Packets sent from one namespace to another, each packet counted once.", pair),
		portBytes: d("flow_port_bytes_total", "Bytes between a namespace pair by destination port (a pair's first --collector.top-ports ports below 32768; the rest as port=\"other\").", port),
		portPkts:  d("flow_port_packets_total", "Packets between a namespace pair by destination port (a pair's first --collector.top-ports ports below 32768; the rest as port=\"other\").", port),
	}
}

func (c *netnsFlowCollector) Update(ch chan<- prometheus.Metric) error {
	s, err := c.src.Flows()
	if err != nil {
		return err
	}
	for _, p := range s.Pairs {
		ch <- constMetric(c.bytes, prometheus.CounterValue, float64(p.Bytes), p.Src, p.Dst, p.Protocol)
		ch <- constMetric(c.packets, prometheus.CounterValue, float64(p.Packets), p.Src, p.Dst, p.Protocol)
	}
	for _, p := range s.PortPairs {
		ch <- constMetric(c.portBytes, prometheus.CounterValue, float64(p.Bytes), p.Src, p.Dst, p.Protocol, p.Port)
		ch <- constMetric(c.portPkts, prometheus.CounterValue, float64(p.Packets), p.Src, p.Dst, p.Protocol, p.Port)
	}
	return nil
}
