package bpf

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/nsflow/nsflow/internal/testenv"
)

// testRunUDP is a UDP frame for BPF_PROG_TEST_RUN and the port it
// counts on: this namespace's loopback.
func testRunUDP(t *testing.T) ([]byte, PortKey) {
	t.Helper()
	cookie, err := NetnsCookie("")
	if err != nil {
		t.Fatal(err)
	}
	return cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(1, 2, 0)), PortKey{NetnsCookie: cookie, Ifindex: 1}
}

// Pinned maps survive Close and are reused by the next Load; pins of an
// incompatible layout are replaced; RemovePins removes only ours.
func TestPinning(t *testing.T) {
	testenv.RequireBPFFS(t)
	dir := pinDir(t)
	frame, lo := testRunUDP(t)

	load := func(opts Options) *Datapath {
		t.Helper()
		opts.PinPath = dir
		d, err := Load(opts)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	packets := func(d *Datapath) uint64 {
		t.Helper()
		s, _, err := d.Port(lo)
		if err != nil {
			t.Fatal(err)
		}
		return s.Get(Ingress, IPv4, UDP).Packets
	}

	d := load(Options{})
	in, _ := d.Programs()
	runFrame(t, in, frame)
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range mapNames {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("pin %s: %v", name, err)
		}
	}

	// A resize killed between its pin and its rename left the new table
	// under the temporary name: the next load removes it.
	stray := filepath.Join(dir, nsflowMapNsflowFlows+resizingSuffix)
	if err := os.Link(filepath.Join(dir, nsflowMapNsflowGen), stray); err != nil {
		t.Fatal(err)
	}
	d = load(Options{})
	if _, err := os.Stat(stray); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the interrupted resize's pin is still there: %v", err)
	}
	if d.PinsReset {
		t.Error("compatible pins were reset")
	}
	in, _ = d.Programs()
	runFrame(t, in, frame)
	if n := packets(d); n != 2 {
		t.Errorf("%d packets after reload, want 2 (1 before Close, 1 after)", n)
	}
	d.Close()

	flows := func(d *Datapath) map[FlowKey]uint64 {
		t.Helper()
		out := map[FlowKey]uint64{}
		if err := d.Flows(func(k FlowKey, s FlowStats) bool { out[k] = s.Packets; return true }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	d = load(Options{})
	before := flows(d)
	if len(before) != 1 {
		t.Fatalf("flows before the resize: %v, want one", before)
	}
	d.Close()

	// A size the kernel refuses fails the load and keeps the pinned
	// table, records and all.
	if _, err := Load(Options{PinPath: dir, MaxFlows: 1 << 30}); err == nil {
		t.Fatal("a flow table of 2^30 entries was accepted")
	}
	if _, err := os.Stat(filepath.Join(dir, nsflowMapNsflowFlows)); err != nil {
		t.Fatalf("the flow table's pin after a failed resize: %v", err)
	}

	// Another flow table size (--flows.max): the records are carried into
	// the new table, and every other map, the port counters with them,
	// is kept.
	d = load(Options{MaxFlows: 1024})
	if d.PinsReset || d.FlowsCarried != 1 || d.FlowsLost != 0 {
		t.Errorf("resize: reset %v (%v), carried %d, lost %d; want nothing reset and 1 record carried", d.PinsReset, d.PinsReplaced, d.FlowsCarried, d.FlowsLost)
	}
	if n := packets(d); n != 2 {
		t.Errorf("%d packets after the resize, want 2", n)
	}
	if got := flows(d); !maps.Equal(got, before) {
		t.Errorf("flows after the resize: %v, want %v", got, before)
	}
	if d.FlowCapacity() != 1024 {
		t.Errorf("FlowCapacity %d, want 1024", d.FlowCapacity())
	}
	// Two more flows, then a table of one: what does not fit is counted.
	in, _ = d.Programs()
	for _, port := range []uint16{3, 4} {
		runFrame(t, in, cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(port, 2, 0)))
	}
	d.Close()
	d = load(Options{MaxFlows: 1})
	if d.FlowsCarried != 1 || d.FlowsLost != 2 || len(flows(d)) != 1 {
		t.Errorf("shrink to 1: carried %d, lost %d, %d flows; want 1, 2, 1", d.FlowsCarried, d.FlowsLost, len(flows(d)))
	}
	d.Close()

	// A map of another layout (here the port table's size) is replaced,
	// and reported with its counters.
	d = load(Options{MaxFlows: 1, MaxPorts: 128})
	if !d.PinsReset || !slices.Equal(d.PinsReplaced, []string{nsflowMapNsflowPorts}) {
		t.Errorf("port table resize: reset %v, replaced %v; want the port table replaced", d.PinsReset, d.PinsReplaced)
	}
	if n := packets(d); n != 0 {
		t.Errorf("%d packets after the port table was replaced, want 0", n)
	}
	d.Close()

	// Someone else's file in the directory survives RemovePins.
	other := filepath.Join(dir, "not-ours")
	if err := os.Mkdir(other, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := RemovePins(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("RemovePins removed a foreign entry: %v", err)
	}
	if err := os.Remove(other); err != nil {
		t.Fatal(err)
	}
	if err := RemovePins(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory still there: %v", err)
	}
}

// The flow table is bounded: when it is full, packets still count per
// port and in the overflow counter.
func TestFlowTableFull(t *testing.T) {
	const capacity = 16
	d := loadForTest(t, Options{MaxFlows: capacity})
	in, _ := d.Programs()
	const sent = 40
	for i := range sent {
		runFrame(t, in, cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(uint16(1000+i), 53, 0)))
	}
	n := 0
	if err := d.Flows(func(FlowKey, FlowStats) bool { n++; return true }); err != nil {
		t.Fatal(err)
	}
	if n != capacity {
		t.Errorf("%d flows, want %d", n, capacity)
	}
	over, err := d.FlowOverflow()
	if err != nil {
		t.Fatal(err)
	}
	if over != sent-capacity {
		t.Errorf("overflow %d, want %d", over, sent-capacity)
	}
	ports, err := d.Ports()
	if err != nil {
		t.Fatal(err)
	}
	var total uint64
	for _, s := range ports {
		total += s.Get(Ingress, IPv4, UDP).Packets
	}
	if total != sent {
		t.Errorf("port counters %d packets, want %d", total, sent)
	}

	// Deleting flows makes room again.
	var keys []FlowKey
	_ = d.Flows(func(k FlowKey, _ FlowStats) bool { keys = append(keys, k); return true })
	deleted, err := d.DeleteFlows(append(keys, keys[0])) // one twice: not there the second time
	if err != nil || deleted != capacity {
		t.Errorf("DeleteFlows = %d, %v; want %d", deleted, err, capacity)
	}
	runFrame(t, in, cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(1, 53, 0)))
	n = 0
	_ = d.Flows(func(FlowKey, FlowStats) bool { n++; return true })
	if n != 1 {
		t.Errorf("%d flows after delete and one packet, want 1", n)
	}
}

