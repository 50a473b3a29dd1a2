package bpf

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// More flows than cache entries, interleaved so that entries are evicted
// and written back all the time, with deletions in between: every packet
// is in exactly one flow record, and every cache entry sits at the index
// the Go side computes for its key.
func TestFlowCacheWriteBack(t *testing.T) {
	d := loadForTest(t, Options{})
	in, _ := d.Programs()
	const flows, rounds = 3 * flowCacheSize, 3
	frame := func(i int) []byte {
		return cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(uint16(i), uint16(i>>16)+1, 0))
	}
	for r := range rounds {
		for i := range flows {
			runFrame(t, in, frame(i))
		}
		if r == 0 {
			// Delete every other flow: their cache entries must not count
			// on into the next record of the same key.
			var keys []FlowKey
			_ = d.Flows(func(k FlowKey, _ FlowStats) bool {
				if k.SrcPort%2 == 0 {
					keys = append(keys, k)
				}
				return true
			})
			if n, err := d.DeleteFlows(keys); err != nil || n != flows/2 {
				t.Fatalf("DeleteFlows = %d, %v; want %d", n, err, flows/2)
			}
		}
	}
	got := map[uint16]uint64{}
	if err := d.Flows(func(k FlowKey, s FlowStats) bool {
		got[k.SrcPort] += s.Packets
		if s.Bytes != s.Packets*uint64(len(frame(0))) || s.Segments != s.Packets {
			t.Errorf("flow %+v: %+v", k, s)
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	for i := range flows {
		want := uint64(rounds)
		if i%2 == 0 {
			want = rounds - 1 // deleted after the first round
		}
		if got[uint16(i)] != want {
			t.Errorf("flow %d: %d packets, want %d", i, got[uint16(i)], want)
		}
	}

	cache, err := d.readCache()
	if err != nil {
		t.Fatal(err)
	}
	used := 0
	for idx, es := range cache {
		for _, e := range es {
			if e.Id == 0 {
				continue
			}
			used++
			if k := e.Key; flowCacheIndex(&k) != uint32(idx) {
				t.Fatalf("entry at %d has a key Go indexes at %d", idx, flowCacheIndex(&k))
			}
		}
	}
	if used == 0 {
		t.Error("flow cache unused")
	}
}

// TestDeleteFlowsOwesFailedBump: when the generation cannot be bumped
// after a delete, DeleteFlows says so, and the next call, even with
// nothing to delete, bumps it (once), so cache entries of the deleted
// records do not count for them for good.
func TestDeleteFlowsOwesFailedBump(t *testing.T) {
	d := loadForTest(t, Options{})
	gen := d.objs.NsflowGen
	readOnly, read := failingGen(t, d)
	k := FlowKey{NetnsCookie: 1, Ifindex: 2, Proto: 17, Src: netip.MustParseAddr("198.18.0.1"), Dst: netip.MustParseAddr("198.18.0.2"), SrcPort: 1, DstPort: 2}

	before := read()
	d.objs.NsflowGen = readOnly
	_, err := d.DeleteFlows([]FlowKey{k})
	d.objs.NsflowGen = gen
	if err == nil || !strings.Contains(err.Error(), "bump generation") {
		t.Fatalf("delete with the bump failing: %v, want an error saying so", err)
	}
	for i, want := range []uint32{before + 1, before + 1} { // owed once
		if _, err := d.DeleteFlows(nil); err != nil {
			t.Fatal(err)
		}
		if g := read(); g != want {
			t.Errorf("call %d with nothing to delete: generation %d, want %d", i+1, g, want)
		}
	}
}

// The flow cache read from memory is the cache read through the map:
// entry by entry, on every CPU.
func TestFlowCacheMapped(t *testing.T) {
	d := loadForTest(t, Options{})
	if d.flowCache.mem == nil {
		t.Fatal("the flow cache is not mapped")
	}
	in, _ := d.Programs()
	for i := range 64 {
		runFrame(t, in, cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(uint16(i), 53, 0)))
	}
	bySyscall := d.flowCache
	bySyscall.mem = nil
	filled := 0
	for i := range uint32(flowCacheSize) {
		a, err := d.flowCache.get(i)
		if err != nil {
			t.Fatal(err)
		}
		b, err := bySyscall.get(i)
		if err != nil {
			t.Fatal(err)
		}
		for c := range a {
			if a[c] != b[c] {
				t.Fatalf("entry %d of CPU %d: %+v from memory, %+v through the map", i, c, a[c], b[c])
			}
			if a[c].Id != 0 {
				filled++
			}
		}
	}
	if filled == 0 {
		t.Error("no entry filled: the comparison proves nothing")
	}
}

// A cache entry caught mid-write-back (seq odd) may have its delta in
// the record already: the reader does not add it, and reads the flow
// again until the write-back is done.
func TestFlowReadWaitsOutWriteBack(t *testing.T) {
	d := loadForTest(t, Options{})
	in, _ := d.Programs()
	// One frame on every CPU's cache: the flow's entries hold one packet
	// each wherever it ran.
	frame := cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(7, 53, 0))
	runFrame(t, in, frame)
	var key FlowKey
	var want uint64
	if err := d.Flows(func(k FlowKey, s FlowStats) bool { key, want = k, s.Packets; return true }); err != nil || want != 1 {
		t.Fatalf("Flows: %v, %d packets; want 1", err, want)
	}
	raw, err := key.raw()
	if err != nil {
		t.Fatal(err)
	}
	idx := flowCacheIndex(&raw)
	es, err := d.flowCache.get(idx)
	if err != nil {
		t.Fatal(err)
	}
	// As if the write-back had added the delta to the record and not yet
	// cleared the entry.
	for c := range es {
		if es[c].Key == raw && es[c].D.Packets > 0 {
			es[c].Seq++
		}
	}
	if err := d.flowCache.put(idx, es); err != nil {
		t.Fatal(err)
	}
	if err := d.Flows(func(FlowKey, FlowStats) bool { return true }); err == nil || !strings.Contains(err.Error(), "keeps changing") {
		t.Errorf("Flows with an entry mid-write-back for good: %v, want it to keep reading and give up", err)
	}
	for c := range es {
		if es[c].Seq%2 == 1 {
			es[c].Seq++
		}
	}
	if err := d.flowCache.put(idx, es); err != nil {
		t.Fatal(err)
	}
	var got uint64
	if err := d.Flows(func(_ FlowKey, s FlowStats) bool { got = s.Packets; return true }); err != nil || got != want {
		t.Errorf("Flows once the write-back is done: %v, %d packets; want %d", err, got, want)
	}
}

