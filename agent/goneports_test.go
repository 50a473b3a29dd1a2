package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/internal/testenv"
	"github.com/nsflow/nsflow/internal/topotest"
)

// TestGonePortKeepsLastCounts: an interface's series keeps the packets it
// sent after the last scrape when the interface is deleted, continues
// (instead of restarting from 0) when an interface of the same name comes
// back, and goes once the retention has passed with none live. A restart
// in between changes nothing, nor does a deletion while the agent is down.
func TestGonePortKeepsLastCounts(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ag")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	cfg := Config{PinPath: pin, StateFile: state, GoneRetention: 5 * time.Second, FlowIdleTimeout: 2 * time.Second}
	r := startAgent(t, p, cfg)
	a, b := p+"a", p+"b"
	waitAttached := func(want bool) {
		t.Helper()
		waitUntil(t, 15*time.Second, func() bool { return attached(r.a, a, "eth-d") == want }, fmt.Sprintf("eth-d attached: want %v", want))
	}
	value := func() (uint64, bool) { return sentIPv4(t, r, a, "eth-d") }
	want := func(what string, n uint64) {
		t.Helper()
		if v, ok := value(); !ok || v != n {
			t.Fatalf("%s: a's eth-d sent %d IPv4 packets by nsflow's count (series there: %v), want %d", what, v, ok, n)
		}
	}
	dst := netip.MustParseAddrPort("198.18.40.2:5401")
	waitAttached(true)
	sendUDP(t, s, a, b, dst, 30, 64)
	want("after 30 datagrams", 30)
	sendUDP(t, s, a, b, dst, 20, 64) // not scraped before the interface goes
	if err := ipCmd("-n", a, "link", "del", "eth-d"); err != nil {
		t.Fatal(err)
	}
	waitAttached(false)
	want("deleted", 50)
	// A restart keeps them (the state file), a crash too: they are saved
	// before the port's counters are deleted. The crash is the state file
	// as it was right after the deletion, without the save at the stop.
	snap, err := os.ReadFile(state)
	if err != nil {
		t.Fatal(err)
	}
	r.stop()
	if err := os.WriteFile(state, snap, 0o600); err != nil {
		t.Fatal(err)
	}
	r = startAgent(t, p, cfg)
	waitReady(t, r)
	want("deleted, after a crash", 50)

	// The same name again, on a new pair.
	if err := ipCmd("-n", a, "link", "add", "eth-d", "type", "veth", "peer", "name", "eth-d", "netns", b); err != nil {
		t.Fatal(err)
	}
	rewireDirect(t, a, b)
	waitAttached(true)
	sendUDP(t, s, a, b, dst, 10, 64)
	want("back under its name", 60)

	// Deleted again, while the agent is down: the next start keeps its
	// counts under its labels all the same.
	r.stop()
	if err := ipCmd("-n", a, "link", "del", "eth-d"); err != nil {
		t.Fatal(err)
	}
	r = startAgent(t, p, cfg)
	waitReady(t, r)
	want("deleted while the agent was down", 60)
	waitUntil(t, 15*time.Second, func() bool { _, ok := value(); return !ok }, "the series of the deleted eth-d outlived the retention")
}

