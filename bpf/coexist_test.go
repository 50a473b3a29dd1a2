package bpf

import (
	"github.com/nsflow/nsflow/internal/testenv"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Another tool's program on the same port keeps running, with its
// verdict, while nsflow is attached and after it detaches; nsflow still
// sees the packets that program drops.
func TestCoexistence(t *testing.T) {
	const tcActShot = 2 // also TCX_DROP
	for _, mode := range []AttachMode{ModeTCX, ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			d := loadForTest(t, Options{ForceMode: mode})
			a, b := newTestNS(t), newTestNS(t)
			ea, eb := vethPair(t, a, b, 3)
			other := newOtherProg(t, tcActShot)

			// The other program is attached first, on eb's ingress.
			var otherFilter *netlink.BpfFilter
			switch mode {
			case ModeTCX:
				eb.NS.do(t, func() error {
					idx := mustIndex(eb.Ifname)
					l, err := link.AttachTCX(link.TCXOptions{Interface: idx, Program: other.prog, Attach: ebpf.AttachTCXIngress})
					if err != nil {
						return err
					}
					t.Cleanup(func() { l.Close() })
					return nil
				})
			case ModeTC:
				eb.NS.do(t, func() error {
					l, err := netlink.LinkByName(eb.Ifname)
					if err != nil {
						return err
					}
					q := &netlink.GenericQdisc{
						QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
						QdiscType:  "clsact",
					}
					if err := netlink.QdiscAdd(q); err != nil {
						return err
					}
					otherFilter = &netlink.BpfFilter{
						FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS,
							Handle: 1, Priority: 10, Protocol: unix.ETH_P_ALL},
						Fd: other.prog.FD(), Name: "other", DirectAction: true,
					}
					return netlink.FilterAdd(otherFilter)
				})
			}

			att, err := d.Attach(eb.NS.Path, eb.Ifname)
			if err != nil {
				t.Fatal(err)
			}
			if att.Mode != mode {
				t.Fatalf("attached with %q, want %q", att.Mode, mode)
			}
			const n = 50
			if got := sendUDP(t, ea, eb, 5000, n); got != 0 {
				t.Errorf("with nsflow attached, %d datagrams got past the other program's drop", got)
			}
			if c := other.count(t); c != n {
				t.Errorf("other program ran %d times, want %d", c, n)
			}
			s, _, err := d.Port(att.Key())
			if err != nil {
				t.Fatal(err)
			}
			if c := s.Get(Ingress, IPv4, UDP); c.Packets != n {
				t.Errorf("nsflow saw %d of the %d dropped datagrams", c.Packets, n)
			}

			if err := att.Detach(); err != nil {
				t.Fatal(err)
			}
			if got := sendUDP(t, ea, eb, 5001, n); got != 0 {
				t.Errorf("after nsflow detached, %d datagrams got past the other program's drop", got)
			}
			if c := other.count(t); c != 2*n {
				t.Errorf("other program ran %d times, want %d", c, 2*n)
			}
			if mode == ModeTC {
				// Our filter is gone; the other's filter and the qdisc stay.
				eb.NS.do(t, func() error {
					l, err := netlink.LinkByName(eb.Ifname)
					if err != nil {
						return err
					}
					fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS)
					if err != nil {
						return err
					}
					if len(fs) != 1 || fs[0].Attrs().Priority != 10 {
						t.Errorf("filters after detach: %+v, want only the other's", fs)
					}
					return nil
				})
			}
		})
	}
}

