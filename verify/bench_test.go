package verify

import (
	"context"
	"fmt"
	"testing"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/topology"
)

// benchSpec is n namespaces on bridges of perBridge each (in namespace
// sw), a subnet per bridge, each namespace with a default route to a
// gateway that is down: every probe across bridges is lost silently (no
// neighbour answers) and must wait for its timeout, the slow case.
func benchSpec(n, perBridge int) *topology.Spec {
	s := &topology.Spec{Name: "bench", Namespaces: []topology.Namespace{{Name: "sw"}}}
	for i := range n {
		ns := fmt.Sprintf("n%02d", i)
		br := fmt.Sprintf("br%d", i/perBridge)
		if i%perBridge == 0 {
			s.Bridges = append(s.Bridges, topology.Bridge{Name: br, Namespace: "sw"})
		}
		s.Namespaces = append(s.Namespaces, topology.Namespace{Name: ns, Routes: []topology.Route{
			{To: "default", Via: fmt.Sprintf("198.18.%d.254", i/perBridge)},
		}})
		s.Links = append(s.Links, topology.Link{Endpoints: []topology.Endpoint{
			{Namespace: ns, Interface: "eth0", Addresses: []string{fmt.Sprintf("198.18.%d.%d/24", i/perBridge, i%perBridge+1)}},
			{Bridge: br, Interface: fmt.Sprintf("p%02d", i)},
		}})
	}
	return s
}

// BenchmarkMatrix verifies the full matrix (TCP, UDP and ICMP) of 50
// namespaces, against 2 namespaces as the baseline measured in the same
// run: both are bound below by the probe timeout. Any false result fails
// the benchmark; run it with -benchtime 20x for the 20-run check.
func BenchmarkMatrix(b *testing.B) {
	testenv.RequireRoot(b)
	for _, n := range []int{2, 50} {
		b.Run(fmt.Sprintf("ns=%d", n), func(b *testing.B) {
			l := upSpec(b, benchSpec(n, 10))
			var probes, retried, wrong int
			b.ResetTimer()
			for range b.N {
				rep, err := Run(context.Background(), l.spec, Options{})
				if err != nil {
					b.Fatal(err)
				}
				s := rep.Summary()
				probes, retried, wrong = s.Probes, retried+rep.Retried, wrong+s.Mismatches+s.ProbeErrors+s.CheckFailed+s.CheckErrors+s.Violations
				if rep.Verdict() != 0 {
					logTable(b, rep)
				}
				b.Logf("phases: %v", rep.Phases)
			}
			b.ReportMetric(float64(probes), "probes/op")
			b.ReportMetric(float64(retried)/float64(b.N), "retried/op")
			b.ReportMetric(float64(wrong)/float64(b.N), "false/op")
			if wrong > 0 {
				b.Errorf("%d false results over %d runs", wrong, b.N)
			}
		})
	}
}
