package bpf

import (
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
)

// The exactness tests send known traffic across real veths and a bridge
// and require nsflow's counters to equal both what was sent and the
// kernel's interface statistics, with no difference.

type exactCase struct {
	proto string // "udp" or "tcp"
	mode  gsoMode
	v6    bool
}

// gsoMode is how super-packets come about.
type gsoMode string

const (
	// gsoOff: no super-packets at all (TSO/GSO/GRO off, gso_max_segs 1).
	gsoOff gsoMode = "gso-off"
	// gsoSoftware: the stack builds GSO packets (UDP: UDP_SEGMENT) but the
	// veths lack TSO/GSO, so the kernel segments them after tc egress.
	gsoSoftware gsoMode = "sw-gso"
	// offloadOn: TSO/GSO/GRO on every veth: super-packets cross the veths
	// whole, and GRO merges packets before tc ingress.
	offloadOn gsoMode = "offload-on"
)

var exactCases = []exactCase{
	{proto: "udp", mode: gsoOff}, {proto: "udp", mode: gsoSoftware}, {proto: "udp", mode: offloadOn},
	{proto: "tcp", mode: gsoOff}, {proto: "tcp", mode: gsoSoftware}, {proto: "tcp", mode: offloadOn},
}

func (c exactCase) String() string {
	f := "ipv4"
	if c.v6 {
		f = "ipv6"
	}
	return f + "/" + c.proto + "/" + string(c.mode)
}

func (e *end) setMode(t testing.TB, m gsoMode) {
	e.setOffloads(t, m == offloadOn)
	segs := 65535
	if m == gsoOff {
		segs = 1
	}
	e.NS.do(t, func() error {
		l, err := netlink.LinkByName(e.Ifname)
		if err != nil {
			return err
		}
		return netlink.LinkSetGSOMaxSegs(l, segs)
	})
}

// watched is an attached end, with its interface statistics and nsflow
// counters taken together once setup traffic (a bridge's frames when its
// ports come up) is over.
type watched struct {
	*end
	att      *Attachment
	base     netlink.LinkStatistics
	baseStat PortStats
}

func watch(t *testing.T, d *Datapath, ends ...*end) []*watched {
	t.Helper()
	var ws []*watched
	for _, e := range ends {
		a, err := d.Attach(e.NS.Path, e.Ifname)
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, &watched{end: e, att: a})
	}
	return ws
}

// baseline records where the counters stand before the test's traffic.
func baseline(t *testing.T, d *Datapath, ws []*watched) {
	t.Helper()
	for try := 0; try < 20; try++ {
		ports := settle(t, d)
		for _, w := range ws {
			w.base = w.stats(t)
			w.baseStat = ports[w.att.Key()]
		}
		// A frame between the two reads would make them disagree.
		again := settle(t, d)
		if fmt.Sprint(again) == fmt.Sprint(ports) {
			return
		}
		for _, w := range ws {
			t.Logf("baseline try %d: %s now %+v", try, w.Ifname, w.delta(again[w.att.Key()]))
		}
	}
	t.Fatal("traffic during baseline")
}

// delta returns the counters since baseline.
func (w *watched) delta(now PortStats) PortStats {
	for d := range now.C {
		for f := range now.C[d] {
			for p := range now.C[d][f] {
				b := w.baseStat.C[d][f][p]
				c := &now.C[d][f][p]
				c.Packets -= b.Packets
				c.Segments -= b.Segments
				c.Bytes -= b.Bytes
			}
		}
	}
	return now
}

// hop is where a path's packets are seen: a watched end in a direction.
type hop struct {
	w   *watched
	dir Direction
}

func TestExactVeth(t *testing.T) {
	// Every case over IPv6 too.
	cases := exactCases
	for _, c := range exactCases {
		c.v6 = true
		cases = append(cases, c)
	}
	for _, tc := range cases {
		t.Run(tc.String(), func(t *testing.T) {
			d := loadForTest(t, Options{})
			a, b := newTestNS(t), newTestNS(t)
			ea, eb := vethPair(t, a, b, 1)
			if tc.v6 {
				enableIPv6(t, 1, ea, eb)
			}
			ws := watch(t, d, ea, eb)
			for _, w := range ws {
				w.setMode(t, tc.mode)
			}
			baseline(t, d, ws)
			aToB := []hop{{ws[0], Egress}, {ws[1], Ingress}}
			bToA := []hop{{ws[1], Egress}, {ws[0], Ingress}}
			runExact(t, d, tc, ws, ea, eb, aToB, bToA)
		})
	}
}

