package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/nsflow/nsflow/internal/testenv"
)

// loadForTest loads a private Datapath (no pins) closed at cleanup.
func loadForTest(t testing.TB, opts Options) *Datapath {
	t.Helper()
	testenv.RequireRoot(t)
	d, err := Load(opts)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return d
}

// runFrame runs prog once on frame through BPF_PROG_TEST_RUN and checks
// the verdict is the pass-on one (TC_ACT_UNSPEC == TCX_NEXT == -1).
func runFrame(t testing.TB, prog *ebpf.Program, frame []byte) {
	t.Helper()
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		t.Fatalf("prog.Run: %v", err)
	}
	if int32(ret) != -1 {
		t.Fatalf("verdict %d, want -1 (TC_ACT_UNSPEC/TCX_NEXT)", int32(ret))
	}
}

func TestParse(t *testing.T) {
	type flow = parsedFlow
	const (
		pTCP    = 6
		pUDP    = 17
		pICMP   = 1
		pICMP6  = 58
		pHop    = 0
		pRoute  = 43
		pFrag   = 44
		pDstOpt = 60
		pAH     = 51
	)
	tests := []struct {
		name  string
		frame []byte
		fam   Family
		l4    L4
		flow  *flow // nil: no flow record
	}{
		{"ipv4 tcp", cat(eth(etherIPv4), ipv4(pTCP, v4A, v4B, 20, 0, 0, false), tcp(1234, 80, 0x02)),
			IPv4, TCP, &flow{pTCP, v4A, v4B, 1234, 80, 0x02}},
		{"ipv4 udp", cat(eth(etherIPv4), ipv4(pUDP, v4A, v4B, 108, 0, 0, false), udp(5353, 53, 100), zeros(100)),
			IPv4, UDP, &flow{pUDP, v4A, v4B, 5353, 53, 0}},
		{"ipv4 icmp echo", cat(eth(etherIPv4), ipv4(pICMP, v4A, v4B, 8, 0, 0, false), icmp(8, 0)),
			IPv4, ICMP, &flow{pICMP, v4A, v4B, 8, 0, 0}},
		{"ipv4 icmp port unreachable (type 3, code 3)", cat(eth(etherIPv4), ipv4(pICMP, v4A, v4B, 8, 0, 0, false), icmp(3, 3)),
			IPv4, ICMP, &flow{pICMP, v4A, v4B, 3, 3, 0}},
		// An ICMP packet whose type and code were not read has both
		// 0xffff: 0/0 would be Echo Reply.
		{"ipv4 icmp later fragment", cat(eth(etherIPv4), ipv4(pICMP, v4A, v4B, 16, 0, 185, false), zeros(16)),
			IPv4, ICMP, &flow{pICMP, v4A, v4B, 0xffff, 0xffff, 0}},
		{"truncated: ipv4 icmp header cut", cat(eth(etherIPv4), ipv4(pICMP, v4A, v4B, 8, 0, 0, false), icmp(0, 0)[:1]),
			IPv4, ICMP, &flow{pICMP, v4A, v4B, 0xffff, 0xffff, 0}},
		{"ipv6 icmpv6 later fragment", cat(eth(etherIPv6), ipv6(pFrag, v6A, v6B, 24), frag6(pICMP6, 4, false), zeros(16)),
			IPv6, ICMP, &flow{pICMP6, v6A, v6B, 0xffff, 0xffff, 0}},
		{"ipv4 options", cat(eth(etherIPv4), ipv4(pUDP, v4A, v4B, 8, 40, 0, false), udp(1, 2, 0)),
			IPv4, UDP, &flow{pUDP, v4A, v4B, 1, 2, 0}},
		{"ipv4 other proto (GRE)", cat(eth(etherIPv4), ipv4(47, v4A, v4B, 4, 0, 0, false), zeros(4)),
			IPv4, OtherL4, &flow{47, v4A, v4B, 0, 0, 0}},
		// SCTP's ports sit where UDP's do (the common header's first 4 bytes).
		{"ipv4 sctp", cat(eth(etherIPv4), ipv4(132, v4A, v4B, 12, 0, 0, false), udp(3868, 2905, 4)),
			IPv4, OtherL4, &flow{132, v4A, v4B, 3868, 2905, 0}},
		{"ipv6 sctp", cat(eth(etherIPv6), ipv6(132, v6A, v6B, 12), udp(36412, 38412, 4)),
			IPv6, OtherL4, &flow{132, v6A, v6B, 36412, 38412, 0}},
		// IPsec AH authenticates without encrypting: its payload's ports
		// are there to read, over IPv4 as over IPv6.
		{"ipv4 ah then tcp", cat(eth(etherIPv4), ipv4(pAH, v4A, v4B, 24+20, 0, 0, false), ah(pTCP), tcp(500, 4500, 0x10)),
			IPv4, TCP, &flow{pTCP, v4A, v4B, 500, 4500, 0x10}},
		{"ipv6 ah then udp", cat(eth(etherIPv6), ipv6(pAH, v6A, v6B, 24+8), ah(pUDP), udp(1701, 1702, 0)),
			IPv6, UDP, &flow{pUDP, v6A, v6B, 1701, 1702, 0}},
		{"truncated: ipv4 ah cut", cat(eth(etherIPv4), ipv4(pAH, v4A, v4B, 24, 0, 0, false), ah(pUDP)[:1]),
			IPv4, OtherL4, &flow{pAH, v4A, v4B, 0, 0, 0}},
		{"ipv4 first fragment", cat(eth(etherIPv4), ipv4(pUDP, v4A, v4B, 16, 0, 0, true), udp(7, 9, 100), zeros(8)),
			IPv4, UDP, &flow{pUDP, v4A, v4B, 7, 9, 0}},
		// A later fragment's payload looks like ports (0xabab): they must
		// not be read as such.
		{"ipv4 later fragment", cat(eth(etherIPv4), ipv4(pUDP, v4A, v4B, 16, 0, 2, false), filled(16, 0xab)),
			IPv4, UDP, &flow{pUDP, v4A, v4B, 0, 0, 0}},
		{"ipv4 minimum frame (60 B, padded)", cat(eth(etherIPv4), ipv4(pUDP, v4A, v4B, 9, 0, 0, false), udp(1000, 2000, 1), zeros(17)),
			IPv4, UDP, &flow{pUDP, v4A, v4B, 1000, 2000, 0}},
		{"ipv6 tcp", cat(eth(etherIPv6), ipv6(pTCP, v6A, v6B, 20), tcp(40000, 443, 0x12)),
			IPv6, TCP, &flow{pTCP, v6A, v6B, 40000, 443, 0x12}},
		{"ipv6 udp", cat(eth(etherIPv6), ipv6(pUDP, v6A, v6B, 8), udp(546, 547, 0)),
			IPv6, UDP, &flow{pUDP, v6A, v6B, 546, 547, 0}},
		{"ipv6 icmpv6", cat(eth(etherIPv6), ipv6(pICMP6, v6A, v6B, 8), icmp(128, 0)),
			IPv6, ICMP, &flow{pICMP6, v6A, v6B, 128, 0, 0}},
		{"ipv6 icmpv6 address unreachable (type 1, code 3)", cat(eth(etherIPv6), ipv6(pICMP6, v6A, v6B, 8), icmp(1, 3)),
			IPv6, ICMP, &flow{pICMP6, v6A, v6B, 1, 3, 0}},
		{"ipv6 icmp (v4 number) is other", cat(eth(etherIPv6), ipv6(pICMP, v6A, v6B, 8), icmp(8, 0)),
			IPv6, OtherL4, &flow{pICMP, v6A, v6B, 0, 0, 0}},
		{"ipv6 hop-by-hop, routing, dstopts then udp",
			cat(eth(etherIPv6), ipv6(pHop, v6A, v6B, 8+24+16+8), ext6(pRoute, 0), ext6(pDstOpt, 2), ext6(pUDP, 1), udp(10, 20, 0)),
			IPv6, UDP, &flow{pUDP, v6A, v6B, 10, 20, 0}},
		{"ipv6 first fragment tcp", cat(eth(etherIPv6), ipv6(pFrag, v6A, v6B, 28), frag6(pTCP, 0, true), tcp(5, 6, 0x10)),
			IPv6, TCP, &flow{pTCP, v6A, v6B, 5, 6, 0x10}},
		{"ipv6 later fragment", cat(eth(etherIPv6), ipv6(pFrag, v6A, v6B, 24), frag6(pUDP, 4, false), filled(16, 0xab)),
			IPv6, UDP, &flow{pUDP, v6A, v6B, 0, 0, 0}},
		{"ipv6 too many extension headers",
			cat(eth(etherIPv6), ipv6(pHop, v6A, v6B, 64), ext6(pDstOpt, 0), ext6(pDstOpt, 0), ext6(pDstOpt, 0), ext6(pDstOpt, 0), ext6(pDstOpt, 0), ext6(pDstOpt, 0), ext6(pUDP, 0), udp(1, 2, 0)),
			IPv6, OtherL4, &flow{pDstOpt, v6A, v6B, 0, 0, 0}},
		{"802.1Q ipv4 udp", cat(eth(etherIPv4, 100), ipv4(pUDP, v4A, v4B, 8, 0, 0, false), udp(11, 12, 0)),
			IPv4, UDP, &flow{pUDP, v4A, v4B, 11, 12, 0}},
		{"802.1ad+802.1Q ipv6 tcp", cat(eth(etherIPv6, 10, 20), ipv6(pTCP, v6A, v6B, 20), tcp(13, 14, 0x01)),
			IPv6, TCP, &flow{pTCP, v6A, v6B, 13, 14, 0x01}},
		{"arp", cat(eth(etherARP), zeros(28), zeros(18)), OtherFamily, OtherL4, nil},
		{"802.1Q arp", cat(eth(etherARP, 5), zeros(42)), OtherFamily, OtherL4, nil},
		// BPF_PROG_TEST_RUN refuses an untagged IP frame shorter than its
		// IP header, but not a tagged one: the tag reaches the same checks.
		{"truncated: 802.1Q, no ipv4 header", eth(etherIPv4, 3), OtherFamily, OtherL4, nil},
		{"truncated: 802.1Q, half an ipv4 header", cat(eth(etherIPv4, 3), ipv4(pTCP, v4A, v4B, 20, 0, 0, false)[:10]), OtherFamily, OtherL4, nil},
		{"truncated: ipv4 options cut", cat(eth(etherIPv4), ipv4(pTCP, v4A, v4B, 20, 20, 0, false)[:30]), OtherFamily, OtherL4, nil},
		{"truncated: vlan tag cut", cat(eth(etherIPv4, 7)[:14], []byte{0}), OtherFamily, OtherL4, nil},
		{"truncated: tcp header cut", cat(eth(etherIPv4), ipv4(pTCP, v4A, v4B, 20, 0, 0, false), tcp(1, 2, 0x02)[:8]),
			IPv4, TCP, &flow{pTCP, v4A, v4B, 0, 0, 0}},
		{"truncated: 802.1ad+802.1Q, half an ipv6 header", cat(eth(etherIPv6, 1, 2), ipv6(pUDP, v6A, v6B, 8)[:30]), OtherFamily, OtherL4, nil},
		{"truncated: ipv6 extension header cut", cat(eth(etherIPv6), ipv6(pHop, v6A, v6B, 8), ext6(pUDP, 1)[:1]),
			IPv6, OtherL4, &flow{pHop, v6A, v6B, 0, 0, 0}},
		{"truncated: after an ipv6 extension header's next-header field", cat(eth(etherIPv6), ipv6(pHop, v6A, v6B, 8), ext6(pUDP, 1)[:4]),
			IPv6, UDP, &flow{pUDP, v6A, v6B, 0, 0, 0}},
		// The common frames take a shorter path (parse_fast); its edges
		// must agree with the general parser's.
		{"ipv4 udp ending after the ports", cat(eth(etherIPv4), ipv4(pUDP, v4A, v4B, 8, 0, 0, false), udp(3, 4, 0)[:4]),
			IPv4, UDP, &flow{pUDP, v4A, v4B, 3, 4, 0}},
		{"ipv6 udp ending after the ports", cat(eth(etherIPv6), ipv6(pUDP, v6A, v6B, 8), udp(5, 6, 0)[:4]),
			IPv6, UDP, &flow{pUDP, v6A, v6B, 5, 6, 0}},
		{"truncated: ipv6 tcp header cut", cat(eth(etherIPv6), ipv6(pTCP, v6A, v6B, 20), tcp(1, 2, 0x02)[:8]),
			IPv6, TCP, &flow{pTCP, v6A, v6B, 0, 0, 0}},
		{"ethertype ipv6, version 4", cat(eth(etherIPv6), ipv4(pUDP, v4A, v4B, 8, 0, 0, false), udp(1, 2, 0), zeros(20)), OtherFamily, OtherL4, nil},
		{"ethertype ipv4, version 6", cat(eth(etherIPv4), ipv6(pUDP, v6A, v6B, 8), udp(1, 2, 0)), OtherFamily, OtherL4, nil},
		{"ipv4 bad ihl", func() []byte {
			h := ipv4(pUDP, v4A, v4B, 8, 0, 0, false)
			h[0] = 0x44
			return cat(eth(etherIPv4), h, udp(1, 2, 0))
		}(), OtherFamily, OtherL4, nil},
	}
	cookie, err := NetnsCookie("")
	if err != nil {
		t.Fatal(err)
	}
	// BPF_PROG_TEST_RUN runs on the loopback device of the test's
	// namespace. Both ways of counting a port are checked: in its claimed
	// slot, as for an attached port, and in the hash map.
	port := PortKey{NetnsCookie: cookie, Ifindex: 1}
	for _, claimed := range []bool{true, false} {
		d := loadForTest(t, Options{})
		if claimed {
			if _, err := d.claimSlot(port); err != nil {
				t.Fatal(err)
			}
		}
		ingress, egress := d.Programs()
		for _, tt := range tests {
			t.Run(fmt.Sprintf("slot=%v/%s", claimed, tt.name), func(t *testing.T) {
				clearMaps(t, d)
				runFrame(t, ingress, tt.frame)
				runFrame(t, egress, tt.frame)
				checkParsed(t, d, port, claimed, tt.frame, tt.fam, tt.l4, tt.flow)
			})
		}
	}
}

