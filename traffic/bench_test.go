package traffic

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

// BenchmarkUDP64 reports the generator's rate for 64-byte frames on one
// veth pair; BenchmarkTCP its single-stream bulk throughput. Run with
// -benchtime 1x: each iteration is a one-second flow.
func BenchmarkUDP64(b *testing.B) {
	p := newPair(b)
	size, _ := PayloadForFrame(64, false)
	for b.Loop() {
		res, err := Measure(context.Background(), Flow{Proto: UDP, ClientNetns: p.clientNS, ServerNetns: p.serverNS,
			Server: netip.AddrPortFrom(p.server4, 0), Size: size, Duration: time.Second})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(res.Mpps(), "Mpps")
		b.ReportMetric(float64(res.Lost)/float64(max(res.Sent.Packets, 1)), "lost/sent")
		b.ReportMetric(float64(res.Sent.Packets)/float64(max(res.SendCalls, 1)), "pkts/call")
	}
}

func BenchmarkTCP(b *testing.B) {
	p := newPair(b)
	for b.Loop() {
		res, err := Measure(context.Background(), Flow{Proto: TCP, ClientNetns: p.clientNS, ServerNetns: p.serverNS,
			Server: netip.AddrPortFrom(p.server4, 0), Duration: time.Second})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(res.Gbps(), "Gbit/s")
	}
}