func TestExactBridge(t *testing.T) {
	for _, tc := range exactCases {
		t.Run(tc.String(), func(t *testing.T) {
			d := loadForTest(t, Options{})
			br, a, b := newTestNS(t), newTestNS(t), newTestNS(t)
			ends, ports := bridged(t, br, 2, a, b)
			ws := watch(t, d, ends[0], ports[0], ports[1], ends[1])
			for _, w := range ws {
				w.setMode(t, tc.mode)
			}
			baseline(t, d, ws)
			aToB := []hop{{ws[0], Egress}, {ws[1], Ingress}, {ws[2], Egress}, {ws[3], Ingress}}
			bToA := []hop{{ws[3], Egress}, {ws[2], Ingress}, {ws[1], Egress}, {ws[0], Ingress}}
			runExact(t, d, tc, ws, ends[0], ends[1], aToB, bToA)
		})
	}
}

func runExact(t *testing.T, d *Datapath, tc exactCase, ws []*watched, ea, eb *end, aToB, bToA []hop) {
	const (
		udpCount = 2000
		udpSize  = 200
		gsoSegs  = 8
		tcpBytes = 8 << 20
	)
	// What the first hop (sender's egress) and the last hop (receiver's
	// ingress) of each path must have counted, in segments of the test's
	// class. Hops between are checked against the interface statistics.
	var sentAB, recvAB, sentBA, recvBA uint64
	l4, fam := UDP, IPv4
	if tc.v6 {
		fam = IPv6
	}
	switch tc.proto {
	case "udp":
		segs := 1
		if tc.mode != gsoOff {
			segs = gsoSegs
		}
		udpTransfer(t, tc.v6, ea, eb, 4000, udpCount, udpSize, segs)
		udpTransfer(t, tc.v6, eb, ea, 4001, udpCount, udpSize, segs)
		settle(t, d)
		// udpTransfer checked that every datagram arrived.
		sentAB, recvAB, sentBA, recvBA = udpCount, udpCount, udpCount, udpCount
	case "tcp":
		l4 = TCP
		p := tcpTransfer(t, tc.v6, ea, eb, 4002, tcpBytes)
		settle(t, d)
		aOut, aIn := segs(t, p.a)
		bOut, bIn := segs(t, p.b)
		// A busy host may drop (and TCP resend) a few segments between
		// the ends, so each end is compared with its own count. The
		// accepted socket does not count the SYN-ACK its request socket
		// sent, hence bOut+1.
		sentAB, recvAB, sentBA, recvBA = aOut, bIn, bOut+1, aIn
	}

	ports, err := d.Ports()
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []struct {
		name       string
		hops       []hop
		sent, recv uint64
	}{{"a->b", aToB, sentAB, recvAB}, {"b->a", bToA, sentBA, recvBA}} {
		for i, h := range path.hops {
			s := h.w.delta(ports[h.w.att.Key()])
			got := s.Get(h.dir, fam, l4)
			if i == 0 && got.Segments != path.sent {
				t.Errorf("%s %s %s: %d %s/%s segments, sender counted %d",
					path.name, h.w.Ifname, h.dir, got.Segments, fam, l4, path.sent)
			}
			// Software GSO must have put super-packets through the
			// sender's egress, or the case tests nothing.
			if i == 0 && tc.mode == gsoSoftware && got.Packets >= got.Segments {
				t.Errorf("%s %s %s: %d packets for %d segments: no GSO packet reached tc egress",
					path.name, h.w.Ifname, h.dir, got.Packets, got.Segments)
			}
			if i == len(path.hops)-1 && got.Segments != path.recv {
				t.Errorf("%s %s %s: %d %s/%s segments, receiver counted %d",
					path.name, h.w.Ifname, h.dir, got.Segments, fam, l4, path.recv)
			}
			// Nothing else crossed: no ARP, no IPv6, no other protocol.
			if tot := s.Dir(h.dir); tot != got {
				t.Errorf("%s %s %s: total %+v differs from %s/%s %+v", path.name, h.w.Ifname, h.dir, tot, fam, l4, got)
			}
		}
	}
	for _, w := range ws {
		checkIfStats(t, w, w.delta(ports[w.att.Key()]), tc.mode)
	}
	if t.Failed() {
		for k, s := range ports {
			t.Logf("port %+v: in %+v out %+v", k, s.Dir(Ingress), s.Dir(Egress))
		}
		for _, w := range ws {
			t.Logf("attached %s: %+v", w.Ifname, w.att.Key())
		}
		_ = d.Flows(func(k FlowKey, s FlowStats) bool {
			if k.Proto != 6 && k.Proto != 17 {
				t.Logf("flow %+v: %+v", k, s)
			}
			return true
		})
	}
	checkFlowsMatchPorts(t, d, ports)
	if n, err := d.FlowOverflow(); err != nil || n != 0 {
		t.Errorf("FlowOverflow = %d, %v", n, err)
	}
}

