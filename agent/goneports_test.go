package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
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

// TestUnreadPortCountsKept: eth-d sends 20 packets and is renamed out of
// the interface filter while reading its counters fails. Its counts must
// not be lost with its counters: its series stays at 20 through passes
// that cannot read them, and once a read works they are kept under eth-d
// and the counters deleted. Watched again, it sends 5 more and is renamed
// out again, unread; the agent is stopped and started, and its first pass
// cannot read them either: eth-d shows the 25 until a pass reads them,
// and keeps them then.
func TestUnreadPortCountsKept(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("au")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	cfg := Config{PinPath: pin, StateFile: state, GoneRetention: time.Minute, FlowIdleTimeout: 2 * time.Second,
		Interface: Filter{Include: regexp.MustCompile(`^eth`)}}
	r := startAgent(t, p, cfg)
	waitReady(t, r)
	a, b := p+"a", p+"b"
	dst := netip.MustParseAddrPort("198.18.40.2:5403")
	waitAttached(t, r.a, a, "eth-d")
	k := r.a.attachment(a, "eth-d").Key()
	sendUDP(t, s, a, b, dst, 20, 64)

	// failReads makes the agent's reads of k's counters fail, and
	// returns a channel that is closed at the first failed read.
	failReads := func(r *running) <-chan struct{} {
		failed := make(chan struct{})
		var once sync.Once
		r.a.mu.Lock()
		read := r.a.readPort
		r.a.readPort = func(pk bpf.PortKey) (bpf.PortStats, bool, error) {
			if pk != k {
				return read(pk)
			}
			once.Do(func() { close(failed) })
			return bpf.PortStats{}, false, errors.New("injected failure")
		}
		r.a.mu.Unlock()
		return failed
	}
	restoreReads := func(r *running) {
		r.a.mu.Lock()
		r.a.readPort = r.a.dp.Port
		r.a.mu.Unlock()
	}
	renameOut := func(r *running) {
		t.Helper()
		failed := failReads(r)
		if err := ipCmd("-n", a, "link", "set", "eth-d", "name", "zz-d"); err != nil {
			t.Fatal(err)
		}
		select {
		case <-failed:
		case <-time.After(15 * time.Second):
			t.Fatal("the retired port's counters were not read")
		}
	}
	want := func(r *running, when string, n uint64) {
		t.Helper()
		if v, ok := sentIPv4(t, r, a, "eth-d"); !ok || v != n {
			t.Errorf("%s: eth-d's series %d (there: %v), want %d", when, v, ok, n)
		}
		if v, ok := sentIPv4(t, r, a, "zz-d"); ok {
			t.Errorf("%s: zz-d's series %d: it counted as eth-d", when, v)
		}
	}
	counters := func(r *running) (uint64, bool) {
		t.Helper()
		st, ok, err := r.a.dp.Port(k)
		if err != nil {
			t.Fatal(err)
		}
		return st.Get(bpf.Egress, bpf.IPv4, bpf.UDP).Packets, ok
	}
	waitDeleted := func(r *running) {
		t.Helper()
		waitUntil(t, 15*time.Second, func() bool { _, ok := counters(r); return !ok }, "the retired port's counters were not deleted")
	}

	renameOut(r)
	want(r, "renamed out, unread", 20)
	time.Sleep(3 * r.a.evictInterval()) // passes that cannot read them
	if n, ok := counters(r); !ok || n < 20 {
		t.Fatalf("after passes that could not read them: the counters hold %d UDP packets (there: %v), want 20 or more", n, ok)
	}
	want(r, "after passes that could not read it", 20)
	restoreReads(r)
	waitDeleted(r)
	want(r, "read at last", 20)

	if err := ipCmd("-n", a, "link", "set", "zz-d", "name", "eth-d"); err != nil {
		t.Fatal(err)
	}
	waitAttached(t, r.a, a, "eth-d")
	sendUDP(t, s, a, b, dst, 5, 64)
	want(r, "watched again, 5 more", 25)
	renameOut(r)
	want(r, "renamed out again, unread", 25)
	r.stop()
	// The next start's first pass cannot read them either.
	var failing atomic.Bool
	failing.Store(true)
	orig := readPortOf
	t.Cleanup(func() { readPortOf = orig }) // after the agent stops
	readPortOf = func(dp *bpf.Datapath) func(bpf.PortKey) (bpf.PortStats, bool, error) {
		return func(pk bpf.PortKey) (bpf.PortStats, bool, error) {
			if pk == k && failing.Load() {
				return bpf.PortStats{}, false, errors.New("injected failure")
			}
			return dp.Port(pk)
		}
	}
	r = startAgent(t, p, cfg)
	waitReady(t, r)
	want(r, "restarted, unread", 25)
	if n, ok := counters(r); !ok || n < 5 {
		t.Errorf("restarted, unread: the counters hold %d UDP packets (there: %v), want 5 or more", n, ok)
	}
	failing.Store(false)
	waitDeleted(r)
	want(r, "restarted, read", 25)
}

