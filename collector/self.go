package collector

import (
	"slices"

	"github.com/prometheus/client_golang/prometheus"
)

// selfCollector exports the agent's own attach and discovery state.
type selfCollector struct {
	src                               Source
	attached, attachErrors, discovery *prometheus.Desc
}

func newSelfCollector(src Source) Collector {
	return &selfCollector{
		src: src,
		attached: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "attached_programs"),
			"Interfaces with the nsflow programs attached, by attach mode (tcx or tc).", []string{"mode"}, nil),
		attachErrors: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "attach_errors_total"),
			"Attach attempts that failed (an interface or namespace that vanished meanwhile is not a failure).", nil, nil),
		discovery: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "discovery_events_total"),
			"Discovery events by object (netns, link, address) and event.", []string{"object", "event"}, nil),
	}
}

// attachModes are always exported, so a dashboard sees 0 rather than no
// series.
var attachModes = []string{"tcx", "tc"}

func (c *selfCollector) Update(ch chan<- prometheus.Metric) error {
	s := c.src.Self()
	modes := slices.Clone(attachModes)
	for m := range s.AttachedPrograms {
		if !slices.Contains(modes, m) {
			modes = append(modes, m)
		}
	}
	for _, m := range modes {
		ch <- constMetric(c.attached, prometheus.GaugeValue, float64(s.AttachedPrograms[m]), m)
	}
	ch <- constMetric(c.attachErrors, prometheus.CounterValue, float64(s.AttachErrors))
	for k, v := range s.DiscoveryEvents {
		ch <- constMetric(c.discovery, prometheus.CounterValue, float64(v), k.Object, k.Event)
	}
	return nil
}