// TestRenameKeepsKeptSeries: eth-d is deleted (its 30 packets kept), an
// eth-d comes back and sends 10 (the series shows 40), then is renamed.
// The eth-d series must not fall back to the 30 kept: it stays at 40,
// and the renamed port's counts go on under its new name (5 more).
// Renamed back, eth-d counts the port's 10 once, not twice, nor the 5 it
// sent as eth-e; it goes on from there, across a restart. Then eth-d is
// deleted, and another port, which sent 10 as eth-x, is renamed eth-d:
// the series goes on from its kept counts, without eth-x's history.
func TestRenameKeepsKeptSeries(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ak")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, GoneRetention: time.Minute})
	a, b := p+"a", p+"b"
	value := func(ifname string) (uint64, bool) { return sentIPv4(t, r, a, ifname) }
	want := func(what, ifname string, n uint64) {
		t.Helper()
		if v, ok := value(ifname); !ok || v != n {
			t.Fatalf("%s: a's %s sent %d IPv4 packets by nsflow's count (series there: %v), want %d", what, ifname, v, ok, n)
		}
	}
	dst := netip.MustParseAddrPort("198.18.40.2:5401")
	waitAttached(t, r.a, a, "eth-d")
	sendUDP(t, s, a, b, dst, 30, 64)
	if err := ipCmd("-n", a, "link", "del", "eth-d"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 15*time.Second, func() bool { return !attached(r.a, a, "eth-d") }, "the deleted eth-d is still attached")
	want("deleted", "eth-d", 30)
	if err := ipCmd("-n", a, "link", "add", "eth-d", "type", "veth", "peer", "name", "eth-d", "netns", b); err != nil {
		t.Fatal(err)
	}
	rewireDirect(t, a, b)
	waitAttached(t, r.a, a, "eth-d")
	sendUDP(t, s, a, b, dst, 10, 64)
	want("back under its name", "eth-d", 40)

	for _, args := range [][]string{{"set", "eth-d", "down"}, {"set", "eth-d", "name", "eth-e"}, {"set", "eth-e", "up"}} {
		if err := ipCmd(append([]string{"-n", a, "link"}, args...)...); err != nil {
			t.Fatal(err)
		}
	}
	waitAttached(t, r.a, a, "eth-e")
	want("renamed: the old name's series", "eth-d", 40)
	if v, ok := value("eth-e"); !ok || v < 10 {
		t.Errorf("renamed: eth-e's series %d (there: %v), want the port's counts, at least 10", v, ok)
	}
	sendUDP(t, s, a, b, dst, 5, 64)

	// Renamed back: eth-d shows the kept 30 and the port's 10, once.
	for _, args := range [][]string{{"set", "eth-e", "down"}, {"set", "eth-e", "name", "eth-d"}, {"set", "eth-d", "up"}} {
		if err := ipCmd(append([]string{"-n", a, "link"}, args...)...); err != nil {
			t.Fatal(err)
		}
	}
	waitAttached(t, r.a, a, "eth-d")
	want("renamed back", "eth-d", 40)
	sendUDP(t, s, a, b, dst, 7, 64)
	want("renamed back, 7 more", "eth-d", 47)
	r.stop()
	r = startAgent(t, p, Config{PinPath: pin, StateFile: state, GoneRetention: time.Minute})
	waitReady(t, r)
	waitAttached(t, r.a, a, "eth-d")
	want("after a restart", "eth-d", 47)
	sendUDP(t, s, a, b, dst, 3, 64)
	want("after a restart, 3 more", "eth-d", 50)

	// Another port renamed to a name with kept counts.
	if err := ipCmd("-n", a, "link", "del", "eth-d"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 15*time.Second, func() bool { return !attached(r.a, a, "eth-d") }, "the deleted eth-d is still attached")
	want("deleted again", "eth-d", 50)
	for _, args := range [][]string{
		{"-n", a, "link", "add", "eth-x", "type", "veth", "peer", "name", "eth-d", "netns", b},
		{"-n", a, "addr", "add", "198.18.40.1/30", "dev", "eth-x"},
		{"-n", b, "addr", "add", "198.18.40.2/30", "dev", "eth-d"},
		{"-n", a, "link", "set", "eth-x", "up"},
		{"-n", b, "link", "set", "eth-d", "up"},
	} {
		if err := ipCmd(args...); err != nil {
			t.Fatal(err)
		}
	}
	waitOperUp(t, a, "eth-x", b, "eth-d")
	waitAttached(t, r.a, a, "eth-x")
	sendUDP(t, s, a, b, dst, 10, 64)
	want("eth-x", "eth-x", 10)
	for _, args := range [][]string{{"set", "eth-x", "down"}, {"set", "eth-x", "name", "eth-d"}, {"set", "eth-d", "up"}} {
		if err := ipCmd(append([]string{"-n", a, "link"}, args...)...); err != nil {
			t.Fatal(err)
		}
	}
	waitAttached(t, r.a, a, "eth-d")
	waitOperUp(t, a, "eth-d", b, "eth-d")
	want("eth-x renamed eth-d", "eth-d", 50)
	sendUDP(t, s, a, b, dst, 4, 64)
	want("eth-x renamed eth-d, 4 more", "eth-d", 54)
}