// TestUnreadPortSettledByAttach: eth-d sends 20 packets and is renamed out
// of the filter while reading its counters fails; renamed eth-e, it is
// watched again before an eviction pass retries the read (passes are 10
// seconds apart here). The attach reads the counters: the 20 are kept
// under eth-d, and eth-e's series starts from zero.
func TestUnreadPortSettledByAttach(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("as")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, GoneRetention: time.Minute,
		FlowIdleTimeout: 20 * time.Second, Interface: Filter{Include: regexp.MustCompile(`^eth`)}})
	waitReady(t, r)
	a, b := p+"a", p+"b"
	dst := netip.MustParseAddrPort("198.18.40.2:5404")
	waitAttached(t, r.a, a, "eth-d")
	k := r.a.attachment(a, "eth-d").Key()
	sendUDP(t, s, a, b, dst, 20, 64)

	failed := make(chan struct{}, 1)
	r.a.mu.Lock()
	r.a.readPort = func(pk bpf.PortKey) (bpf.PortStats, bool, error) {
		if pk != k {
			return r.a.dp.Port(pk)
		}
		select {
		case failed <- struct{}{}:
		default:
		}
		return bpf.PortStats{}, false, errors.New("injected failure")
	}
	r.a.mu.Unlock()
	if err := ipCmd("-n", a, "link", "set", "eth-d", "name", "zz-d"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-failed:
	case <-time.After(15 * time.Second):
		t.Fatal("the retired port's counters were not read")
	}
	r.a.mu.Lock()
	r.a.readPort = r.a.dp.Port
	r.a.mu.Unlock()
	if err := ipCmd("-n", a, "link", "set", "zz-d", "name", "eth-e"); err != nil {
		t.Fatal(err)
	}
	waitAttached(t, r.a, a, "eth-e")
	if v, ok := sentIPv4(t, r, a, "eth-d"); !ok || v != 20 {
		t.Errorf("eth-d's series %d (there: %v), want the 20 kept", v, ok)
	}
	if v, ok := sentIPv4(t, r, a, "eth-e"); ok {
		t.Errorf("eth-e's series %d before it sent anything: eth-d's counts show twice", v)
	}
	sendUDP(t, s, a, b, dst, 5, 64)
	if v, ok := sentIPv4(t, r, a, "eth-e"); !ok || v != 5 {
		t.Errorf("eth-e sent 5: its series %d (there: %v)", v, ok)
	}
	if v, ok := sentIPv4(t, r, a, "eth-d"); !ok || v != 20 {
		t.Errorf("after eth-e sent 5: eth-d's series %d (there: %v), want 20", v, ok)
	}
}