// parsedFlow is the flow a frame must be recorded as.
type parsedFlow struct {
	proto        uint8
	src, dst     netip.Addr
	sport, dport uint16
	flags        uint8
}

// checkParsed checks that a frame run once through each program was
// counted in exactly one class and, if it has one, as exactly one flow
// per direction.
func checkParsed(t *testing.T, d *Datapath, port PortKey, claimed bool, frame []byte, fam Family, l4 L4, flow *parsedFlow) {
	t.Helper()
	ports, err := d.Ports()
	if err != nil {
		t.Fatal(err)
	}
	var want PortStats
	one := Counter{Packets: 1, Segments: 1, Bytes: uint64(len(frame))}
	want.C[Ingress][fam][l4] = one
	want.C[Egress][fam][l4] = one
	if len(ports) != 1 || ports[port] != want {
		t.Errorf("ports = %+v\nwant %v: %+v", ports, port, want)
	}
	if inHash := d.objs.NsflowPorts.Lookup(nsflowPortKey{NetnsCookie: port.NetnsCookie, Ifindex: port.Ifindex}, new([]nsflowPortStats)) == nil; inHash == claimed {
		t.Errorf("port in hash map: %v, slot claimed: %v", inHash, claimed)
	}

	got := map[FlowKey]FlowStats{}
	if err := d.Flows(func(k FlowKey, s FlowStats) bool { got[k] = s; return true }); err != nil {
		t.Fatal(err)
	}
	wantFlows := 0
	if flow != nil {
		wantFlows = 2
		for _, dir := range Directions {
			k := FlowKey{NetnsCookie: port.NetnsCookie, Ifindex: port.Ifindex, Dir: dir, Proto: flow.proto,
				Src: flow.src, Dst: flow.dst, SrcPort: flow.sport, DstPort: flow.dport}
			s, ok := got[k]
			if !ok {
				t.Errorf("no flow %+v; have %+v", k, got)
				continue
			}
			if s.Packets != 1 || s.Segments != 1 || s.Bytes != uint64(len(frame)) || s.TCPFlags != flow.flags ||
				s.FirstSeen == 0 || s.LastSeen < s.FirstSeen {
				t.Errorf("flow %+v stats %+v, want 1 packet of %d B, flags %#x", k, s, len(frame), flow.flags)
			}
		}
	}
	if len(got) != wantFlows {
		t.Errorf("%d flows, want %d: %+v", len(got), wantFlows, got)
	}
	if n, err := d.FlowOverflow(); err != nil || n != 0 {
		t.Errorf("FlowOverflow = %d, %v; want 0", n, err)
	}
}