// A filter of ours left by a run that died (same priority, handle and
// name) is replaced, not a reason to fail; detaching then removes it.
func TestTCReplacesStaleOwnFilter(t *testing.T) {
	d := loadForTest(t, Options{ForceMode: ModeTC})
	a, b := newTestNS(t), newTestNS(t)
	ea, _ := vethPair(t, a, b, 7)
	handle, err := d.tcHandle()
	if err != nil {
		t.Fatal(err)
	}
	addOwnFilters(t, ea, handle)
	att, err := d.Attach(ea.NS.Path, ea.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	in, eg := d.Programs()
	want := map[uint32]ebpf.ProgramID{netlink.HANDLE_MIN_INGRESS: progID(t, in), netlink.HANDLE_MIN_EGRESS: progID(t, eg)}
	ea.NS.do(t, func() error {
		l, err := netlink.LinkByName(ea.Ifname)
		if err != nil {
			return err
		}
		for parent, id := range want {
			fs, err := netlink.FilterList(l, parent)
			if err != nil {
				return err
			}
			if len(fs) != 1 || ebpf.ProgramID(fs[0].(*netlink.BpfFilter).Id) != id {
				t.Errorf("filters on %#x: %+v, want only ours (program %d)", parent, fs, id)
			}
		}
		return nil
	})
	if err := att.Detach(); err != nil {
		t.Fatal(err)
	}
	ea.NS.do(t, func() error {
		l, err := netlink.LinkByName(ea.Ifname)
		if err != nil {
			return err
		}
		for parent := range want {
			if fs, err := netlink.FilterList(l, parent); err != nil || len(fs) != 0 {
				t.Errorf("filters on %#x after detach: %+v, %v", parent, fs, err)
			}
		}
		return nil
	})
}

// TestTCRefusesIngressQdisc: a legacy ingress qdisc has one hook, which
// would take both programs' filters and count received packets as sent
// ones. tc mode refuses it, saying why, and leaves it and its interface
// as they were.
func TestTCRefusesIngressQdisc(t *testing.T) {
	d := loadForTest(t, Options{ForceMode: ModeTC})
	a, b := newTestNS(t), newTestNS(t)
	ea, _ := vethPair(t, a, b, 7)
	ea.NS.do(t, func() error {
		l, err := netlink.LinkByName(ea.Ifname)
		if err != nil {
			return err
		}
		return netlink.QdiscAdd(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: l.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}})
	})
	if _, err := d.Attach(ea.NS.Path, ea.Ifname); err == nil || !strings.Contains(err.Error(), "ingress qdisc, not clsact") {
		t.Fatalf("attach over an ingress qdisc: %v, want a refusal naming it", err)
	}
	ea.NS.do(t, func() error {
		l, err := netlink.LinkByName(ea.Ifname)
		if err != nil {
			return err
		}
		qs, err := netlink.QdiscList(l)
		if err != nil {
			return err
		}
		kept := false
		for _, q := range qs {
			kept = kept || q.Type() == "ingress"
		}
		if !kept {
			t.Errorf("the ingress qdisc is gone: %v", qs)
		}
		if fs, err := netlink.FilterList(l, netlink.HANDLE_MIN_INGRESS); err != nil || len(fs) != 0 {
			t.Errorf("filters left on the ingress qdisc: %+v, %v", fs, err)
		}
		return nil
	})
}