// TestUnreadPortWhileReattached: eth-d sends 20 packets and is renamed out
// of the filter while reading its counters fails; renamed eth-e, it is
// watched again. While its attach is held up, eviction passes that can
// read must leave the counts to the attach, and scrapes show them under
// eth-d, not eth-e. The attach cannot read them either: the counters,
// counting on, stay under eth-d (5 more: 25) until a pass reads them;
// then eth-d keeps the 25 and eth-e's series starts from zero.
func TestUnreadPortWhileReattached(t *testing.T) {
	testenv.RequireRoot(t)
	var gate atomic.Pointer[chan struct{}]
	entered := make(chan struct{}, 1)
	orig := attachIndex
	t.Cleanup(func() { attachIndex = orig }) // after the agent stops
	attachIndex = func(dp *bpf.Datapath, path string, idx int) (*bpf.Attachment, error) {
		if g := gate.Load(); g != nil {
			entered <- struct{}{}
			<-*g
		}
		return orig(dp, path, idx)
	}
	p := testenv.Name("aw")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, GoneRetention: time.Minute,
		FlowIdleTimeout: 2 * time.Second, Interface: Filter{Include: regexp.MustCompile(`^eth`)}})
	waitReady(t, r)
	a, b := p+"a", p+"b"
	dst := netip.MustParseAddrPort("198.18.40.2:5405")
	waitAttached(t, r.a, a, "eth-d")
	k := r.a.attachment(a, "eth-d").Key()
	sendUDP(t, s, a, b, dst, 20, 64)

	var failing atomic.Bool
	failed := make(chan struct{}, 1)
	r.a.mu.Lock()
	r.a.readPort = func(pk bpf.PortKey) (bpf.PortStats, bool, error) {
		if pk != k || !failing.Load() {
			return r.a.dp.Port(pk)
		}
		select {
		case failed <- struct{}{}:
		default:
		}
		return bpf.PortStats{}, false, errors.New("injected failure")
	}
	r.a.mu.Unlock()
	failing.Store(true)
	if err := ipCmd("-n", a, "link", "set", "eth-d", "name", "zz-d"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-failed:
	case <-time.After(15 * time.Second):
		t.Fatal("the retired port's counters were not read")
	}
	want := func(when string, d uint64, e uint64) {
		t.Helper()
		if v, ok := sentIPv4(t, r, a, "eth-d"); !ok || v != d {
			t.Errorf("%s: eth-d's series %d (there: %v), want %d", when, v, ok, d)
		}
		v, ok := sentIPv4(t, r, a, "eth-e")
		if e == 0 && ok || e != 0 && v != e {
			t.Errorf("%s: eth-e's series %d (there: %v), want %d", when, v, ok, e)
		}
	}

	held := make(chan struct{})
	gate.Store(&held)
	if err := ipCmd("-n", a, "link", "set", "zz-d", "name", "eth-e"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-entered:
	case <-time.After(15 * time.Second):
		t.Fatal("eth-e's attach did not start")
	}
	failing.Store(false)                // a pass before the attach began would read them itself
	time.Sleep(3 * r.a.evictInterval()) // passes that can read, the attach held up
	want("attach held up", 20, 0)
	failing.Store(true)
	gate.Store(nil)
	close(held)
	waitAttached(t, r.a, a, "eth-e")
	want("attached, unread", 20, 0)
	sendUDP(t, s, a, b, dst, 5, 64)
	want("attached, unread, 5 more", 25, 0)

	failing.Store(false)
	waitUntil(t, 15*time.Second, func() bool { return !r.a.unread(k) }, "no pass read the counters")
	want("read by a pass", 25, 0)
	sendUDP(t, s, a, b, dst, 3, 64)
	want("eth-e sent 3", 25, 3)
}

