package agent

import (
	"net/netip"
	"testing"

	"github.com/nsflow/nsflow/bpf"
)

// TestTopKeyPorts: which flows carry src_port and dst_port labels in
// nsflow_top_flow_bytes_total.
func TestTopKeyPorts(t *testing.T) {
	for _, tc := range []struct {
		name             string
		proto            uint8
		sport, dport     uint16
		ports            bool
		srcPort, dstPort uint16
		v6               bool
	}{
		{"tcp", 6, 40000, 80, true, 40000, 80, false},
		{"udp", 17, 5353, 53, true, 5353, 53, false},
		{"sctp", 132, 3868, 3868, true, 3868, 3868, false},
		{"icmp echo request", 1, 8, 0, true, 8, 0, false},
		{"icmp echo reply (0/0)", 1, 0, 0, true, 0, 0, false},
		{"icmpv6 echo request", 58, 128, 0, true, 128, 0, true},
		// ICMP's number over IPv6, and ICMPv6's over IPv4, are not
		// parsed: their 0/0 is no Echo Reply.
		{"icmp over ipv6", 1, 0, 0, false, 0, 0, true},
		{"icmpv6 over ipv4", 58, 0, 0, false, 0, 0, false},
		{"icmp type and code not read", 1, bpf.ICMPUnknown, bpf.ICMPUnknown, false, 0, 0, false},
		{"icmpv6 type and code not read", 58, bpf.ICMPUnknown, bpf.ICMPUnknown, false, 0, 0, true},
		{"gre", 47, 0, 0, false, 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src, dst := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
			if tc.v6 {
				src, dst = netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2")
			}
			k := bpf.FlowKey{Proto: tc.proto, Src: src, Dst: dst, SrcPort: tc.sport, DstPort: tc.dport}
			got := topKeyOf(k, &decision{})
			if got.ports != tc.ports || got.srcPort != tc.srcPort || got.dstPort != tc.dstPort {
				t.Errorf("ports %v %d/%d, want %v %d/%d", got.ports, got.srcPort, got.dstPort, tc.ports, tc.srcPort, tc.dstPort)
			}
		})
	}
}
