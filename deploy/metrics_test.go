package deploy

import (
	"maps"
	"slices"
	"strings"
)

// agentMetrics is the agent's metric contract: each name with its labels
// (before Prometheus adds job and instance). The rules and the dashboard
// may use only these; TestLiveScrape checks the contract against a real
// agent, so it cannot drift from what the agent exports.
var agentMetrics = map[string][]string{
	"nsflow_interface_receive_bytes_total":     {"netns", "interface", "family"},
	"nsflow_interface_receive_packets_total":   {"netns", "interface", "family"},
	"nsflow_interface_transmit_bytes_total":    {"netns", "interface", "family"},
	"nsflow_interface_transmit_packets_total":  {"netns", "interface", "family"},
	"nsflow_netns_flow_bytes_total":            {"src_netns", "dst_netns", "protocol"},
	"nsflow_netns_flow_packets_total":          {"src_netns", "dst_netns", "protocol"},
	"nsflow_netns_flow_port_bytes_total":       {"src_netns", "dst_netns", "protocol", "port"},
	"nsflow_netns_flow_port_packets_total":     {"src_netns", "dst_netns", "protocol", "port"},
	"nsflow_flow_table_entries":                {},
	"nsflow_flow_table_capacity":               {},
	"nsflow_flow_table_evictions_total":        {},
	"nsflow_flow_table_overflow_packets_total": {},
	"nsflow_top_flow_bytes_total":              {"src_netns", "dst_netns", "protocol", "src", "dst", "src_port", "dst_port"},
	"nsflow_attached_programs":                 {"mode"},
	"nsflow_attach_errors_total":               {},
	"nsflow_discovery_events_total":            {"object", "event"},
	"nsflow_netns_info":                        {"netns", "inode", "path", "pids", "comm"},
	"nsflow_isolation_violation_packets_total": {"src_netns", "dst_netns"},
	"nsflow_scrape_collector_duration_seconds": {"collector"},
	"nsflow_scrape_collector_success":          {"collector"},
	"nsflow_build_info":                        {"version", "revision", "goversion"},
	// From client_golang's process collector; the attach-failure rule
	// reads it.
	"process_start_time_seconds": {},
}

// prometheusMetrics are made by Prometheus itself for every target.
var prometheusMetrics = map[string][]string{"up": {}}

// targetLabels are added by Prometheus to every scraped series.
var targetLabels = []string{"job", "instance"}

// labelsOf returns the labels a series of metric may carry in Prometheus,
// and whether the metric is known at all.
func labelsOf(known map[string][]string, metric string) ([]string, bool) {
	l, ok := known[metric]
	if !ok {
		l, ok = prometheusMetrics[metric]
	}
	return append(slices.Clone(l), targetLabels...), ok
}

// checkRefs returns a problem for every metric refs uses that is not in
// known, and every label that none of its metrics carries.
func checkRefs(known map[string][]string, refs exprRefs) []string {
	var problems []string
	all := map[string]bool{"__name__": true}
	for _, s := range refs.Selectors {
		labels, ok := labelsOf(known, s.Metric)
		if s.Metric != "" && !ok {
			problems = append(problems, "unknown metric "+s.Metric)
			continue
		}
		for _, l := range labels {
			all[l] = true
		}
		for _, l := range s.Labels {
			if l != "__name__" && !slices.Contains(labels, l) {
				problems = append(problems, "metric "+s.Metric+" has no label "+l)
			}
		}
	}
	for _, l := range refs.Grouping {
		if !all[l] {
			problems = append(problems, "grouping label "+l+" is on none of "+
				strings.Join(slices.Sorted(maps.Keys(all)), ", "))
		}
	}
	return problems
}