// TestUnreadPortKeepsRetention: eth-d's series holds 20 kept packets
// (it was renamed out and back) and 5 live ones when it is renamed out
// again while reading its counters fails. The kept 20 must not retire
// while the unread port's series shows them: the series stays at 25
// beyond the retention, and once read it holds the 25 as kept counts.
func TestUnreadPortKeepsRetention(t *testing.T) {
	testenv.RequireRoot(t)
	p := testenv.Name("ar")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, GoneRetention: 2 * time.Second,
		FlowIdleTimeout: 2 * time.Second, Interface: Filter{Include: regexp.MustCompile(`^eth`)}})
	waitReady(t, r)
	a, b := p+"a", p+"b"
	dst := netip.MustParseAddrPort("198.18.40.2:5406")
	waitAttached(t, r.a, a, "eth-d")
	k := r.a.attachment(a, "eth-d").Key()
	sendUDP(t, s, a, b, dst, 20, 64)
	rename := func(from, to string) {
		t.Helper()
		if err := ipCmd("-n", a, "link", "set", from, "name", to); err != nil {
			t.Fatal(err)
		}
	}
	want := func(when string, n uint64) {
		t.Helper()
		if v, ok := sentIPv4(t, r, a, "eth-d"); !ok || v != n {
			t.Errorf("%s: eth-d's series %d (there: %v), want %d", when, v, ok, n)
		}
	}
	rename("eth-d", "zz-d")
	waitUntil(t, 15*time.Second, func() bool { return r.a.attachment(a, "zz-d") == nil && r.a.attachment(a, "eth-d") == nil }, "zz-d was not detached")
	rename("zz-d", "eth-d")
	waitAttached(t, r.a, a, "eth-d")
	sendUDP(t, s, a, b, dst, 5, 64)
	want("kept 20, 5 live", 25)

	failed := make(chan struct{}, 1)
	r.a.mu.Lock()
	r.a.readPort = func(pk bpf.PortKey) (bpf.PortStats, bool, error) {
		if pk != k {
			return r.a.dp.Port(pk)
		}
		select {
		case failed <- struct{}{}:
		default:
		}
		return bpf.PortStats{}, false, errors.New("injected failure")
	}
	r.a.mu.Unlock()
	rename("eth-d", "zz-d")
	select {
	case <-failed:
	case <-time.After(15 * time.Second):
		t.Fatal("the retired port's counters were not read")
	}
	time.Sleep(2*time.Second + 3*r.a.evictInterval()) // past the retention, passes between
	want("unread past the retention", 25)
	r.a.mu.Lock()
	r.a.readPort = r.a.dp.Port
	r.a.mu.Unlock()
	waitUntil(t, 15*time.Second, func() bool { return !r.a.unread(k) }, "no pass read the counters")
	r.a.mu.RLock()
	var kept uint64
	if g := r.a.gonePorts[portLabel{a, "eth-d"}]; g != nil {
		kept = g.stats.Family(bpf.Egress, bpf.IPv4).Packets
	}
	r.a.mu.RUnlock()
	if kept != 25 {
		t.Errorf("read at last: eth-d keeps %d IPv4 packets sent, want 25", kept)
	}
}

// unread reports whether the counters at k wait for a read as a retired
// port's (retryUnreadLocked).
func (a *Agent) unread(k bpf.PortKey) bool {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.lingering[k].unread
}