// TestResizeRechecksCachedFlows: records a smaller table could not take
// are gone, but this CPU's flow cache still holds their entries. The next
// packet of each such flow looks for its record again (here: the table is
// full, so it is counted as overflow), rather than being added to an
// entry whose record no longer exists and lost.
func TestResizeRechecksCachedFlows(t *testing.T) {
	testenv.RequireBPFFS(t)
	defer onOneCPU(t)()
	dir := pinDir(t)
	send := func(d *Datapath) { sendThreeFlows(t, d) }
	d, err := Load(Options{PinPath: dir, MaxFlows: 64})
	if err != nil {
		t.Fatal(err)
	}
	send(d)
	d.Close()
	if d, err = Load(Options{PinPath: dir, MaxFlows: 1}); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.FlowsCarried != 1 || d.FlowsLost != 2 {
		t.Fatalf("shrink to 1: carried %d, lost %d; want 1 and 2", d.FlowsCarried, d.FlowsLost)
	}
	send(d)
	if over, err := d.FlowOverflow(); err != nil || over != 2 {
		t.Errorf("overflow %d (%v), want 2: one packet of each flow whose record was lost", over, err)
	}
	var packets uint64
	if err := d.Flows(func(_ FlowKey, s FlowStats) bool { packets += s.Packets; return true }); err != nil {
		t.Fatal(err)
	}
	if packets != 2 {
		t.Errorf("the carried flow has %d packets, want 2", packets)
	}
}

