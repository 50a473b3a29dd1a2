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
	}{
		{"tcp", 6, 40000, 80, true, 40000, 80},
		{"udp", 17, 5353, 53, true, 5353, 53},
		{"sctp", 132, 3868, 3868, true, 3868, 3868},
		{"icmp echo request", 1, 8, 0, true, 8, 0},
		{"icmp echo reply (0/0)", 1, 0, 0, true, 0, 0},
		{"icmpv6 echo request", 58, 128, 0, true, 128, 0},
		{"icmp type and code not read", 1, bpf.ICMPUnknown, bpf.ICMPUnknown, false, 0, 0},
		{"icmpv6 type and code not read", 58, bpf.ICMPUnknown, bpf.ICMPUnknown, false, 0, 0},
		{"gre", 47, 0, 0, false, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := bpf.FlowKey{Proto: tc.proto, Src: netip.MustParseAddr("198.18.0.1"), Dst: netip.MustParseAddr("198.18.0.2"),
				SrcPort: tc.sport, DstPort: tc.dport}
			got := topKeyOf(k, &decision{})
			if got.ports != tc.ports || got.srcPort != tc.srcPort || got.dstPort != tc.dstPort {
				t.Errorf("ports %v %d/%d, want %v %d/%d", got.ports, got.srcPort, got.dstPort, tc.ports, tc.srcPort, tc.dstPort)
			}
		})
	}
}