// TestFailedPortDeleteCountsOnce: eth-d sends 20 packets and is renamed
// out of the interface filter; its counts are kept under eth-d, and the
// deletion of its counters fails. Until a pass deletes them, they must
// not show again under its new name, nor under the names it takes when
// it is watched again (eth-f, then eth-g), across a restart. Renamed back,
// eth-d counts on from the 20, whether its old counters were deleted
// meanwhile or not.
func TestFailedPortDeleteCountsOnce(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ap")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	cfg := Config{PinPath: pin, StateFile: state, GoneRetention: time.Minute,
		Interface: Filter{Include: regexp.MustCompile(`^eth`)}}
	r := startAgent(t, p, cfg)
	waitReady(t, r)
	a, b := p+"a", p+"b"
	value := func(ifname string) (uint64, bool) { return sentIPv4(t, r, a, ifname) }
	dst := netip.MustParseAddrPort("198.18.40.2:5402")
	waitAttached(t, r.a, a, "eth-d")
	sendUDP(t, s, a, b, dst, 20, 64)

	failed := make(chan struct{}, 1)
	r.a.mu.Lock()
	deletePort := r.a.deletePort
	r.a.deletePort = func(k bpf.PortKey) error {
		select {
		case failed <- struct{}{}:
		default:
		}
		return errors.New("injected failure")
	}
	r.a.mu.Unlock()
	if err := ipCmd("-n", a, "link", "set", "eth-d", "name", "zz-d"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-failed:
	case <-time.After(15 * time.Second):
		t.Fatal("the port's counters were not deleted")
	}
	if v, ok := value("eth-d"); !ok || v != 20 {
		t.Errorf("renamed out of the filter: eth-d's series %d (there: %v), want the 20 kept", v, ok)
	}
	if v, ok := value("zz-d"); ok {
		t.Errorf("zz-d's series %d: the counts kept under eth-d show twice", v)
	}

	r.a.mu.Lock()
	r.a.deletePort = deletePort
	r.a.mu.Unlock()
	rename := func(from, to string) {
		t.Helper()
		if err := ipCmd("-n", a, "link", "set", from, "name", to); err != nil {
			t.Fatal(err)
		}
		waitAttached(t, r.a, a, to)
	}
	rename("zz-d", "eth-f")
	if v, ok := value("eth-f"); ok {
		t.Errorf("watched again as eth-f: its series %d, want none: its counts are kept under eth-d", v)
	}
	sendUDP(t, s, a, b, dst, 5, 64)
	r.stop()
	r = startAgent(t, p, cfg)
	waitReady(t, r)
	rename("eth-f", "eth-g")
	if v, ok := value("eth-g"); !ok || v != 5 {
		t.Errorf("eth-f renamed eth-g after a restart: eth-g's series %d (there: %v), want the 5 it sent since", v, ok)
	}
	rename("eth-g", "eth-d")
	sendUDP(t, s, a, b, dst, 3, 64)
	if v, ok := value("eth-d"); !ok || v != 23 {
		t.Errorf("renamed back, 3 more: eth-d's series %d (there: %v), want 23", v, ok)
	}
}

// sentIPv4 is the IPv4 packets interface ifname of namespace netns sent,
// by the agent's interface series, and whether the series is there.
func sentIPv4(t *testing.T, r *running, netns, ifname string) (uint64, bool) {
	t.Helper()
	re := regexp.MustCompile(fmt.Sprintf(`(?m)^nsflow_interface_transmit_packets_total\{family="ipv4",interface=%q,netns=%q\} (\d+)$`, ifname, netns))
	m := re.FindStringSubmatch(scrape(t, r.url))
	if m == nil {
		return 0, false
	}
	v, _ := strconv.ParseUint(m[1], 10, 64)
	return v, true
}

// TestGonePortsExpireWhilePassesFail: the kept counts of a deleted
// interface go once the retention has passed, also while the eviction
// passes fail (here: the flow records of the deleted port cannot be
// deleted, so each pass stops at settling them).
func TestGonePortsExpireWhilePassesFail(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ae")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, GoneRetention: 2 * time.Second, FlowIdleTimeout: time.Second})
	waitReady(t, r)
	a, b := p+"a", p+"b"
	waitAttached(t, r.a, a, "eth-d")
	sendUDP(t, s, a, b, netip.MustParseAddrPort("198.18.40.2:5403"), 10, 64)
	if v, ok := sentIPv4(t, r, a, "eth-d"); !ok || v != 10 {
		t.Fatalf("eth-d sent %d IPv4 packets (series there: %v), want 10", v, ok)
	}
	var failed atomic.Int64
	r.a.mu.Lock()
	deleteFlows := r.a.deleteFlows
	r.a.deleteFlows = func([]bpf.FlowKey) (int, error) {
		failed.Add(1)
		return 0, errors.New("injected: delete failed")
	}
	r.a.mu.Unlock()
	t.Cleanup(func() {
		r.a.mu.Lock()
		r.a.deleteFlows = deleteFlows
		r.a.mu.Unlock()
	})
	if err := ipCmd("-n", a, "link", "del", "eth-d"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, ok := sentIPv4(t, r, a, "eth-d"); !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the deleted eth-d's series outlived its retention (%d failed deletes)", failed.Load())
		}
	}
	if failed.Load() < 2 {
		t.Errorf("%d failed deletes: the passes did not fail as the test means them to", failed.Load())
	}
}
