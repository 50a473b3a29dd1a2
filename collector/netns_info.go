package collector

import "github.com/prometheus/client_golang/prometheus"

// netnsInfoCollector maps namespace labels to inode, path and owners, so
// a "netns-INODE" label can be traced to a container.
type netnsInfoCollector struct {
	src  Source
	info *prometheus.Desc
}

func newNetnsInfoCollector(src Source) Collector {
	return &netnsInfoCollector{src: src, info: prometheus.NewDesc(
		prometheus.BuildFQName(Namespace, "netns", "info"),
		"A discovered network namespace: its label, inode, bind-mount or /proc path and a few owning pids and commands. Value is always 1.",
		[]string{"netns", "inode", "path", "pids", "comm"}, nil)}
}

func (c *netnsInfoCollector) Update(ch chan<- prometheus.Metric) error {
	for _, n := range c.src.Namespaces() {
		ch <- constMetric(c.info, prometheus.GaugeValue, 1, n.Netns, n.Inode, n.Path, n.Pids, n.Comm)
	}
	return nil
}
