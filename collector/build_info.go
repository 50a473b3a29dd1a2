package collector

import (
	"github.com/nsflow/nsflow/internal/version"
	"github.com/prometheus/client_golang/prometheus"
)

// buildInfoCollector exports nsflow_build_info.
type buildInfoCollector struct{ metric prometheus.Metric }

func newBuildInfoCollector() Collector {
	v := version.Get()
	desc := prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "build_info"),
		"The nsflow build: version, VCS revision and Go version. Value is always 1.",
		[]string{"version", "revision", "goversion"}, nil)
	return &buildInfoCollector{metric: constMetric(desc, prometheus.GaugeValue, 1,
		v.Version, v.Revision, v.GoVersion)}
}

func (c *buildInfoCollector) Update(ch chan<- prometheus.Metric) error {
	ch <- c.metric
	return nil
}
