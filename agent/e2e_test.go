package agent

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/traffic"
	"github.com/vishvananda/netlink"
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
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	// An isolation classifier (verify's model in `nsflow agent
	// --topology`) that calls the direct link's traffic a violation.
	direct := netip.MustParseAddr("198.18.40.1")
	isolation := func(k bpf.FlowKey, netns string, _ func(netip.Addr) []string) (string, string, bool) {
		return p + "a", netns, k.Src == direct && netns == p+"b"
	}
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, Isolation: isolation})
	pr := startPrometheus(t, strings.TrimSuffix(strings.TrimPrefix(r.url, "http://"), "/metrics"), "http")
	pr.waitValue(t, `up{job="nsflow"}`, 1)

	a, b, sw := p+"a", p+"b", p+"sw"
	const n, payload = 3000, 200
	frame := float64(traffic.WireBytes(payload, false))
	pair := fmt.Sprintf(`{src_netns=%q,dst_netns=%q,protocol="udp"}`, a, b)

	// The agent's port counters move exactly as the kernel's interface
	// statistics do: the gap (traffic before the attach) stays constant.
	ports := []struct{ ns, ifname string }{{a, "eth-d"}, {b, "eth-d"}, {sw, "pa"}, {sw, "pb"}, {b, "eth-br"}}
	gaps := make([][4]int64, len(ports))
	for i, p := range ports {
		gaps[i] = kernelGap(t, r.a, s.NetnsPath(p.ns), p.ns, p.ifname)
	}

	// Direct veth pair.
	sendUDP(t, s, a, b, netip.MustParseAddrPort("198.18.40.2:5301"), n, payload)
	pr.waitValue(t, "nsflow_netns_flow_packets_total"+pair, n)
	pr.waitValue(t, "nsflow_netns_flow_bytes_total"+pair, n*frame)
	pr.waitValue(t, fmt.Sprintf(`nsflow_netns_flow_port_packets_total{src_netns=%q,dst_netns=%q,protocol="udp",port="5301"}`, a, b), n)
	pr.waitValue(t, fmt.Sprintf(`nsflow_isolation_violation_packets_total{src_netns=%q,dst_netns=%q}`, a, b), n)
	pr.waitValue(t, fmt.Sprintf(`nsflow_interface_receive_packets_total{netns=%q,interface="eth-d",family="ipv4"} >= bool %d`, b, n), 1)

	// Through the bridge: seen at a's egress, both bridge ports and b's
	// ingress, counted once.
	sendUDP(t, s, a, b, netip.MustParseAddrPort("198.18.41.2:5302"), n, payload)
	pr.waitValue(t, "nsflow_netns_flow_packets_total"+pair, 2*n)
	pr.waitValue(t, "nsflow_netns_flow_bytes_total"+pair, 2*n*frame)
	pr.waitValue(t, fmt.Sprintf(`nsflow_interface_transmit_packets_total{netns=%q,interface="pb",family="ipv4"} >= bool %d`, sw, n), 1)
	if v, ok := pr.query(t, fmt.Sprintf(`sum(nsflow_netns_flow_packets_total{src_netns=%q})`, sw)); ok && v != 0 {
		t.Errorf("traffic attributed to the bridge namespace: %v packets", v)
	}
	for i, p := range ports {
		if g := kernelGap(t, r.a, s.NetnsPath(p.ns), p.ns, p.ifname); g != gaps[i] {
			t.Errorf("%s in %s: kernel minus agent was %v (rx packets, rx bytes, tx packets, tx bytes), now %v", p.ifname, p.ns, gaps[i], g)
		}
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

// kernelGap returns how far the kernel's statistics of an interface are
// ahead of the agent's counters for it (packets and bytes, both
// directions), read at a moment when the kernel's did not move.
func kernelGap(t *testing.T, a *Agent, nsPath, label, ifname string) [4]int64 {
	t.Helper()
	kernel := func() [4]int64 {
		var st [4]int64
		err := nsenter.Do(nsPath, func() error {
			l, err := netlink.LinkByName(ifname)
			if err != nil {
				return err
			}
			s := l.Attrs().Statistics
			st = [4]int64{int64(s.RxPackets), int64(s.RxBytes), int64(s.TxPackets), int64(s.TxBytes)}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	for range 50 {
		before := kernel()
		ports, err := a.Ports()
		if err != nil {
			t.Fatal(err)
		}
		if kernel() != before {
			continue // a packet went by meanwhile
		}
		var ours [4]int64
		for _, p := range ports {
			if p.Netns == label && p.Interface == ifname {
				ours[0] += int64(p.ReceivePackets)
				ours[1] += int64(p.ReceiveBytes)
				ours[2] += int64(p.TransmitPackets)
				ours[3] += int64(p.TransmitBytes)
			}
		}
		return [4]int64{before[0] - ours[0], before[1] - ours[1], before[2] - ours[2], before[3] - ours[3]}
	}
	t.Fatalf("%s in %s never quiet", ifname, label)
	return [4]int64{}
}