// TestLostFlowPinRechecksCachedFlows: the flow table's pin alone is gone
// (an interrupted RemovePins, say), so Load makes a new, empty table
// under the kept flow cache. The cached flows look for their records
// again at their next packet, and are recorded, rather than counting on
// into entries whose records do not exist.
func TestLostFlowPinRechecksCachedFlows(t *testing.T) {
	testenv.RequireBPFFS(t)
	defer onOneCPU(t)()
	dir := pinDir(t)
	send := func(d *Datapath) { sendThreeFlows(t, d) }
	d, err := Load(Options{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	send(d)
	d.Close()
	if err := os.Remove(filepath.Join(dir, nsflowMapNsflowFlows)); err != nil {
		t.Fatal(err)
	}
	if d, err = Load(Options{PinPath: dir}); err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	send(d)
	flows := 0
	if err := d.Flows(func(_ FlowKey, s FlowStats) bool {
		flows++
		if s.Packets != 1 {
			t.Errorf("a flow with %d packets, want 1 (its packet since the new table)", s.Packets)
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if flows != 3 {
		t.Errorf("%d flows in the new table, want 3", flows)
	}
}

// onOneCPU keeps the calling goroutine on CPU 0 until the returned func
// runs: every BPF_PROG_TEST_RUN then uses that CPU's flow cache.
func onOneCPU(t *testing.T) (restore func()) {
	t.Helper()
	runtime.LockOSThread()
	var was, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &was); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	one.Set(0)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	return func() {
		unix.SchedSetaffinity(0, &was)
		runtime.UnlockOSThread()
	}
}

// pinDir is a pin directory of the test's own, removed at cleanup.
func pinDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join("/sys/fs/bpf", testenv.Name("nsflow-test-"))
	t.Cleanup(func() {
		if err := RemovePins(dir); err != nil {
			t.Errorf("RemovePins: %v", err)
		}
	})
	return dir
}

// sendThreeFlows runs one UDP frame of each of three flows through the
// ingress program.
func sendThreeFlows(t *testing.T, d *Datapath) {
	in, _ := d.Programs()
	for _, port := range []uint16{1, 2, 3} {
		runFrame(t, in, cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(port, 53, 0)))
	}
}

// A pin that cannot be opened as a map (here a program pinned under a
// map's name; as well too many open files, or a security module) is no
// proof that it is not ours: replacing incompatible pins fails, naming
// it, and removes nothing of it.
func TestUnopenablePinKept(t *testing.T) {
	testenv.RequireBPFFS(t)
	dir := pinDir(t)
	d, err := Load(Options{PinPath: dir})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	n, err := LoadNoop()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	path := filepath.Join(dir, nsflowMapNsflowLoss)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := n.prog.Pin(path); err != nil {
		t.Fatal(err)
	}
	defer n.prog.Unpin()
	spec, err := loadSpec()
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = replaceIncompatiblePins(spec, dir)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("replaceIncompatiblePins: %v; want an error naming %s", err, path)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the pin that could not be opened was removed: %v", err)
	}
}

// Tables pinned with another layout stamp (a version whose entries mean
// something else at the same sizes) are replaced, counters and all; pins
// without a stamp (before it existed) are of the first layout, and kept.
func TestPinLayout(t *testing.T) {
	testenv.RequireBPFFS(t)
	dir := pinDir(t)
	frame, lo := testRunUDP(t)
	run := func(wantReplaced []string, wantPackets uint64) {
		t.Helper()
		d, err := Load(Options{PinPath: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if d.PinsReset != (len(wantReplaced) > 0) || !slices.Equal(d.PinsReplaced, wantReplaced) {
			t.Errorf("reset %v, replaced %v; want %v", d.PinsReset, d.PinsReplaced, wantReplaced)
		}
		s, _, err := d.Port(lo)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Get(Ingress, IPv4, UDP).Packets; got != wantPackets {
			t.Errorf("%d packets kept, want %d", got, wantPackets)
		}
		if v, err := pinnedLayout(dir); err != nil || v != pinLayout {
			t.Errorf("stamp %d, %v; want %d", v, err, pinLayout)
		}
		in, _ := d.Programs()
		runFrame(t, in, frame)
	}
	run(nil, 0)
	run(nil, 1)

	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, layoutPinName), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Update(uint32(0), uint32(pinLayout+1), ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	m.Close()
	run(mapNames, 0)

	// Pins without a stamp are layout 1's, replaced since layout 2.
	run(nil, 1)
	if err := os.Remove(filepath.Join(dir, layoutPinName)); err != nil {
		t.Fatal(err)
	}
	run(mapNames, 0)
}

// TestClaimsStayNewAcrossRuns: a run counts 5 packets of the loopback
// through its slot, frees the slot (DeletePort) and closes; the flow's
// cache entry still carries the 5 for that claim. The next run on the
// same pins claims the slot again: its claim must be a new one, or the
// entry's write-back adds the deleted 5 to the 3 it counts.
func TestClaimsStayNewAcrossRuns(t *testing.T) {
	testenv.RequireBPFFS(t)
	dir := pinDir(t)
	frame, lo := testRunUDP(t)
	defer onOneCPU(t)()
	run := func(n int) (claim uint32, d *Datapath) {
		t.Helper()
		d, err := Load(Options{PinPath: dir})
		if err != nil {
			t.Fatal(err)
		}
		if claimed, err := d.claimSlot(lo); err != nil || !claimed {
			t.Fatalf("claim the loopback's slot: %v, %v", claimed, err)
		}
		d.slotInUse(lo)
		in, _ := d.Programs()
		for range n {
			runFrame(t, in, frame)
		}
		return d.lastClaim, d
	}

	first, d := run(5)
	d.dropSlotUser(lo)
	if err := d.DeletePort(lo); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	second, d := run(3)
	defer d.Close()
	if second == first {
		t.Errorf("the second run claimed the slot with the first run's id %d", first)
	}
	s, _, err := d.Port(lo)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Get(Ingress, IPv4, UDP).Packets; got != 3 {
		t.Errorf("the second run counted %d packets, want its 3", got)
	}
	d.dropSlotUser(lo)
}
