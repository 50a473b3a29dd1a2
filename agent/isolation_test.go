package agent

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
	"github.com/nsflow/nsflow/verify"
	"github.com/vishvananda/netns"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
)

// TestRogueLinkViolation wires a veth the topology does not declare
// between a and sw, with addresses of its own, under `agent --topology`
// (verify's classifier): the traffic over it is a violation although no
// address it uses is in the file, since the agent sees who holds them.
func TestRogueLinkViolation(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ai")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, Isolation: verify.NewModel(s).Classifier()})
	a, sw := p+"a", p+"sw"
	for _, args := range [][]string{
		{"link", "add", "rg0", "netns", a, "type", "veth", "peer", "name", "rg1", "netns", sw},
		{"-n", a, "addr", "add", "198.19.85.1/24", "dev", "rg0"},
		{"-n", sw, "addr", "add", "198.19.85.2/24", "dev", "rg1"},
		{"-n", a, "link", "set", "rg0", "up"},
		{"-n", sw, "link", "set", "rg1", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	waitAttached(t, r.a, a, "rg0", sw, "rg1")
	waitOperUp(t, a, "rg0", sw, "rg1")
	const n = 200
	sendUDP(t, s, a, sw, netip.MustParseAddrPort("198.19.85.2:5500"), n, 100)
	series := fmt.Sprintf(`nsflow_isolation_violation_packets_total{dst_netns=%q,src_netns=%q} %d`, sw, a, n)
	for deadline := time.Now().Add(25 * time.Second); !strings.Contains(scrape(t, r.url), series); {
		if time.Now().After(deadline) {
			t.Fatalf("no %s in:\n%s", series, grepLines(scrape(t, r.url), "violation"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestNamelessAddressesCountPerPortOnly sends from a's global addresses
// to a multicast group and to the broadcast address of a's bridge subnet:
// neither destination identifies a namespace, so the packets count on a's
// ports but in no namespace pair (before, they counted as traffic from a
// to "unknown", outside the host).
func TestNamelessAddressesCountPerPortOnly(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("am")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state})
	a := p + "a"
	if out, err := exec.Command("ip", "-n", a, "route", "add", "224.0.0.0/4", "dev", "eth-d").CombinedOutput(); err != nil {
		t.Fatalf("multicast route: %v: %s", err, out)
	}
	waitAttached(t, r.a, a, "eth-d", a, "eth-br")
	for _, tt := range []struct{ dst, port string }{
		{"224.0.0.251", "eth-d"},    // multicast
		{"198.18.41.255", "eth-br"}, // the bridge subnet's broadcast
	} {
		dst := netip.MustParseAddr(tt.dst)
		const n = 50
		sendDatagrams(t, s.NetnsPath(a), netip.AddrPortFrom(dst, 5353), n)
		// Scrape until the record's attribution is decided for good (a
		// record whose owner is unknown waits up to 5 s), then look.
		for end := time.Now().Add(30 * time.Second); !decided(r.a, dst); time.Sleep(200 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("the record to %s was never decided", dst)
			}
			scrape(t, r.url)
		}
		m := scrape(t, r.url)
		if strings.Contains(m, `dst_netns="unknown"`) {
			t.Errorf("%s counted as a pair to unknown:\n%s", dst, grepLines(m, `dst_netns="unknown"`))
		}
		if !strings.Contains(m, fmt.Sprintf(`nsflow_interface_transmit_packets_total{family="ipv4",interface=%q,netns=%q}`, tt.port, a)) {
			t.Errorf("the packets to %s were not counted on a's port %s", dst, tt.port)
		}
	}
}

// decided reports whether the agent has made its final decision on every
// egress record of a flow to dst (a bridge's ports see it too), and has
// seen one.
func decided(a *Agent, dst netip.Addr) bool {
	a.book.mu.Lock()
	defer a.book.mu.Unlock()
	seen := false
	for k, d := range a.book.decisions {
		if k.Dst.Unmap() == dst && k.Dir == bpf.Egress {
			if !d.pendingSince.IsZero() {
				return false
			}
			seen = true
		}
	}
	return seen
}

// attached reports whether the agent has its programs on every
// (namespace label, interface) pair given.
func attached(a *Agent, labelIfnames ...string) bool {
	for i := 0; i+1 < len(labelIfnames); i += 2 {
		if _, ok := a.attachedPort(labelIfnames[i], labelIfnames[i+1]); !ok {
			return false
		}
	}
	return true
}

// waitAttached waits up to 15 s until attached(a, labelIfnames...).
func waitAttached(t *testing.T, a *Agent, labelIfnames ...string) {
	t.Helper()
	waitUntil(t, 15*time.Second, func() bool { return attached(a, labelIfnames...) }, fmt.Sprintf("not attached within 15 s: %q", labelIfnames))
}

// TestTopFlowsICMP: echo replies and port unreachables between the same
// two addresses are two records that differ only in ICMP type and code.
// Their top flow series carry those in the port labels; before, both had
// empty ports, and the second series was refused at every scrape.
func TestTopFlowsICMP(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("at")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state})
	a, b := p+"a", p+"b"
	waitAttached(t, r.a, a, "eth-d", b, "eth-d")
	err := nsenter.Do(s.NetnsPath(a), func() error {
		ping, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return err
		}
		defer ping.Close()
		echo, err := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: 7, Seq: 1, Data: []byte("nsflow")}}).Marshal(nil)
		if err != nil {
			return err
		}
		if _, err := ping.WriteTo(echo, &net.IPAddr{IP: net.IPv4(198, 18, 40, 2)}); err != nil {
			return err
		}
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort("198.18.40.2:9"))) // closed
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("nsflow"))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		fmt.Sprintf(`nsflow_top_flow_bytes_total{dst="198.18.40.1",dst_netns=%q,dst_port="0",protocol="icmp",src="198.18.40.2",src_netns=%q,src_port="0"}`, a, b), // echo reply
		fmt.Sprintf(`nsflow_top_flow_bytes_total{dst="198.18.40.1",dst_netns=%q,dst_port="3",protocol="icmp",src="198.18.40.2",src_netns=%q,src_port="3"}`, a, b), // port unreachable
	}
	var m string
	for end := time.Now().Add(15 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if m = scrape(t, r.url); strings.Contains(m, want[0]) && strings.Contains(m, want[1]) {
			return
		}
	}
	t.Errorf("top flows lack %q:\n%s", want, grepLines(m, "nsflow_top_flow"))
}

