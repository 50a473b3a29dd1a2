package demo

import (
	"net/netip"
	"slices"

	"github.com/nsflow/nsflow/collector"
	"github.com/nsflow/nsflow/verify"
)

// violations feeds nsflow_isolation_violation_packets_total: the packets
// the agent counted from one namespace of the topology into another that
// the topology gives no way to deliver to, by verify's reachability model.
// It judges whole namespace pairs: if src can reach any address of dst,
// none of the pair's traffic counts. (verify itself judges each flow by
// address; the agent's pair counters carry no addresses.)
func violations(m *verify.Model, src flowSource) collector.ViolationsFunc {
	declared := map[string]bool{}
	for _, ns := range m.Namespaces {
		declared[ns] = true
	}
	reaches := map[[2]string]bool{}
	for _, from := range m.Namespaces {
		for _, to := range m.Namespaces {
			reaches[[2]string{from, to}] = from == to || slices.ContainsFunc(m.Addresses(to), func(a netip.Addr) bool {
				got, _ := m.Deliver(from, a)
				return got == to
			})
		}
	}
	return func() ([]collector.Violation, error) {
		fs, err := src.Flows()
		if err != nil {
			return nil, err
		}
		byPair := map[[2]string]uint64{}
		for _, p := range fs.Pairs {
			k := [2]string{p.Src, p.Dst}
			if declared[p.Src] && declared[p.Dst] && !reaches[k] {
				byPair[k] += p.Packets
			}
		}
		out := make([]collector.Violation, 0, len(byPair))
		for k, n := range byPair {
			out = append(out, collector.Violation{Src: k[0], Dst: k[1], Packets: n})
		}
		return out, nil
	}
}
