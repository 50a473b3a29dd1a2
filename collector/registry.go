package collector

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Options selects optional collectors.
type Options struct {
	// Violations enables nsflow_isolation_violation_packets_total.
	Violations ViolationsFunc
}

// NewRegistry returns a registry with every nsflow collector plus the Go
// runtime and process collectors.
func NewRegistry(logger *slog.Logger, src Source, opts Options) *prometheus.Registry {
	names := []string{"interface", "netns_flow", "top_flows", "flow_table", "netns_info", "self", "build_info"}
	cs := map[string]Collector{
		"interface":  newInterfaceCollector(src),
		"netns_flow": newNetnsFlowCollector(src),
		"top_flows":  newTopFlowsCollector(src),
		"flow_table": newFlowTableCollector(src),
		"netns_info": newNetnsInfoCollector(src),
		"self":       newSelfCollector(src),
		"build_info": newBuildInfoCollector(),
	}
	if opts.Violations != nil {
		names = append(names, "isolation")
		cs["isolation"] = newIsolationCollector(opts.Violations)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		NewSet(logger, names, cs),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}