// settle waits until the counters stop moving (delayed ACKs, packets in
// flight), so that the snapshot compared with the kernel is complete.
func settle(t *testing.T, d *Datapath) map[PortKey]PortStats {
	t.Helper()
	var last map[PortKey]PortStats
	for i := 0; i < 100; i++ {
		p, err := d.Ports()
		if err != nil {
			t.Fatal(err)
		}
		if last != nil && fmt.Sprint(p) == fmt.Sprint(last) {
			return p
		}
		last = p
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("counters still moving after 10 s")
	return nil
}

// checkIfStats compares a port's counters with the kernel's interface
// statistics since attach. Both count skbs and skb->len, except when the
// kernel segments a GSO packet after tc egress (gsoSoftware): tc saw the
// super-packet, the interface counts the segments, which nsflow counts
// as Segments; their bytes differ by the replicated headers.
func checkIfStats(t *testing.T, w *watched, s PortStats, m gsoMode) {
	t.Helper()
	st := w.stats(t)
	kernel := map[Direction]Counter{
		Egress:  {Packets: st.TxPackets - w.base.TxPackets, Bytes: st.TxBytes - w.base.TxBytes},
		Ingress: {Packets: st.RxPackets - w.base.RxPackets, Bytes: st.RxBytes - w.base.RxBytes},
	}
	// A packet the veth drops after tc egress (its peer's queue full)
	// counts as tx_dropped, without bytes: add it, and compare bytes
	// only when nothing was dropped.
	txDropped := st.TxDropped - w.base.TxDropped
	if k := kernel[Egress]; txDropped > 0 {
		t.Logf("%s: %d packets dropped after tc egress", w.Ifname, txDropped)
		k.Packets += txDropped
		k.Bytes = 0
		kernel[Egress] = k
	}
	for _, dir := range Directions {
		got := s.Dir(dir)
		k := kernel[dir]
		if dir == Egress && m == gsoSoftware {
			if got.Segments != k.Packets && txDropped == 0 {
				t.Errorf("%s %s: nsflow %d segments; kernel %d packets", w.Ifname, dir, got.Segments, k.Packets)
			}
			continue
		}
		if got.Packets != k.Packets || (k.Bytes != 0 && got.Bytes != k.Bytes) {
			t.Errorf("%s %s: nsflow %d packets (%d segments) %d bytes; kernel %d packets %d bytes",
				w.Ifname, dir, got.Packets, got.Segments, got.Bytes, k.Packets, k.Bytes)
		}
	}
}

// checkFlowsMatchPorts checks that, per port and direction, the flows add
// up to the port's IPv4 and IPv6 counters (nothing overflowed).
func checkFlowsMatchPorts(t *testing.T, d *Datapath, ports map[PortKey]PortStats) {
	t.Helper()
	type pd struct {
		p PortKey
		d Direction
	}
	sums := map[pd]Counter{}
	err := d.Flows(func(k FlowKey, s FlowStats) bool {
		x := pd{k.Port(), k.Dir}
		sums[x] = sums[x].Add(Counter{s.Packets, s.Segments, s.Bytes})
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	for p, s := range ports {
		for _, dir := range Directions {
			ip := s.Family(dir, IPv4).Add(s.Family(dir, IPv6))
			if got := sums[pd{p, dir}]; got != ip {
				t.Errorf("port %+v %s: flows add up to %+v, IP counters %+v", p, dir, got, ip)
			}
		}
	}
}

// The kernel loops a copy of every multicast and broadcast packet a host
// sends back to the sender, through the sending interface's tc ingress
// (pkt_type PACKET_LOOPBACK, no MAC header). The interface's statistics
// do not count those copies, so nsflow must not either.
func TestExactMulticastLoopback(t *testing.T) {
	d := loadForTest(t, Options{})
	a, b := newTestNS(t), newTestNS(t)
	ea, eb := vethPair(t, a, b, 3)
	enableIPv6(t, 3, ea, eb)
	ws := watch(t, d, ea, eb)
	baseline(t, d, ws)
	const n = 20
	a.do(t, func() error {
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: mustIndex(ea.Ifname), Dst: &net.IPNet{IP: net.IPv4(224, 0, 0, 0), Mask: net.CIDRMask(4, 32)}}); err != nil {
			return err
		}
		for _, dst := range []string{"224.0.0.251:5353", "198.18.3.255:5353", "[ff02::1%" + ea.Ifname + "]:5353"} {
			c, err := net.Dial("udp", dst)
			if err != nil {
				return err
			}
			if uc, ok := c.(*net.UDPConn); ok {
				setsockopt(t, uc, syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1)
			}
			for range n {
				if _, err := c.Write([]byte("nsflow")); err != nil {
					c.Close()
					return fmt.Errorf("%s: %w", dst, err)
				}
			}
			c.Close()
		}
		return nil
	})
	ports := settle(t, d)
	for _, w := range ws {
		s := w.delta(ports[w.att.Key()])
		checkIfStats(t, w, s, offloadOn)
		if w == ws[0] && s.Dir(Egress).Packets < 3*n {
			t.Errorf("%s: %d packets sent counted, want at least %d", w.Ifname, s.Dir(Egress).Packets, 3*n)
		}
	}
}