// TestUnreadDiscardedPortKept: renamed out of the filter and back as
// eth-e, a port's attach is held up once its programs are on; meanwhile
// it sends 7 packets and is renamed out again (zz-e), so the agent
// discards the attachment when it completes, and reading the counters
// fails then. The 7 must stay under eth-e, the name the attach was for,
// until a pass reads them, and be kept then.
func TestUnreadDiscardedPortKept(t *testing.T) {
	testenv.RequireRoot(t)
	var gate atomic.Pointer[chan struct{}]
	attached := make(chan struct{}, 1)
	orig := attachIndex
	t.Cleanup(func() { attachIndex = orig }) // after the agent stops
	attachIndex = func(dp *bpf.Datapath, path string, idx int) (*bpf.Attachment, error) {
		att, err := orig(dp, path, idx)
		if g := gate.Load(); g != nil {
			attached <- struct{}{}
			<-*g
		}
		return att, err
	}
	p := testenv.Name("ad")
	s := topotest.Up(t, parseSpec(t, pairTopology), p)
	pin, state := pins(t)
	r := startAgent(t, p, Config{PinPath: pin, StateFile: state, GoneRetention: time.Minute,
		FlowIdleTimeout: 2 * time.Second, Interface: Filter{Include: regexp.MustCompile(`^eth`)}})
	waitReady(t, r)
	a, b := p+"a", p+"b"
	waitAttached(t, r.a, a, "eth-d")
	k := r.a.attachment(a, "eth-d").Key()
	rename := func(from, to string) {
		t.Helper()
		if err := ipCmd("-n", a, "link", "set", from, "name", to); err != nil {
			t.Fatal(err)
		}
	}
	rename("eth-d", "zz-d")
	waitUntil(t, 15*time.Second, func() bool { _, ok, _ := r.a.dp.Port(k); return !ok }, "zz-d's counters were not deleted")

	held := make(chan struct{})
	gate.Store(&held)
	rename("zz-d", "eth-e")
	select {
	case <-attached:
	case <-time.After(15 * time.Second):
		t.Fatal("eth-e's programs were not attached")
	}
	waitOperUp(t, a, "eth-e", b, "eth-d")
	sendUDP(t, s, a, b, netip.MustParseAddrPort("198.18.40.2:5407"), 7, 64)
	rename("eth-e", "zz-e")
	var failing atomic.Bool
	failing.Store(true)
	r.a.mu.Lock()
	r.a.readPort = func(pk bpf.PortKey) (bpf.PortStats, bool, error) {
		if pk == k && failing.Load() {
			return bpf.PortStats{}, false, errors.New("injected failure")
		}
		return r.a.dp.Port(pk)
	}
	r.a.mu.Unlock()
	gate.Store(nil)
	close(held)
	waitUntil(t, 15*time.Second, func() bool { return r.a.unread(k) }, "the discarded attachment's counters were not left unread")
	if v, ok := sentIPv4(t, r, a, "eth-e"); !ok || v != 7 {
		t.Errorf("discarded, unread: eth-e's series %d (there: %v), want 7", v, ok)
	}
	failing.Store(false)
	waitUntil(t, 15*time.Second, func() bool { return !r.a.unread(k) }, "no pass read the counters")
	waitUntil(t, 15*time.Second, func() bool { _, ok, _ := r.a.dp.Port(k); return !ok }, "the discarded port's counters were not deleted")
	if v, ok := sentIPv4(t, r, a, "eth-e"); !ok || v != 7 {
		t.Errorf("read at last: eth-e's series %d (there: %v), want the 7 kept", v, ok)
	}
	if v, ok := sentIPv4(t, r, a, "zz-e"); ok {
		t.Errorf("zz-e's series %d: it counted as eth-e", v)
	}
}

// unreadUnderLive is an agent brought to this: eth-d (in namespace a)
// sent 20 packets and was renamed out of the filter while reading its
// counters failed, then came back as eth-e, whose attach could not read
// them either, and sent 5 more. The counters at k hold 25, all shown
// under eth-d. Reads of them fail while failing is on.
type unreadUnderLive struct {
	r         *running
	cfg       Config
	prefix, a string
	k         bpf.PortKey
	failing   atomic.Bool
	send      func(n uint64)
}

