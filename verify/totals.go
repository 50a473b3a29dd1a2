package verify

import "sync"

// ViolationTotals keeps violation counters monotonic over successive
// reads of a flow table whose entries come and go (the agent evicts idle
// flows): what a flow counted before it was evicted stays counted. This is
// what a Prometheus counter such as
// nsflow_isolation_violation_packets_total needs.
type ViolationTotals struct {
	m     *Model
	mu    sync.Mutex
	last  map[Flow]Flow // flow identity (counters zeroed) -> last read
	total map[[2]string]*Violation
}

// NewViolationTotals starts totals at zero for the model's topology.
func NewViolationTotals(m *Model) *ViolationTotals {
	return &ViolationTotals{m: m, last: map[Flow]Flow{}, total: map[[2]string]*Violation{}}
}

// Update reads the flow table as it is now and returns the totals since
// NewViolationTotals, per (source, destination) pair. A flow whose counters
// went down was evicted and seen anew: all of its count is new.
func (t *ViolationTotals) Update(flows []Flow) []Violation {
	t.mu.Lock()
	defer t.mu.Unlock()
	var deltas []Flow
	for _, f := range flows {
		id := f
		id.Packets, id.Bytes = 0, 0
		d := f
		if prev, ok := t.last[id]; ok && f.Packets >= prev.Packets && f.Bytes >= prev.Bytes {
			d.Packets, d.Bytes = f.Packets-prev.Packets, f.Bytes-prev.Bytes
		}
		t.last[id] = f
		if d.Packets > 0 || d.Bytes > 0 {
			deltas = append(deltas, d)
		}
	}
	for _, v := range t.m.Violations(deltas) {
		k := [2]string{v.Src, v.Dst}
		tot := t.total[k]
		if tot == nil {
			tot = &Violation{Src: v.Src, Dst: v.Dst}
			t.total[k] = tot
		}
		tot.Packets += v.Packets
		tot.Bytes += v.Bytes
	}
	// Forget flows that are gone, so the map follows the table's size.
	present := map[Flow]bool{}
	for _, f := range flows {
		f.Packets, f.Bytes = 0, 0
		present[f] = true
	}
	for id := range t.last {
		if !present[id] {
			delete(t.last, id)
		}
	}
	out := make([]Violation, 0, len(t.total))
	for _, v := range t.total {
		out = append(out, Violation{Src: v.Src, Dst: v.Dst, Packets: v.Packets, Bytes: v.Bytes})
	}
	sortViolations(out)
	return out
}