// clearMaps empties the port and flow tables of a test's own Datapath.
func clearMaps(t testing.TB, d *Datapath) {
	t.Helper()
	for _, m := range []*ebpf.Map{d.objs.NsflowPorts, d.objs.NsflowFlows} {
		var keys [][]byte
		var k []byte
		for {
			var next []byte
			var prev any
			if k != nil {
				prev = k
			}
			if err := m.NextKey(prev, &next); errors.Is(err, ebpf.ErrKeyNotExist) {
				break
			} else if err != nil {
				t.Fatal(err)
			}
			keys = append(keys, next)
			k = next
		}
		for _, k := range keys {
			if err := m.Delete(k); err != nil {
				t.Fatal(err)
			}
		}
	}

	// Flow cache entries of the deleted records must not count on.
	if err := d.bumpGenIf(false); err != nil {
		t.Fatal(err)
	}

	// The flow cache empty: its entries carry counts to the slots.
	zero := make([]nsflowFlowCacheEntry, d.flowCache.cpus)
	for i := range d.flowCache.n {
		if err := d.flowCache.put(i, zero); err != nil {
			t.Fatal(err)
		}
	}

	// Claimed slots keep their tag and claim, with counters back at zero.
	all, err := d.portSlots.all()
	if err != nil {
		t.Fatal(err)
	}
	for idx, slots := range all {
		k, ok := slots[0].tag()
		if !ok {
			continue
		}
		for i := range slots {
			slots[i].setTag(k, slots[i].L[0].Claim)
		}
		if err := d.portSlots.put(uint32(idx), slots); err != nil {
			t.Fatal(err)
		}
	}
}