// Two flows share a cache index and take turns, so that every run writes
// the other's entry back, while Flows reads on: every read of a flow lies
// between the runs done before the read began and those done after it
// ended, and the last read equals the runs.
func TestFlowReadsExactUnderWriteBacks(t *testing.T) {
	d := loadForTest(t, Options{})
	in, _ := d.Programs()
	frame := func(sport uint16) []byte {
		return cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(sport, 53, 0))
	}
	runFrame(t, in, frame(1))
	var raw1 nsflowFlowKey
	if err := d.Flows(func(k FlowKey, _ FlowStats) bool {
		var err error
		raw1, err = k.raw()
		return err == nil
	}); err != nil {
		t.Fatal(err)
	}
	sport2 := collidingSport(t, raw1)
	f1, f2 := frame(1), frame(sport2)

	const rounds = 100000
	var done atomic.Uint64 // rounds run: one packet of each flow
	errc := runInBackground(t, func(stop *atomic.Bool) error {
		for i := range uint64(rounds) {
			if stop.Load() {
				return nil
			}
			for _, f := range [][]byte{f1, f2} {
				if _, err := in.Run(&ebpf.RunOptions{Data: f}); err != nil {
					return err
				}
			}
			done.Store(i + 1)
		}
		return nil
	})
	if d.flowCache.mem == nil || !d.flowCache.mem.writable {
		t.Fatal("the flow cache is not mapped writable: no holds")
	}
	reads := 0
	for last := false; !last; reads++ {
		checkBackground(t, errc)
		before := done.Load()
		last = before == rounds
		got := map[uint16]uint64{}
		if err := d.Flows(func(k FlowKey, s FlowStats) bool { got[k.SrcPort] = s.Packets; return true }); err != nil {
			t.Fatalf("read %d: %v", reads, err)
		}
		after := done.Load()
		// Flow 1 had one packet before the rounds; each flow's packet of a
		// round in progress may be in either read.
		if g := got[1]; g < 1+before || g > 1+after+1 {
			t.Fatalf("read %d: flow 1 has %d packets, want %d to %d", reads, g, 1+before, 2+after)
		}
		if g := got[sport2]; g < before || g > after+1 {
			t.Fatalf("read %d: flow 2 has %d packets, want %d to %d", reads, g, before, after+1)
		}
		if last && (got[1] != 1+rounds || got[sport2] != rounds) {
			t.Fatalf("after the rounds: %d and %d packets, want %d and %d", got[1], got[sport2], 1+rounds, rounds)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	checkNoHolds(t, d)
	t.Logf("%d reads during %d write-backs", reads, 2*rounds)
}

// A port with a slot counts a recorded flow's packets in the flow's cache
// entry, which carries them to the slot at write-back. Two flows share a
// cache index: each round, a burst of the first fills its entry, and one
// packet of the second writes the burst back to the slot, while ports
// are read. A burst counted twice, or not at all, by a read is more than
// the packets run during the read and the next, so every read must count
// no fewer than the packets run before it, no fewer than the read before
// it, and the last read all of them. The flows' counts are read alike,
// and held entries must all be released.
func TestPortReadsExactUnderWriteBacks(t *testing.T) {
	d := loadForTest(t, Options{})
	in, _ := d.Programs()
	frame, lo := testRunUDP(t)
	if claimed, err := d.claimSlot(lo); err != nil || !claimed {
		t.Fatalf("claim the loopback's slot: %v, %v", claimed, err)
	}
	raw1 := nsflowFlowKey{NetnsCookie: lo.NetnsCookie, Ifindex: lo.Ifindex, Dir: uint8(Ingress), Family: 4, Proto: 17, Sport: 1, Dport: 2}
	copy(raw1.Src[:], v4A.AsSlice())
	copy(raw1.Dst[:], v4B.AsSlice())
	sport2 := collidingSport(t, raw1)
	f1, f2 := frame, cat(eth(etherIPv4), ipv4(17, v4A, v4B, 8, 0, 0, false), udp(sport2, 2, 0))

	const rounds, burst, pause = 40, 20000, 20 * time.Millisecond
	var done atomic.Uint64 // packets run
	errc := runInBackground(t, func(stop *atomic.Bool) error {
		for range rounds {
			for _, r := range []struct {
				f []byte
				n uint32
			}{{f1, burst}, {f2, 1}} {
				if stop.Load() {
					return nil
				}
				if _, err := in.Run(&ebpf.RunOptions{Data: r.f, Repeat: r.n}); err != nil {
					return err
				}
				done.Add(uint64(r.n))
			}
			// A pause after the write-back, longer than a read, so that a
			// read that overlapped it ends before the next burst begins.
			time.Sleep(pause)
		}
		return nil
	})
	const total = rounds * (burst + 1)
	var prev uint64
	var slowest time.Duration
	reads := 0
	for last := false; !last; reads++ {
		checkBackground(t, errc)
		before, t0 := done.Load(), time.Now()
		last = before == total
		var got uint64
		if reads%2 == 0 {
			ports, err := d.Ports()
			if err != nil {
				t.Fatalf("read %d: %v", reads, err)
			}
			if len(ports) != 1 {
				t.Fatalf("read %d: ports %v, want only %v", reads, ports, lo)
			}
			s := ports[lo]
			got = s.Get(Ingress, IPv4, UDP).Packets
		} else {
			s, ok, err := d.Port(lo)
			if err != nil || !ok {
				t.Fatalf("read %d: %v, %v", reads, ok, err)
			}
			got = s.Get(Ingress, IPv4, UDP).Packets
		}
		after := done.Load()
		slowest = max(slowest, time.Since(t0))
		// A run in progress may be in the read, up to a whole burst.
		if got < before || got < prev || got > after+burst {
			t.Fatalf("read %d: %d packets, want %d to %d and at least the last read's %d", reads, got, before, after+burst, prev)
		}
		prev = got
		if last && got != total {
			t.Fatalf("after the rounds: %d packets, want %d", got, total)
		}
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// The bursts reached the slot by write-backs: all but the last one,
	// still in its entry.
	slots, err := d.readSlots(&lo)
	if err != nil {
		t.Fatal(err)
	}
	var inSlot PortStats
	for _, vs := range slots {
		for c := range vs {
			inSlot.addSlot(&vs[c])
		}
	}
	if n := inSlot.Get(Ingress, IPv4, UDP).Packets; n < (rounds-1)*burst {
		t.Errorf("the slot itself holds %d packets, want at least %d written back", n, (rounds-1)*burst)
	}
	flows := map[uint16]uint64{}
	if err := d.Flows(func(k FlowKey, s FlowStats) bool { flows[k.SrcPort] = s.Packets; return true }); err != nil {
		t.Fatal(err)
	}
	if flows[1] != rounds*burst || flows[sport2] != rounds {
		t.Errorf("flows %v, want %d and %d packets", flows, rounds*burst, rounds)
	}
	checkNoHolds(t, d)
	t.Logf("%d reads during the %d rounds, the slowest %v", reads, rounds, slowest)
}

// Counts a cache entry carries to a port's slot go with the port's counts
// when DeletePort frees the slot: a later claim of the slot by the same
// port (attached again) starts from zero, and counts the packets of the
// same flow from then on.
func TestReclaimedSlotStartsFromZero(t *testing.T) {
	d := loadForTest(t, Options{})
	in, _ := d.Programs()
	frame, lo := testRunUDP(t)
	ingressUDP := func() uint64 {
		t.Helper()
		s, _, err := d.Port(lo)
		if err != nil {
			t.Fatal(err)
		}
		return s.Get(Ingress, IPv4, UDP).Packets
	}
	for _, n := range []uint64{5, 3} {
		if claimed, err := d.claimSlot(lo); err != nil || !claimed {
			t.Fatalf("claim the loopback's slot: %v, %v", claimed, err)
		}
		d.slotInUse(lo)
		for range n {
			runFrame(t, in, frame)
		}
		if got := ingressUDP(); got != n {
			t.Errorf("after %d packets of this claim: %d counted", n, got)
		}
		d.dropSlotUser(lo)
		if err := d.DeletePort(lo); err != nil {
			t.Fatal(err)
		}
		if got := ingressUDP(); got != 0 {
			t.Errorf("after DeletePort: %d packets counted, want 0", got)
		}
	}
	// Deleted while its packets still come (not detached): the next ones
	// count, in the hash map.
	runFrame(t, in, frame)
	if got := ingressUDP(); got != 1 {
		t.Errorf("a packet after the slot was freed: %d counted, want 1", got)
	}
}

// collidingSport returns a source port other than k's (and its
// destination port) whose flow shares k's flow cache index.
func collidingSport(t *testing.T, k nsflowFlowKey) uint16 {
	t.Helper()
	for p := uint16(1); p < 0xffff; p++ {
		r := k
		r.Sport = p
		if p != k.Sport && p != k.Dport && flowCacheIndex(&r) == flowCacheIndex(&k) {
			return p
		}
	}
	t.Fatal("no source port shares the flow's cache index")
	return 0
}

// checkNoHolds fails the test if a flow cache entry is still held.
func checkNoHolds(t *testing.T, d *Datapath) {
	t.Helper()
	holds := make([]uint32, d.flowCache.cpus)
	for i := range uint32(flowCacheSize) {
		if d.flowCache.words32(i, holdOffset, holds) && slices.ContainsFunc(holds, func(h uint32) bool { return h != 0 }) {
			t.Fatalf("entry %d still held: %v", i, holds)
		}
	}
}

// runInBackground runs fn in a goroutine on CPU 0 until it returns, or stops it
// (stop set) when the test ends, and waits for it then, before the
// datapath closes. The channel yields fn's error, if any, and closes.
func runInBackground(t *testing.T, fn func(stop *atomic.Bool) error) <-chan error {
	t.Helper()
	var stop atomic.Bool
	errc := make(chan error, 1)
	t.Cleanup(func() {
		stop.Store(true)
		for range errc {
		}
	})
	go func() {
		defer close(errc)
		// On one CPU, so that every packet meets the same CPU's cache
		// entries (and writes them back). The thread, locked, ends with
		// the goroutine, and its affinity with it.
		runtime.LockOSThread()
		var one unix.CPUSet
		one.Set(0)
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			errc <- fmt.Errorf("pin the writer to CPU 0: %w", err)
			return
		}
		if err := fn(&stop); err != nil {
			errc <- err
		}
	}()
	return errc
}

// checkBackground fails the test if runInBackground's fn failed so far.
func checkBackground(t *testing.T, errc <-chan error) {
	t.Helper()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	default:
	}
}

