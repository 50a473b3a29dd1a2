package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
	"github.com/vishvananda/netns"
)

// vanishTopology joins a watched namespace a to a namespace x that the
// agent does not watch, so a's traffic goes to an unknown destination.
const vanishTopology = `
name: vanish
namespaces:
  - name: a
  - name: x
links:
  - endpoints:
      - {namespace: a, interface: eth0, addresses: [198.18.44.1/30]}
      - {namespace: x, interface: eth0, addresses: [198.18.44.2/30]}
`

// TestVanishedNamespaceKeepsCounts: traffic from a namespace that is
// deleted before the agent could settle where it went (the destination
// is unknown, which waits out a grace period) is still counted, as a to
// unknown, once its records are evicted.
func TestVanishedNamespaceKeepsCounts(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("av")
	s := topotest.Up(t, parseSpec(t, vanishTopology), p)
	pin, state := pins(t)
	a := p + "a"
	r := startAgent(t, a, Config{PinPath: pin, StateFile: state, FlowIdleTimeout: 2 * time.Second})
	waitReady(t, r)

	const n, payload = 500, 100
	sendUDP(t, s, a, p+"x", netip.MustParseAddrPort("198.18.44.2:5401"), n, payload)
	// Gone at once: well within the grace for an unknown destination.
	if err := netns.DeleteNamed(a); err != nil {
		t.Fatal(err)
	}

	series := fmt.Sprintf(`nsflow_netns_flow_packets_total{dst_netns=%q,protocol="udp",src_netns=%q} `, UnknownNetns, a)
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		text := scrape(t, r.url)
		last = grepLines(text, "nsflow_netns_flow_packets_total")
		for _, line := range strings.Split(text, "\n") {
			if strings.HasPrefix(line, series) && strings.TrimPrefix(line, series) == fmt.Sprint(n) {
				return
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("want %s%d after the namespace vanished; have:\n%s", series, n, last)
}

// waitReady waits for the agent's first discovery and attach round.
func waitReady(t *testing.T, r *running) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !r.a.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("agent not ready after 20 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestShortLivedNamespace: a flow between two watched namespaces, one of
// which is deleted before any scrape decided the flow's records (a job
// that sends its results and exits), is counted once, to the right pair:
// neither as well toward "unknown" (the sender's egress record, decided
// after the receiver's address was gone) nor from "unknown" instead of
// the sender (the receiver's ingress record, decided after the sender
// was gone).
func TestShortLivedNamespace(t *testing.T) {
	testenv.RequireRoot(t)
	for _, vanishing := range []string{"receiver", "sender"} {
		t.Run(vanishing, func(t *testing.T) {
			p := testenv.Name("as")
			s := topotest.Up(t, parseSpec(t, pairTopology), p)
			pin, state := pins(t)
			r := startAgent(t, p, Config{PinPath: pin, StateFile: state, FlowIdleTimeout: 2 * time.Second})
			waitReady(t, r)

			const n = 300
			a, b := p+"a", p+"b"
			// Through the bridge, as containers on a host bridge.
			sendUDP(t, s, a, b, netip.MustParseAddrPort("198.18.41.2:5401"), n, 100)
			gone := b
			if vanishing == "sender" {
				gone = a
			}
			if err := netns.DeleteNamed(gone); err != nil {
				t.Fatal(err)
			}
			// Every record idles out (2 s) and is evicted, so decided
			// for good, by the passes (every second) of the next 6 s.
			time.Sleep(6 * time.Second)
			text := scrape(t, r.url)
			series := grepLines(text, "nsflow_netns_flow_packets_total{")
			want := fmt.Sprintf(`nsflow_netns_flow_packets_total{dst_netns=%q,protocol="udp",src_netns=%q} %d`, b, a, n)
			if !strings.Contains(text, want+"\n") {
				t.Errorf("want %s; have:\n%s", want, series)
			}
			for _, l := range strings.Split(series, "\n") {
				if strings.Contains(l, UnknownNetns) && strings.Contains(l, p) {
					t.Errorf("counted toward %q as well: %s", UnknownNetns, l)
				}
			}
		})
	}
}

// TestFailedDeleteCountsOnce: an eviction folds a flow's record into the
// saved totals, then fails to delete it from the kernel, and so do the
// next passes' attempts to finish it, while the flow sends more. Until a
// pass deletes the record, scrapes must show every packet once: not the
// folded counts plus the record again, nor what it gained folded once
// per attempt; and the total must not drop when the record finally goes.
func TestFailedDeleteCountsOnce(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("af")
	s := topotest.Up(t, parseSpec(t, vanishTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, FlowIdleTimeout: 2 * time.Second})
	waitReady(t, r)

	var failed atomic.Int64
	r.a.mu.Lock()
	deleteFlows := r.a.deleteFlows
	r.a.deleteFlows = func(keys []bpf.FlowKey) (int, error) {
		failed.Add(1)
		return 0, errors.New("injected: delete failed")
	}
	r.a.mu.Unlock()

	// One flow (fixed source port), so its later packets go to the same
	// record. a and x are both watched: it counts where x receives it.
	a, x := p+"a", p+"x"
	flow := newUDPFlow(t, s.NetnsPath(a), s.NetnsPath(x),
		netip.MustParseAddrPort("198.18.44.1:40001"), netip.MustParseAddrPort("198.18.44.2:5402"))
	series := fmt.Sprintf(`nsflow_netns_flow_packets_total{dst_netns=%q,protocol="udp",src_netns=%q} `, x, a)
	value := func() string {
		for _, l := range strings.Split(scrape(t, r.url), "\n") {
			if v, ok := strings.CutPrefix(l, series); ok {
				return v
			}
		}
		return "absent"
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		waitUntil(t, 20*time.Second, cond, fmt.Sprintf("no %s within 20 s", what))
	}

	// The flow's top-flows series shows its record whole: it must not
	// drop to what the record gained since the fold.
	topBytes := func() float64 {
		for _, l := range strings.Split(scrape(t, r.url), "\n") {
			if strings.HasPrefix(l, "nsflow_top_flow_bytes_total{") && strings.Contains(l, `src_port="40001"`) {
				f := strings.Fields(l)
				v, err := strconv.ParseFloat(f[len(f)-1], 64)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
		}
		return -1
	}

	const n1, n2 = 200, 50
	flow.send(t, n1)
	waitFor("failed eviction", func() bool { return failed.Load() >= 1 })
	if v := value(); v != fmt.Sprint(n1) {
		t.Errorf("after the failed delete: %s%s, want %d", series, v, n1)
	}
	top1 := topBytes()
	flow.send(t, n2)
	at := failed.Load()
	waitFor("two more failed attempts", func() bool { return failed.Load() >= at+2 })
	if v := value(); v != fmt.Sprint(n1+n2) {
		t.Errorf("after more traffic and failed attempts to finish the eviction: %s%s, want %d", series, v, n1+n2)
	}
	if top2 := topBytes(); top1 <= 0 || top2 <= top1 {
		t.Errorf("the flow's top-flows bytes went from %v to %v after %d more packets, want a rise", top1, top2, n2)
	}

	r.a.mu.Lock()
	r.a.deleteFlows = deleteFlows
	r.a.mu.Unlock()
	waitFor("recovery", func() bool {
		r.a.book.mu.Lock()
		defer r.a.book.mu.Unlock()
		return len(r.a.book.st.Inflight) == 0
	})
	if v := value(); v != fmt.Sprint(n1+n2) {
		t.Errorf("after the record was deleted: %s%s, want %d", series, v, n1+n2)
	}
}

// udpFlow is one UDP flow, a fixed 5-tuple, between two namespaces.
type udpFlow struct {
	cl, srv *net.UDPConn
	dst     netip.AddrPort
}

// newUDPFlow opens the flow's sockets: each stays in the namespace it was
// opened in.
func newUDPFlow(t *testing.T, fromNS, toNS string, src, dst netip.AddrPort) *udpFlow {
	t.Helper()
	f := &udpFlow{dst: dst}
	for _, o := range []struct {
		ns   string
		addr netip.AddrPort
		c    **net.UDPConn
	}{{toNS, dst, &f.srv}, {fromNS, src, &f.cl}} {
		err := nsenter.Do(o.ns, func() (err error) {
			*o.c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(o.addr))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { (*o.c).Close() })
	}
	return f
}

// send sends n datagrams and fails unless all of them arrive.
func (f *udpFlow) send(t *testing.T, n int) {
	t.Helper()
	buf := make([]byte, 100)
	for i := range n {
		if _, err := f.cl.WriteToUDPAddrPort(buf, f.dst); err != nil {
			t.Fatal(err)
		}
		if i%20 == 19 || i == n-1 { // a few at a time: no socket buffer overflows
			for range i%20 + 1 {
				f.srv.SetReadDeadline(time.Now().Add(2 * time.Second))
				if _, _, err := f.srv.ReadFromUDPAddrPort(buf); err != nil {
					t.Fatalf("datagram %d of %d did not arrive: %v", i+1, n, err)
				}
			}
		}
	}
}

// TestScrapeWhileStopping: scrapes that come while the agent stops, or
// after (the web server outlives it by a moment), get an error instead of
// reading the maps the agent closes (a data race under -race before).
func TestScrapeWhileStopping(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("aw")
	topotest.Up(t, parseSpec(t, vanishTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state})
	waitReady(t, r)

	done := make(chan struct{})
	scraped := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-done:
				scraped <- n
				return
			default:
			}
			r.a.Ports()
			r.a.Flows()
			n++
		}
	}()
	time.Sleep(100 * time.Millisecond)
	r.stop()
	close(done)
	if n := <-scraped; n == 0 {
		t.Fatal("no scrape ran")
	}
	if _, err := r.a.Ports(); !errors.Is(err, errStopped) {
		t.Errorf("ports after stop: %v, want %v", err, errStopped)
	}
}

// TestNamespaceRecreatedUnderItsName: a named namespace is deleted and at
// once made anew under its name (a new namespace, another inode), wired
// as before. The agent follows: the new one is watched, attached and
// counted under the name, each packet once.
func TestNamespaceRecreatedUnderItsName(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("an")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state})
	waitReady(t, r)
	a, b := p+"a", p+"b"
	dst := netip.MustParseAddrPort("198.18.40.2:5501")
	pair := fmt.Sprintf(`nsflow_netns_flow_packets_total{dst_netns=%q,protocol="udp",src_netns=%q}`, b, a)
	waitPair := func(n int) {
		t.Helper()
		waitLine(t, r.url, fmt.Sprintf("%s %d", pair, n), "nsflow_netns_flow_packets_total{")
	}
	sendUDP(t, s, a, b, dst, 40, 64)
	waitPair(40)

	if err := netns.DeleteNamed(b); err != nil {
		t.Fatal(err)
	}
	if err := ipCmd("netns", "add", b); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ipCmd("netns", "del", b) }) // not the topology's: down leaves it
	// a's end goes with the old b once nothing holds that namespace.
	waitUntil(t, 15*time.Second, func() bool { return ipCmd("-n", a, "link", "show", "eth-d") != nil }, "a's eth-d outlived the deleted namespace")
	if err := ipCmd("-n", a, "link", "add", "eth-d", "type", "veth", "peer", "name", "eth-d", "netns", b); err != nil {
		t.Fatal(err)
	}
	rewireDirect(t, a, b)
	waitAttached(t, r.a, a, "eth-d", b, "eth-d")
	sendUDP(t, s, a, b, dst, 60, 64)
	waitPair(100)
}