func newUnreadUnderLive(t *testing.T, mode bpf.AttachMode) *unreadUnderLive {
	t.Helper()
	u := &unreadUnderLive{prefix: testenv.Name("al")}
	s := topotest.Up(t, parseSpec(t, pairTopology), u.prefix)
	pin, state := pins(t)
	u.cfg = Config{PinPath: pin, StateFile: state, GoneRetention: time.Minute, FlowIdleTimeout: 2 * time.Second,
		Interface: Filter{Include: regexp.MustCompile(`^eth`)}, AttachMode: mode}
	u.r = startAgent(t, u.prefix, u.cfg)
	waitReady(t, u.r)
	u.a = u.prefix + "a"
	u.send = func(n uint64) {
		sendUDP(t, s, u.a, u.prefix+"b", netip.MustParseAddrPort("198.18.40.2:5408"), n, 64)
	}
	waitAttached(t, u.r.a, u.a, "eth-d")
	u.k = u.r.a.attachment(u.a, "eth-d").Key()
	u.send(20)
	u.failing.Store(true)
	u.r.a.mu.Lock()
	u.r.a.readPort = func(pk bpf.PortKey) (bpf.PortStats, bool, error) {
		if pk == u.k && u.failing.Load() {
			return bpf.PortStats{}, false, errors.New("injected failure")
		}
		return u.r.a.dp.Port(pk)
	}
	u.r.a.mu.Unlock()
	u.rename(t, "eth-d", "zz-d")
	waitUntil(t, 15*time.Second, func() bool { return u.r.a.unread(u.k) }, "eth-d's counters were not left unread")
	u.rename(t, "zz-d", "eth-e")
	waitAttached(t, u.r.a, u.a, "eth-e")
	u.send(5)
	u.check(t, "set up", map[string]uint64{"eth-d": 25, "eth-e": 0})
	return u
}

func (u *unreadUnderLive) rename(t *testing.T, from, to string) {
	t.Helper()
	if err := ipCmd("-n", u.a, "link", "set", from, "name", to); err != nil {
		t.Fatal(err)
	}
}

// check checks the IPv4 packets the interfaces of namespace a sent, by
// their series (0: none).
func (u *unreadUnderLive) check(t *testing.T, when string, want map[string]uint64) {
	t.Helper()
	for ifname, n := range want {
		if v, ok := sentIPv4(t, u.r, u.a, ifname); v != n || ok != (n != 0) {
			t.Errorf("%s: %s's series %d (there: %v), want %d", when, ifname, v, ok, n)
		}
	}
}

// TestUnreadPortRetiredAgain: from newUnreadUnderLive, the reads work
// again and eth-e is renamed out of the filter, likely before a pass
// reads the counters. Either way the 25 shown under eth-d are kept there,
// not under eth-e.
func TestUnreadPortRetiredAgain(t *testing.T) {
	u := newUnreadUnderLive(t, "")
	u.failing.Store(false)
	u.rename(t, "eth-e", "zz-e")
	waitUntil(t, 15*time.Second, func() bool { _, ok, _ := u.r.a.dp.Port(u.k); return !ok }, "zz-e's counters were not deleted")
	u.check(t, "retired", map[string]uint64{"eth-d": 25, "eth-e": 0, "zz-e": 0})
}

// TestUnreadPortAcrossRestart: from newUnreadUnderLive, the agent is
// stopped and started (reads work): the 25 are kept under eth-d, and
// eth-e's series starts from zero.
func TestUnreadPortAcrossRestart(t *testing.T) {
	u := newUnreadUnderLive(t, "")
	u.r.stop()
	u.r = startAgent(t, u.prefix, u.cfg)
	waitReady(t, u.r)
	waitAttached(t, u.r.a, u.a, "eth-e")
	u.check(t, "restarted", map[string]uint64{"eth-d": 25, "eth-e": 0})
	u.send(3)
	u.check(t, "eth-e sent 3", map[string]uint64{"eth-d": 25, "eth-e": 3})
}

// TestUnreadPortSurvivesFailedDetach: from newUnreadUnderLive (tc
// attachments, so that a detach can be made to fail), eth-e is deleted
// and its detach fails. The counters stay under eth-d, the unread
// port's labels, through the failed detach and the retry that works,
// whose retire keeps them there once reads work again.
func TestUnreadPortSurvivesFailedDetach(t *testing.T) {
	u := newUnreadUnderLive(t, bpf.ModeTC)
	bpf.FailNextTCDetach(errors.New("injected netlink failure"))
	if err := ipCmd("-n", u.a, "link", "del", "eth-e"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, func() bool { return u.r.a.attachment(u.a, "eth-e") == nil }, "eth-e still known after its deletion")
	u.check(t, "deleted, its detach failed", map[string]uint64{"eth-d": 25, "eth-e": 0})
	u.failing.Store(false)
	waitUntil(t, 15*time.Second, func() bool {
		u.r.a.mu.RLock()
		defer u.r.a.mu.RUnlock()
		_, lingers := u.r.a.lingering[u.k]
		return !lingers
	}, "the deleted eth-e was not retired")
	u.check(t, "retired", map[string]uint64{"eth-d": 25, "eth-e": 0})
}

