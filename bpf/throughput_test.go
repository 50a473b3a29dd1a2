package bpf

import (
	"encoding/json"
	"os/exec"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// BenchmarkVethThroughput measures a veth pair with nsflow attached on
// both ends against the same pair without, and with a no-op tcx program
// on both ends, in rounds of three runs whose order rotates: TCP single
// stream (Gbit/s) and UDP with 64-byte frames (packets per second
// received). iperf3 generates the traffic. Ten rounds: on a shared VM
// single 3-second runs spread by ±15%, so the medians need that many; the
// ratios are paired by round. It also reports the programs' mean run time from the
// kernel's BPF statistics (enabled through BPF_ENABLE_STATS for one more
// instrumented run only).
//
//	go test -run '^$' -bench BenchmarkVethThroughput -benchtime 1x ./bpf/
func BenchmarkVethThroughput(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Fatal("iperf3 is needed (Debian package iperf3)")
	}
	for _, proto := range []string{"tcp", "udp64"} {
		b.Run(proto, func(b *testing.B) {
			d := loadForTest(b, Options{})
			a, bns := newTestNS(b), newTestNS(b)
			ea, eb := vethPair(b, a, bns, 6)
			const rounds = 10
			attach := func() []*Attachment {
				var atts []*Attachment
				for _, e := range []*end{ea, eb} {
					att, err := d.Attach(e.NS.Path, e.Ifname)
					if err != nil {
						b.Fatal(err)
					}
					atts = append(atts, att)
				}
				return atts
			}
			detach := func(atts []*Attachment) {
				for _, att := range atts {
					if err := att.Detach(); err != nil {
						b.Fatal(err)
					}
				}
			}
			// A no-op tcx program on both ends: what any tc program on
			// the path costs, so the ratio can be split into the hook's
			// cost and nsflow's own.
			noop := noopProg(b)
			attachNoop := func() []link.Link {
				var ls []link.Link
				for _, e := range []*end{ea, eb} {
					for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
						e.NS.do(b, func() error {
							l, err := link.AttachTCX(link.TCXOptions{Interface: mustIndex(e.Ifname), Program: noop, Attach: at})
							if err != nil {
								return err
							}
							ls = append(ls, l)
							return nil
						})
					}
				}
				return ls
			}
			var bare, nop, inst []float64
			for i := 0; i < rounds*b.N; i++ {
				// Rotate which goes first, so a drift in the machine's
				// load does not favour one side.
				for j := 0; j < 3; j++ {
					switch (i + j) % 3 {
					case 0:
						bare = append(bare, iperf(b, proto, ea, eb))
					case 1:
						ls := attachNoop()
						nop = append(nop, iperf(b, proto, ea, eb))
						for _, l := range ls {
							if err := l.Close(); err != nil {
								b.Fatal(err)
							}
						}
					case 2:
						atts := attach()
						inst = append(inst, iperf(b, proto, ea, eb))
						detach(atts)
					}
				}
			}
			// The cost per run comes from one more instrumented run with
			// BPF statistics on; they are off in the paired runs, since
			// counting run time adds to every run and would bias the ratio.
			atts := attach()
			stats, err := d.EnableRunStats()
			if err != nil {
				b.Fatal(err)
			}
			c0, t0, _ := d.RunStats()
			iperf(b, proto, ea, eb)
			c1, t1, _ := d.RunStats()
			stats.Close()
			detach(atts)
			runs, runNs := c1-c0, t1-t0
			unit := "Gbit/s"
			if proto == "udp64" {
				unit = "kpps"
			}
			// Ratios are paired by round (its three runs are seconds
			// apart; the VM's speed drifts more than that between rounds).
			var ratio, noopRatio []float64
			for i := range bare {
				ratio = append(ratio, inst[i]/bare[i])
				noopRatio = append(noopRatio, nop[i]/bare[i])
			}
			b.Logf("%d rounds; nsflow/bare by round %.3f; no-op/bare %.3f", len(bare), ratio, noopRatio)
			b.ReportMetric(median(bare), "bare-"+unit)
			b.ReportMetric(median(inst), "nsflow-"+unit)
			b.ReportMetric(median(ratio), "ratio")
			b.ReportMetric(median(noopRatio), "noop-ratio")
			if runs > 0 {
				b.ReportMetric(float64(runNs)/float64(runs), "ns/run")
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

// iperf runs one 3-second iperf3 test from ea to eb and returns Gbit/s
// received (tcp) or thousands of packets per second received (udp64:
// 22-byte payloads, 64-byte frames).
func iperf(b *testing.B, proto string, ea, eb *end) float64 {
	b.Helper()
	port := "5201"
	srv := exec.Command("ip", "netns", "exec", eb.NS.Name, "iperf3", "-s", "-1", "-B", eb.IP.String(), "-p", port)
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	args := []string{"netns", "exec", ea.NS.Name, "iperf3", "-c", eb.IP.String(), "-p", port, "-B", ea.IP.String(), "-t", "3", "-J"}
	if proto == "udp64" {
		args = append(args, "-u", "-b", "0", "-l", "22")
	}
	var out []byte
	var err error
	for try := 0; try < 20; try++ { // until the server listens
		time.Sleep(100 * time.Millisecond)
		out, err = exec.Command("ip", args...).Output()
		if err == nil {
			break
		}
	}
	if err != nil {
		b.Fatalf("iperf3: %v: %s", err, out)
	}
	var r struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			Sum struct {
				Seconds     float64 `json:"seconds"`
				Packets     float64 `json:"packets"`
				LostPackets float64 `json:"lost_packets"`
			} `json:"sum"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		b.Fatalf("iperf3 output: %v", err)
	}
	if proto == "udp64" {
		if r.End.Sum.Seconds == 0 {
			b.Fatalf("iperf3: no UDP result: %s", out)
		}
		return (r.End.Sum.Packets - r.End.Sum.LostPackets) / r.End.Sum.Seconds / 1e3
	}
	return r.End.SumReceived.BitsPerSecond / 1e9
}
