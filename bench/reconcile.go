package bench

import (
	"fmt"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/traffic"
)

// reconcile lists a sample's checks:
//   - every interface on the path, each direction: nsflow's counters
//     against the kernel's statistics, packets (skbs) and bytes
//     (instrumented samples);
//   - UDP: the datagrams the generator sent against nsflow's IPv4 or IPv6
//     UDP class at the client's and the server's interface, and what the
//     generator received and lost against the server namespace's UDP
//     counters (every sample);
//   - TCP: bytes the generator wrote against bytes it read. The generator
//     sees a byte stream, not segments, so TCP packets are held to
//     account by the nsflow-against-kernel checks only.
func reconcile(proto traffic.Proto, pairs []pair, res []traffic.Result, before, after snapshot, on bool) []Check {
	var out []Check
	if on {
		for _, p := range pairs {
			for _, i := range p.ifaces {
				k := after.kernel[i].sub(before.kernel[i])
				b, a := before.ports[i], after.ports[i]
				name := i.Namespace + "/" + i.Name
				// tc egress runs before the veth transmits, so a packet
				// the veth then drops is in nsflow's count and in the
				// kernel's tx_dropped, whose bytes the kernel does not
				// count: bytes are compared only when nothing dropped.
				tx := newCheck(name+" tx", "nsflow", "kernel tx + tx_dropped", portDelta(a, b, bpf.Egress, nil),
					traffic.Counts{Packets: k.TxPackets + k.TxDropped, Bytes: k.TxBytes}, true, k.TxDropped == 0)
				if k.TxDropped > 0 {
					tx.Note = fmt.Sprintf("%d dropped by the device; bytes not comparable", k.TxDropped)
				}
				out = append(out,
					newCheck(name+" rx", "nsflow", "kernel rx", portDelta(a, b, bpf.Ingress, nil),
						traffic.Counts{Packets: k.RxPackets, Bytes: k.RxBytes}, true, true),
					tx)
			}
		}
	}
	for n, p := range pairs {
		r := res[n]
		switch proto {
		case traffic.UDP:
			v6 := p.serverAddr.Is6()
			wb := uint64(traffic.WireBytes(p.size, v6))
			wire := func(n uint64) traffic.Counts { return traffic.Counts{Packets: n, Bytes: n * wb} }
			u := after.udp[p.server.netns].Sub(before.udp[p.server.netns])
			if on {
				fam, l4 := bpf.IPv4, bpf.UDP
				if v6 {
					fam = bpf.IPv6
				}
				class := &portClass{fam, l4}
				// Egress runs before any device drop: all sent. What
				// reached the server's ingress was either read by the
				// generator or dropped by its socket (InErrors).
				out = append(out,
					newCheck(p.client.Namespace+"/"+p.client.Name+" tx udp", "nsflow", "generator sent",
						portDelta(after.ports[p.client], before.ports[p.client], bpf.Egress, class), wire(r.Sent.Packets), true, true),
					newCheck(p.server.Namespace+"/"+p.server.Name+" rx udp", "nsflow", "generator received + kernel udp InErrors",
						portDelta(after.ports[p.server], before.ports[p.server], bpf.Ingress, class), wire(r.Received.Packets+u.InErrors), true, true))
			}
			out = append(out,
				newCheck(p.server.Namespace+" udp received", "generator", "kernel udp InDatagrams",
					traffic.Counts{Packets: r.Received.Packets}, traffic.Counts{Packets: u.InDatagrams}, true, false),
				lostCheck(p, r.Lost, u.InErrors, before, after))
		case traffic.TCP:
			out = append(out, newCheck(fmt.Sprintf("%s tcp stream", p), "generator read", "generator written",
				r.Received, r.Sent, false, true))
		}
	}
	return out
}

type portClass struct {
	fam bpf.Family
	l4  bpf.L4
}

// portDelta is after - before of one direction, all classes or one.
func portDelta(after, before bpf.PortStats, d bpf.Direction, c *portClass) traffic.Counts {
	get := func(s bpf.PortStats) bpf.Counter {
		if c != nil {
			return s.Get(d, c.fam, c.l4)
		}
		return s.Dir(d)
	}
	a, b := get(after), get(before)
	return traffic.Counts{Packets: a.Packets - b.Packets, Bytes: a.Bytes - b.Bytes}
}

// lostCheck accounts for the datagrams the generator lost: its socket
// dropped InErrors of them, and devices on the way the rest. A veth
// counts a packet it could not deliver (the peer's backlog full) as
// tx_dropped of the sending end, but it may be any packet, say a flooded
// ARP request, so device drops bound the rest rather than equal it: the
// check holds when InErrors <= lost <= InErrors + forward tx_dropped.
func lostCheck(p pair, lost, inErrors uint64, before, after snapshot) Check {
	var dropped uint64
	for _, i := range p.forward() {
		dropped += after.kernel[i].TxDropped - before.kernel[i].TxDropped
	}
	c := newCheck(p.server.Namespace+" udp lost", "generator", "kernel udp InErrors (+ up to path tx_dropped)",
		traffic.Counts{Packets: lost}, traffic.Counts{Packets: inErrors}, true, false)
	if lost > inErrors && lost-inErrors <= dropped {
		c.PacketsDiff, c.OK = 0, true
		c.RightCount.Packets = lost
	}
	if lost > inErrors+dropped {
		c.PacketsDiff = int64(lost) - int64(inErrors+dropped)
	}
	if dropped > 0 {
		c.Note = fmt.Sprintf("%d packets dropped by devices toward the server, %d of them the generator's", dropped, max(lost, inErrors)-inErrors)
	}
	return c
}