// A generation bump that fails when DeletePort frees a slot is owed, and
// made by the next port read that can make it; a read that cannot still
// reads. Until it is made, the freed claim's cache entry swallows the
// port's packets; after it, they count again (in the hash map).
func TestPortReadMakesOwedGenerationBump(t *testing.T) {
	d := loadForTest(t, Options{})
	in, _ := d.Programs()
	frame, lo := testRunUDP(t)
	gen := d.objs.NsflowGen
	readOnly, readGen := failingGen(t, d)
	packets := func() uint64 {
		t.Helper()
		ports, err := d.Ports()
		if err != nil {
			t.Fatal(err)
		}
		s := ports[lo]
		return s.Get(Ingress, IPv4, UDP).Packets
	}
	if claimed, err := d.claimSlot(lo); err != nil || !claimed {
		t.Fatalf("claim the loopback's slot: %v, %v", claimed, err)
	}
	runFrame(t, in, frame) // the flow's entry now carries counts to the slot
	d.dropSlotUser(lo)
	g0 := readGen()

	d.objs.NsflowGen = readOnly
	if err := d.DeletePort(lo); err == nil || !strings.Contains(err.Error(), "bump generation") {
		t.Fatalf("DeletePort with the bump failing: %v, want an error saying so", err)
	}
	if n := packets(); n != 0 { // read while the bump fails again
		t.Fatalf("deleted port: %d packets", n)
	}
	d.objs.NsflowGen = gen
	if g := readGen(); g != g0 {
		t.Fatalf("generation %d with every bump failing, want %d", g, g0)
	}

	if n := packets(); n != 0 { // this read makes the bump
		t.Fatalf("deleted port: %d packets", n)
	}
	if g := readGen(); g != g0+1 {
		t.Fatalf("generation %d after a read with a bump owed, want %d", g, g0+1)
	}
	runFrame(t, in, frame)
	if n := packets(); n != 1 {
		t.Errorf("a packet after the slot was freed: %d counted, want 1", n)
	}
}

// failingGen returns a map user space may not write, to stand in for the
// deletion generation so that bumps fail, and a reader of d's real one.
func failingGen(t *testing.T, d *Datapath) (*ebpf.Map, func() uint32) {
	t.Helper()
	readOnly, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1, Flags: unix.BPF_F_RDONLY})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { readOnly.Close() })
	gen := d.objs.NsflowGen
	return readOnly, func() uint32 {
		t.Helper()
		var g uint32
		if err := gen.Lookup(uint32(0), &g); err != nil {
			t.Fatal(err)
		}
		return g
	}
}
