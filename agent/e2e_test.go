package agent

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/traffic"
)

// pairTopology is two namespaces joined directly by a veth pair and also
// through a bridge that lives in a third namespace.
const pairTopology = `
name: e2e
namespaces:
  - name: a
  - name: b
  - name: sw
bridges:
  - name: br0
    namespace: sw
links:
  - endpoints:
      - {namespace: a, interface: eth-d, addresses: [198.18.40.1/30]}
      - {namespace: b, interface: eth-d, addresses: [198.18.40.2/30]}
  - endpoints:
      - {namespace: a, interface: eth-br, addresses: [198.18.41.1/24]}
      - {bridge: br0, interface: pa}
  - endpoints:
      - {namespace: b, interface: eth-br, addresses: [198.18.41.2/24]}
      - {bridge: br0, interface: pb}
`

func parseSpec(t *testing.T, text string) *topology.Spec {
	t.Helper()
	s, err := topology.Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sendUDP sends n datagrams of payload bytes from netns a to server and
// fails unless every one arrived.
func sendUDP(t *testing.T, s *topology.Spec, from, to string, server netip.AddrPort, n uint64, payload int) {
	t.Helper()
	res, err := traffic.Measure(context.Background(), traffic.Flow{
		Proto: traffic.UDP, ClientNetns: s.NetnsPath(from), ServerNetns: s.NetnsPath(to),
		Server: server, Size: payload, Packets: n, Rate: 50000,
	})
	if err != nil {
		t.Fatalf("traffic %s -> %s: %v", from, to, err)
	}
	if res.Sent.Packets != n || res.Received.Packets != n {
		t.Fatalf("traffic %s -> %s: sent %d, received %d of %d datagrams", from, to, res.Sent.Packets, res.Received.Packets, n)
	}
}

// TestEndToEnd counts traffic from A to B over a direct veth pair and
// through a bridge and checks, through a real Prometheus, that the A-to-B
// counters rose by exactly what was sent: once per packet, although the
// bridge path crosses four attached ports.
func TestEndToEnd(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ag")
	s := up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state})
	pr := startPrometheus(t, strings.TrimSuffix(strings.TrimPrefix(r.url, "http://"), "/metrics"), "http")
	pr.waitValue(t, `up{job="nsflow"}`, 1)

	a, b, sw := p+"a", p+"b", p+"sw"
	const n, payload = 3000, 200
	frame := float64(traffic.WireBytes(payload, false))
	pair := fmt.Sprintf(`{src_netns=%q,dst_netns=%q,protocol="udp"}`, a, b)

	// Direct veth pair.
	sendUDP(t, s, a, b, netip.MustParseAddrPort("198.18.40.2:5301"), n, payload)
	pr.waitValue(t, "nsflow_netns_flow_packets_total"+pair, n)
	pr.waitValue(t, "nsflow_netns_flow_bytes_total"+pair, n*frame)
	pr.waitValue(t, fmt.Sprintf(`nsflow_netns_flow_port_packets_total{src_netns=%q,dst_netns=%q,protocol="udp",port="5301"}`, a, b), n)
	pr.waitValue(t, fmt.Sprintf(`nsflow_interface_receive_packets_total{netns=%q,interface="eth-d",family="ipv4"}`, b), n)
	pr.waitValue(t, fmt.Sprintf(`nsflow_interface_transmit_bytes_total{netns=%q,interface="eth-d",family="ipv4"}`, a), n*frame)

	// Through the bridge: seen at a's egress, both bridge ports and b's
	// ingress, counted once.
	sendUDP(t, s, a, b, netip.MustParseAddrPort("198.18.41.2:5302"), n, payload)
	pr.waitValue(t, "nsflow_netns_flow_packets_total"+pair, 2*n)
	pr.waitValue(t, "nsflow_netns_flow_bytes_total"+pair, 2*n*frame)
	pr.waitValue(t, fmt.Sprintf(`nsflow_interface_receive_packets_total{netns=%q,interface="pa",family="ipv4"}`, sw), n)
	pr.waitValue(t, fmt.Sprintf(`nsflow_interface_transmit_packets_total{netns=%q,interface="pb",family="ipv4"}`, sw), n)
	if v, ok := pr.query(t, fmt.Sprintf(`sum(nsflow_netns_flow_packets_total{src_netns=%q})`, sw)); ok && v != 0 {
		t.Errorf("traffic attributed to the bridge namespace: %v packets", v)
	}
	pr.waitValue(t, `nsflow_attached_programs{mode="tcx"}`, 6)
	pr.waitValue(t, `min(nsflow_scrape_collector_success)`, 1)

	// The exposition passes promtool's lint.
	text := scrape(t, r.url)
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	if !strings.Contains(text, `dst="198.18.40.2"`) || !strings.Contains(text, `dst_port="5301"`) {
		t.Errorf("top flows lack the direct flow:\n%s", grepLines(text, "nsflow_top_flow"))
	}
}

func grepLines(text, substr string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
