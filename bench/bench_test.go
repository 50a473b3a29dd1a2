package bench

import (
	"context"
	"testing"
	"time"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/traffic"
)

// BenchmarkOverhead is `nsflow bench --proto both` on one veth pair as a
// Go benchmark: per protocol, the instrumented/uninstrumented throughput
// ratio (from the slices, and from the rounds), the datapath's ns per
// packet, and the generator's throughput relative to iperf3's on the same
// pair, all measured in the same run.
//
//	go test -run '^$' -bench Overhead -benchtime 1x ./bench/
func BenchmarkOverhead(b *testing.B) {
	testenv.RequireBPFFS(b)
	for b.Loop() {
		rep, err := Run(context.Background(), Config{Protos: []traffic.Proto{traffic.TCP, traffic.UDP},
			Duration: 2 * time.Second, Rounds: 5})
		if err != nil {
			b.Fatal(err)
		}
		for _, c := range rep.Cases {
			p := string(c.Proto)
			b.ReportMetric(c.SliceRatio.Median, p+"-on/off")
			b.ReportMetric(c.Ratio, p+"-rounds-on/off")
			b.ReportMetric(c.BPF.NsPerPacket, p+"-bpf-ns/pkt")
			if c.Proto == traffic.UDP {
				b.ReportMetric(c.Uninstrumented.Mpps.Median, p+"-Mpps")
			} else {
				b.ReportMetric(c.Uninstrumented.Gbps.Median, p+"-Gbit/s")
			}
		}
		for _, i := range rep.Iperf3 {
			b.ReportMetric(i.Ratio, string(i.Proto)+"-gen/iperf3")
		}
		b.ReportMetric(float64(rep.Differences), "differences")
	}
}