// TestGoneNamespaceBroadcast: a namespace, the last one on its bridge
// subnet, sends to the subnet's broadcast address and is removed before
// its record is decided. The record is decided at the fold, without the
// namespace's subnets live any more: still a broadcast, per port only.
func TestGoneNamespaceBroadcast(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ab")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, FlowIdleTimeout: 2 * time.Second})
	waitReady(t, r)
	a, b := p+"a", p+"b"
	waitAttached(t, r.a, a, "eth-br")
	if err := ipCmd("-n", b, "link", "del", "eth-br"); err != nil { // a is alone on the subnet now
		t.Fatal(err)
	}
	sendDatagrams(t, s.NetnsPath(a), netip.MustParseAddrPort("198.18.41.255:5353"), 20)
	if err := netns.DeleteNamed(a); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(10 * time.Second); r.a.tracked(a); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("the removed namespace is still tracked")
		}
	}
	// The next pass (one a second) folds the namespace's records, deciding
	// them; its series stay for the retention (5 m by default).
	time.Sleep(3 * time.Second)
	if m := scrape(t, r.url); strings.Contains(m, `dst_netns="unknown"`) {
		t.Errorf("a broadcast of the removed namespace counted as traffic to unknown:\n%s", grepLines(m, `dst_netns="unknown"`))
	}
}