func progID(t testing.TB, p *ebpf.Program) ebpf.ProgramID {
	t.Helper()
	info, err := p.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

// netlinkHandle is a handle in the calling thread's namespace.
func netlinkHandle(t testing.TB) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandle()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// TestTCTwoDatapaths: two datapaths with tables of their own (an agent and
// a verify run beside it) attached in tc mode to one interface each count
// every packet, and detaching one leaves the other's filter and counts
// alone. A datapath attached twice to one interface is an error, as with
// tcx.
func TestTCTwoDatapaths(t *testing.T) {
	first, second := loadForTest(t, Options{ForceMode: ModeTC}), loadForTest(t, Options{ForceMode: ModeTC})
	a, b := newTestNS(t), newTestNS(t)
	ea, eb := vethPair(t, a, b, 8)
	att1, err := first.Attach(eb.NS.Path, eb.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { att1.Detach() })
	if again, err := first.Attach(eb.NS.Path, eb.Ifname); err == nil {
		again.Detach()
		t.Fatal("the same datapath attached twice to one interface")
	}
	att2, err := second.Attach(eb.NS.Path, eb.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	received := func(d *Datapath, att *Attachment) uint64 {
		t.Helper()
		s, _, err := d.Port(att.Key())
		if err != nil {
			t.Fatal(err)
		}
		return s.Get(Ingress, IPv4, UDP).Packets
	}

	udpTransfer(t, false, ea, eb, 7001, 100, 64, 1)
	if r1, r2 := received(first, att1), received(second, att2); r1 != 100 || r2 != 100 {
		t.Fatalf("UDP packets counted at %s: %d and %d, want 100 by each datapath", eb.Ifname, r1, r2)
	}
	if err := att2.Detach(); err != nil {
		t.Fatal(err)
	}
	udpTransfer(t, false, ea, eb, 7002, 50, 64, 1)
	if r1 := received(first, att1); r1 != 150 {
		t.Errorf("after the other datapath detached: %d UDP packets counted, want 150", r1)
	}
}

// A run that died in tc mode (its filters left, counting into the pinned
// tables) with a flow table of another size: the next run, here in tcx
// mode, removes those filters when it attaches, since they would count
// every packet a second time. A filter of a datapath with tables of its
// own stays.
//
// With slotsReplaced, the port slot table's pin is of another layout and
// replaced, the other tables kept: the dead run's programs still count
// into those, and are found by them.
func TestDeadRunFiltersRemoved(t *testing.T) {
	for _, mode := range []AttachMode{"", ModeTC, ModeTCX} {
		t.Run("mode="+string(mode), func(t *testing.T) { testDeadRunFiltersRemoved(t, mode, false) })
	}
	t.Run("slots-replaced", func(t *testing.T) { testDeadRunFiltersRemoved(t, "", true) })
}

func testDeadRunFiltersRemoved(t *testing.T, mode AttachMode, slotsReplaced bool) {
	testenv.RequireBPFFS(t)
	dir := filepath.Join("/sys/fs/bpf", testenv.Name("nsflow-test-"))
	t.Cleanup(func() { RemovePins(dir) })
	a, b := newTestNS(t), newTestNS(t)
	ea, _ := vethPair(t, a, b, 7)

	dead, err := Load(Options{PinPath: dir, MaxFlows: 64, ForceMode: ModeTC})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dead.Close() })
	if _, err := dead.Attach(ea.NS.Path, ea.Ifname); err != nil {
		t.Fatal(err)
	}
	deadHandle, err := dead.tcHandle()
	if err != nil {
		t.Fatal(err)
	}
	other := loadForTest(t, Options{ForceMode: ModeTC}) // unpinned
	if _, err := other.Attach(ea.NS.Path, ea.Ifname); err != nil {
		t.Fatal(err)
	}
	otherHandle, err := other.tcHandle()
	if err != nil {
		t.Fatal(err)
	}

	if slotsReplaced {
		path := filepath.Join(dir, nsflowMapNsflowPortSlots)
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Pin(path); err != nil {
			t.Fatal(err)
		}
		m.Close()
	}
	next, err := Load(Options{PinPath: dir, MaxFlows: 128, ForceMode: mode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { next.Close() })
	if slotsReplaced && !slices.Contains(next.PinsReplaced, nsflowMapNsflowPortSlots) {
		t.Fatalf("replaced %v, want the port slot table", next.PinsReplaced)
	}
	att, err := next.Attach(ea.NS.Path, ea.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	// Unless forced to tcx, the next run takes the dead filters' place in
	// tc mode, in one step: their handle, its programs.
	want, wantMode := []uint32{otherHandle, deadHandle}, ModeTC
	if mode == ModeTCX {
		want, wantMode = []uint32{otherHandle}, ModeTCX
	}
	if att.Mode != wantMode {
		t.Fatalf("mode %s, want %s", att.Mode, wantMode)
	}
	slices.Sort(want)
	in, eg := next.Programs()
	ours := map[uint32]ebpf.ProgramID{netlink.HANDLE_MIN_INGRESS: progID(t, in), netlink.HANDLE_MIN_EGRESS: progID(t, eg)}
	ea.NS.do(t, func() error {
		l, err := netlink.LinkByName(ea.Ifname)
		if err != nil {
			return err
		}
		for _, parent := range tcParents {
			fs, err := netlink.FilterList(l, parent)
			if err != nil {
				return err
			}
			var got []uint32
			for _, f := range fs {
				got = append(got, f.Attrs().Handle)
				if bf, ok := f.(*netlink.BpfFilter); ok && bf.Handle == deadHandle && ebpf.ProgramID(bf.Id) != ours[parent] {
					t.Errorf("filter %#x on %#x runs program %d, not the next run's %d", deadHandle, parent, bf.Id, ours[parent])
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("filters on %#x after the next run attached: handles %#x, want %#x (the other datapath's, and the next run's own in tc mode)", parent, got, want)
			}
		}
		return nil
	})
}

// addOwnFilters puts on e, for each handle, filters that look like ours
// (our priority and names) running a no-op: what a run that died leaves.
func addOwnFilters(t *testing.T, e *end, handles ...uint32) {
	t.Helper()
	stale := noopProg(t)
	e.NS.do(t, func() error {
		l, err := netlink.LinkByName(e.Ifname)
		if err != nil {
			return err
		}
		if _, err := ensureClsact(netlinkHandle(t), l); err != nil {
			return err
		}
		for _, handle := range handles {
			for i, parent := range tcParents {
				f := &netlink.BpfFilter{
					FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: parent,
						Handle: handle, Priority: tcPriority, Protocol: unix.ETH_P_ALL},
					Fd: stale.FD(), Name: tcName + "_" + string(rune('0'+i)), DirectAction: true,
				}
				if err := netlink.FilterAdd(f); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// TestRemoveDeadRunFilters: the sweep for interfaces a restarted run does
// not attach to removes a dead run's filters and leaves the live run's own
// (an interface it attached to meanwhile).
func TestRemoveDeadRunFilters(t *testing.T) {
	testenv.RequireBPFFS(t)
	dir := filepath.Join("/sys/fs/bpf", testenv.Name("nsflow-test-"))
	t.Cleanup(func() { RemovePins(dir) })
	a, b := newTestNS(t), newTestNS(t)
	ea, eb := vethPair(t, a, b, 7)
	dead, err := Load(Options{PinPath: dir, MaxFlows: 64, ForceMode: ModeTC})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dead.Close() })
	for _, e := range []*end{ea, eb} {
		if _, err := dead.Attach(e.NS.Path, e.Ifname); err != nil {
			t.Fatal(err)
		}
	}
	next, err := Load(Options{PinPath: dir, MaxFlows: 64, ForceMode: ModeTC})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { next.Close() })
	if _, err := next.Attach(eb.NS.Path, eb.Ifname); err != nil { // takes the dead filters' place
		t.Fatal(err)
	}
	inode := func(path string) uint64 {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ino
	}
	for _, tc := range []struct {
		ns   *testNS
		want int
	}{{a, 2}, {b, 0}, {a, 0}} {
		if n, err := next.RemoveDeadRunFilters(tc.ns.Path, inode(tc.ns.Path), nil); err != nil || n != tc.want {
			t.Errorf("sweep of %s: %d removed, %v; want %d", tc.ns.Name, n, err, tc.want)
		}
	}
	in, eg := next.Programs()
	eb.NS.do(t, func() error {
		l, err := netlink.LinkByName(eb.Ifname)
		if err != nil {
			return err
		}
		for i, parent := range tcParents {
			id, ours, err := ownFilter(netlinkHandle(t), l, parent, mustHandle(t, next))
			if err != nil {
				return err
			}
			if want := []ebpf.ProgramID{progID(t, in), progID(t, eg)}[i]; !ours || id != want {
				t.Errorf("%s on %#x: filter of program %d (ours %v), want the live run's %d", eb.Ifname, parent, id, ours, want)
			}
		}
		return nil
	})
}

func mustHandle(t *testing.T, d *Datapath) uint32 {
	t.Helper()
	h, err := d.tcHandle()
	if err != nil {
		t.Fatal(err)
	}
	return h
}
