package bpf

import (
	"os"
	"testing"
	"time"
)

// BenchmarkRunCost measures what one run of the programs costs on the
// real path, where BenchmarkProgram's repeated runs of one frame find
// every cache warm. A UDP stream of 64-byte frames (iperf3) crosses a
// veth pair while nsflow's programs and a no-op tcx program take turns
// on both ends, a second each, and BPF statistics give each one's mean
// run time. Variants (NSFLOW_BENCH_VARIANT, comma separated) take turns
// with them. NSFLOW_BENCH_STREAM=tcp makes the stream one TCP bulk
// stream instead.
//
// Statistics time every run with two clock reads. The no-op's figure is
// that overhead plus the hook's call and return, so the difference to it
// is what the programs themselves cost, the cache misses they wait on
// included. What it cannot see is what the
// programs cost the kernel after they return (cache lines and branch
// history they displace): the throughput ratio of BenchmarkVethThroughput
// includes that.
//
//	go test -run '^$' -bench BenchmarkRunCost -benchtime 1x -v ./bpf/
func BenchmarkRunCost(b *testing.B) {
	const (
		rounds = 8 // per b.N
		warm   = 200 * time.Millisecond
		span   = time.Second
	)
	d := loadForTest(b, Options{})
	a, bns := newTestNS(b), newTestNS(b)
	ea, eb := vethPair(b, a, bns, 6)
	const noop = 1 // cs[noop], what the others are compared with
	cs := append([]contender{datapathContender(b, "nsflow", d, ea, eb), noopContender(b, ea, eb)},
		variantContenders(b, ea, eb)...)

	per := time.Duration(len(cs)) * (warm + span)
	proto := "udp64"
	if os.Getenv("NSFLOW_BENCH_STREAM") == "tcp" {
		proto = "tcp"
	}
	stream := startIperf(b, proto, ea, eb, time.Duration(b.N*rounds)*per+30*time.Second)
	defer stream.stop(b)
	time.Sleep(time.Second)
	stats, err := d.EnableRunStats()
	if err != nil {
		b.Fatal(err)
	}
	defer stats.Close()

	nsPerRun := make([][]float64, len(cs))
	for range b.N * rounds {
		for i, c := range cs {
			detach := c.attach()
			time.Sleep(warm) // past the first packets' flow inserts
			r0, t0 := c.runStats()
			time.Sleep(span)
			r1, t1 := c.runStats()
			detach()
			if r1 == r0 {
				b.Fatalf("%s: no runs in %v", c.name, span)
			}
			nsPerRun[i] = append(nsPerRun[i], float64(t1-t0)/float64(r1-r0))
		}
	}
	// The per-round differences cancel the drift a round shares.
	for i, c := range cs {
		b.Logf("%-12s ns/run median %.1f, rounds %.1f", c.name, median(nsPerRun[i]), nsPerRun[i])
		b.ReportMetric(median(nsPerRun[i]), c.name+"-ns/run")
		if i == noop {
			continue
		}
		diff := make([]float64, len(nsPerRun[i]))
		for r := range diff {
			diff[r] = nsPerRun[i][r] - nsPerRun[noop][r]
		}
		b.ReportMetric(median(diff), c.name+"-own-ns/run")
	}
	b.ReportMetric(0, "ns/op")
}