// TestDroppedAddressesKeepTheirRecords: records not decided yet when an
// address changes hands are counted toward whoever held it when they
// began. The direct veth pair is deleted right after a flow over it, with
// no scrape in between; then a's bridge address moves to the switch
// namespace right after a flow from it. Before, the first flow counted
// nowhere (its receiver no longer held the address) and the second
// toward the switch.
func TestDroppedAddressesKeepTheirRecords(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ad")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state})
	waitReady(t, r)
	a, b, sw := p+"a", p+"b", p+"sw"
	waitAttached(t, r.a, a, "eth-d", b, "eth-d", a, "eth-br", b, "eth-br")
	pair := func(src string) string {
		return fmt.Sprintf(`nsflow_netns_flow_packets_total{dst_netns=%q,protocol="udp",src_netns=%q}`, b, src)
	}

	sendUDP(t, s, a, b, netip.MustParseAddrPort("198.18.40.2:5601"), 50, 64)
	if err := ipCmd("-n", a, "link", "del", "eth-d"); err != nil {
		t.Fatal(err)
	}
	waitLine(t, r.url, pair(a)+" 50", "nsflow_netns_flow_packets_total{")

	sendUDP(t, s, a, b, netip.MustParseAddrPort("198.18.41.2:5602"), 30, 64)
	for _, args := range [][]string{
		{"-n", a, "addr", "del", "198.18.41.1/24", "dev", "eth-br"},
		{"-n", sw, "addr", "add", "198.18.41.1/24", "dev", p + "br0"},
	} {
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	waitLine(t, r.url, pair(a)+" 80", "nsflow_netns_flow_packets_total{")
	if m := scrape(t, r.url); strings.Contains(m, pair(sw)) {
		t.Errorf("the switch namespace, which took the address after the flow, is credited with it:\n%s", grepLines(m, "nsflow_netns_flow_packets_total{"))
	}
}

// TestDroppedAddressWhilePending: a flow to an address no namespace
// holds waits (up to 5 s) before it counts toward "unknown". Its sender
// drops its address meanwhile, its interface staying: the record still
// finds who held the address when it began, however long it waited.
func TestDroppedAddressWhilePending(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("aw")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, FlowIdleTimeout: 4 * time.Second})
	waitReady(t, r)
	a := p + "a"
	waitAttached(t, r.a, a, "eth-br")
	// A destination nobody holds, reachable at layer 2 by a static entry.
	if err := ipCmd("-n", a, "neigh", "add", "198.18.41.99", "lladdr", "02:00:00:00:00:99", "dev", "eth-br"); err != nil {
		t.Fatal(err)
	}
	const n = 25
	sendDatagrams(t, s.NetnsPath(a), netip.MustParseAddrPort("198.18.41.99:5700"), n)
	if err := ipCmd("-n", a, "addr", "del", "198.18.41.1/24", "dev", "eth-br"); err != nil {
		t.Fatal(err)
	}
	waitLine(t, r.url, fmt.Sprintf(`nsflow_netns_flow_packets_total{dst_netns="unknown",protocol="udp",src_netns=%q} %d`, a, n), "nsflow_netns_flow_packets_total{")
}
