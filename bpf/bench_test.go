package bpf

import (
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// benchMix is a mix of small frames, the worst case per byte: TCP and UDP
// over IPv4 and IPv6, ICMP, and ARP, each padded to at least 64 bytes.
func benchMix() map[string][]byte {
	pad := func(b []byte) []byte {
		if len(b) < 64 {
			b = append(b, zeros(64-len(b))...)
		}
		return b
	}
	return map[string][]byte{
		"ipv4-tcp":  pad(cat(eth(etherIPv4), ipv4(6, v4A, v4B, 20, 0, 0, false), tcp(40000, 80, 0x10))),
		"ipv4-udp":  pad(cat(eth(etherIPv4), ipv4(17, v4A, v4B, 22, 0, 0, false), udp(40000, 53, 14), zeros(14))),
		"ipv6-tcp":  pad(cat(eth(etherIPv6), ipv6(6, v6A, v6B, 20), tcp(40000, 443, 0x10))),
		"ipv6-udp":  pad(cat(eth(etherIPv6), ipv6(17, v6A, v6B, 8), udp(40000, 53, 0))),
		"ipv4-icmp": pad(cat(eth(etherIPv4), ipv4(1, v4A, v4B, 8, 0, 0, false), icmp(8, 0))),
		"arp":       pad(cat(eth(etherARP), zeros(28))),
	}
}

// BenchmarkProgram runs the ingress program through BPF_PROG_TEST_RUN on
// each frame of the mix, interleaved with a no-op tc program in the same
// run, and reports ns per packet for both and their ratio. Each frame
// repeats, so after its first run the flow is found (the common case);
// BPF_PROG_TEST_RUN itself costs most of the no-op's time.
//
//	go test -run '^$' -bench BenchmarkProgram -benchtime 1x ./bpf/
func BenchmarkProgram(b *testing.B) {
	d := loadForTest(b, Options{})
	// Test runs are on loopback: claim its slot, as Attach does for a port.
	cookie, err := NetnsCookie("")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := d.claimSlot(PortKey{NetnsCookie: cookie, Ifindex: 1}); err != nil {
		b.Fatal(err)
	}
	in, _ := d.Programs()
	benchVsNoop(b, in, noopProg(b))
}

func benchVsNoop(b *testing.B, prog, noop *ebpf.Program) {
	const (
		repeat = 200_000
		rounds = 7
	)
	mix := benchMix()
	var full, floor []float64 // mean ns per packet over the mix, per round
	for range b.N {
		for range rounds {
			var f, n time.Duration
			for _, frame := range mix {
				_, dn, err := noop.Benchmark(frame, repeat, nil)
				if err != nil {
					b.Fatal(err)
				}
				_, df, err := prog.Benchmark(frame, repeat, nil)
				if err != nil {
					b.Fatal(err)
				}
				f += df
				n += dn
			}
			full = append(full, float64(f)/float64(len(mix)))
			floor = append(floor, float64(n)/float64(len(mix)))
		}
	}
	// Medians resist the noise of a shared machine.
	fm, nm := median(full), median(floor)
	b.ReportMetric(fm, "ns/pkt")
	b.ReportMetric(nm, "noop-ns/pkt")
	b.ReportMetric(fm/nm, "x-noop")
	b.ReportMetric(0, "ns/op")
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
