package demo

import (
	"time"

	dto "github.com/prometheus/client_model/go"
)

// reading is one gather of the agent's metrics, reduced to what the view
// shows: counters keyed by namespace or by "src\x00dst" pair.
type reading struct {
	at           time.Time
	rxBytes      map[string]float64 // by netns
	txBytes      map[string]float64
	rxPackets    map[string]float64
	txPackets    map[string]float64
	pairBytes    map[string]float64 // by src\x00dst
	violations   map[string]float64 // by src\x00dst
	attached     float64
	attachErrors float64
	flowEntries  float64
	flowCapacity float64
}

// pairKey joins a source and destination namespace into one map key.
func pairKey(src, dst string) string { return src + "\x00" + dst }

// newReading sums the metric families by the labels the view groups on.
func newReading(at time.Time, mfs []*dto.MetricFamily) *reading {
	r := &reading{at: at,
		rxBytes: map[string]float64{}, txBytes: map[string]float64{},
		rxPackets: map[string]float64{}, txPackets: map[string]float64{},
		pairBytes: map[string]float64{}, violations: map[string]float64{},
	}
	// Counters summed by netns, or by pair for the src_netns/dst_netns ones.
	summed := map[string]map[string]float64{
		"nsflow_interface_receive_bytes_total":     r.rxBytes,
		"nsflow_interface_transmit_bytes_total":    r.txBytes,
		"nsflow_interface_receive_packets_total":   r.rxPackets,
		"nsflow_interface_transmit_packets_total":  r.txPackets,
		"nsflow_netns_flow_bytes_total":            r.pairBytes,
		"nsflow_isolation_violation_packets_total": r.violations,
	}
	scalars := map[string]*float64{
		"nsflow_attached_programs":   &r.attached,
		"nsflow_attach_errors_total": &r.attachErrors,
		"nsflow_flow_table_entries":  &r.flowEntries,
		"nsflow_flow_table_capacity": &r.flowCapacity,
	}
	for _, mf := range mfs {
		name := mf.GetName()
		if dst, ok := summed[name]; ok {
			for _, m := range mf.GetMetric() {
				l := labels(m)
				key := l["netns"]
				if _, pair := l["src_netns"]; pair {
					key = pairKey(l["src_netns"], l["dst_netns"])
				}
				dst[key] += value(m)
			}
		}
		if dst, ok := scalars[name]; ok {
			for _, m := range mf.GetMetric() {
				*dst += value(m)
			}
		}
	}
	return r
}

func labels(m *dto.Metric) map[string]string {
	out := make(map[string]string, len(m.GetLabel()))
	for _, lp := range m.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

// rates returns the per-second increase of each key from prev to cur. A
// key absent before counts from zero (it appeared within the interval); a
// counter that went down was reset and yields no rate.
func rates(prev, cur map[string]float64, dt time.Duration) map[string]float64 {
	out := make(map[string]float64, len(cur))
	if dt <= 0 {
		return out
	}
	for k, v := range cur {
		if d := v - prev[k]; d >= 0 {
			out[k] = d / dt.Seconds()
		}
	}
	return out
}