// TestUnreadPortAfterFailedSave: eth-d sends 10 packets and is renamed
// out of the filter while saves fail, so its counters wait for a save
// (awaitSave) with the 10 kept; renamed back, it sends 5 more, and is
// renamed out again while reads fail. When saves work again, the counters
// that waited for one must not be deleted: they hold the unread 5, which
// stay under eth-d and are kept there once read.
func TestUnreadPortAfterFailedSave(t *testing.T) {
	u := &unreadUnderLive{prefix: testenv.Name("av")}
	s := topotest.Up(t, parseSpec(t, pairTopology), u.prefix)
	pin, state := pins(t)
	u.cfg = Config{PinPath: pin, StateFile: state, GoneRetention: time.Minute, FlowIdleTimeout: 2 * time.Second,
		Interface: Filter{Include: regexp.MustCompile(`^eth`)}}
	u.r = startAgent(t, u.prefix, u.cfg)
	waitReady(t, u.r)
	u.a = u.prefix + "a"
	u.send = func(n uint64) {
		sendUDP(t, s, u.a, u.prefix+"b", netip.MustParseAddrPort("198.18.40.2:5409"), n, 64)
	}
	waitAttached(t, u.r.a, u.a, "eth-d")
	u.k = u.r.a.attachment(u.a, "eth-d").Key()
	u.send(10)

	// A file where the state file's directory was makes every save fail.
	dir := filepath.Dir(state)
	broken := false
	mend := func() {
		if broken {
			broken = false
			if err := errors.Join(os.Remove(dir), os.Rename(dir+".away", dir)); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(mend)
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	broken = true
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	waits := func() bool {
		u.r.a.mu.RLock()
		defer u.r.a.mu.RUnlock()
		_, ok := u.r.a.awaitSave[u.k]
		return ok
	}
	u.rename(t, "eth-d", "zz-d")
	waitUntil(t, 15*time.Second, waits, "eth-d's counters did not wait for a save")
	u.rename(t, "zz-d", "eth-d")
	waitAttached(t, u.r.a, u.a, "eth-d")
	u.send(5)
	u.check(t, "back, 5 more", map[string]uint64{"eth-d": 15})

	u.failing.Store(true)
	u.r.a.mu.Lock()
	u.r.a.readPort = func(pk bpf.PortKey) (bpf.PortStats, bool, error) {
		if pk == u.k && u.failing.Load() {
			return bpf.PortStats{}, false, errors.New("injected failure")
		}
		return u.r.a.dp.Port(pk)
	}
	u.r.a.mu.Unlock()
	u.rename(t, "eth-d", "zz-d")
	waitUntil(t, 15*time.Second, func() bool { return u.r.a.unread(u.k) }, "eth-d's counters were not left unread")
	mend()
	waitUntil(t, 15*time.Second, func() bool { return !waits() }, "no save drained the counters that waited for one")
	u.check(t, "saved, unread", map[string]uint64{"eth-d": 15, "zz-d": 0})
	u.failing.Store(false)
	waitUntil(t, 15*time.Second, func() bool { return !u.r.a.unread(u.k) }, "no pass read the counters")
	waitUntil(t, 15*time.Second, func() bool { _, ok, _ := u.r.a.dp.Port(u.k); return !ok }, "the counters were not deleted")
	u.check(t, "read at last", map[string]uint64{"eth-d": 15, "zz-d": 0})
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
