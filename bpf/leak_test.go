package bpf

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/internal/testenv"
)

// Attach and detach 1000 times, then close: every link, filter, qdisc,
// program, map and file descriptor this test created is gone. Only our
// own objects are checked, by ID: other tests on this host attach the
// same programs concurrently.
func TestAttachDetachNoLeaks(t *testing.T) {
	for _, mode := range []AttachMode{ModeTCX, ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			// tcx attach and detach each wait for an RCU grace period, so
			// the 1000 cycles run on 20 interfaces at once, 50 each.
			const workers, cycles = 20, 50
			a, b := newTestNS(t), newTestNS(t)
			var ends []*end
			for i := 0; i < workers/2; i++ {
				ea, eb := vethPair(t, a, b, 10+i)
				ends = append(ends, ea, eb)
			}
			fds := openFDs(t)

			d, err := Load(Options{ForceMode: mode})
			if err != nil {
				t.Fatal(err)
			}
			progIDs, mapIDs := objectIDs(t, d)
			var (
				mu      sync.Mutex
				linkIDs []link.ID
				wg      sync.WaitGroup
			)
			for _, e := range ends {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := 0; i < cycles; i++ {
						ids, err := attachDetach(d, e, mode)
						mu.Lock()
						linkIDs = append(linkIDs, ids...)
						mu.Unlock()
						if err != nil {
							t.Errorf("%s cycle %d: %v", e.Ifname, i, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			if t.Failed() {
				d.Close()
				return
			}
			if mode == ModeTCX && len(linkIDs) != 2*workers*cycles {
				t.Fatalf("%d tcx links, want %d", len(linkIDs), 2*workers*cycles)
			}
			for _, id := range linkIDs {
				if l, err := link.NewFromID(id); err == nil {
					l.Close()
					t.Fatalf("link %d still exists after detach", id)
				}
			}
			for _, e := range ends {
				checkNoTC(t, e)
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
			waitGone(t, progIDs, mapIDs)
			// Fewer is fine: an fd of an earlier test may close meanwhile.
			if got := openFDs(t); got > fds {
				t.Errorf("%d open fds after close, %d before", got, fds)
			}
		})
	}
}

// attachDetach attaches to e, checks the mode, detaches twice (Detach is
// idempotent) and returns the IDs of the tcx links it had.
func attachDetach(d *Datapath, e *end, mode AttachMode) ([]link.ID, error) {
	att, err := d.Attach(e.NS.Path, e.Ifname)
	if err != nil {
		return nil, err
	}
	var ids []link.ID
	for _, l := range att.links {
		info, err := l.Info()
		if err != nil {
			return ids, err
		}
		ids = append(ids, info.ID)
	}
	if att.Mode != mode {
		return ids, fmt.Errorf("attached with %q, want %q", att.Mode, mode)
	}
	if err := att.Detach(); err != nil {
		return ids, err
	}
	return ids, att.Detach()
}

// Detach succeeds when the interface, or its whole namespace, is gone.
func TestDetachAfterInterfaceGone(t *testing.T) {
	for _, mode := range []AttachMode{ModeTCX, ModeTC} {
		for _, gone := range []string{"interface", "namespace"} {
			t.Run(string(mode)+"/"+gone, func(t *testing.T) {
				d := loadForTest(t, Options{ForceMode: mode})
				a, b := newTestNS(t), newTestNS(t)
				ea, _ := vethPair(t, a, b, 5)
				att, err := d.Attach(ea.NS.Path, ea.Ifname)
				if err != nil {
					t.Fatal(err)
				}
				switch gone {
				case "interface":
					ea.NS.do(t, func() error {
						l, err := netlink.LinkByName(ea.Ifname)
						if err != nil {
							return err
						}
						return netlink.LinkDel(l)
					})
				case "namespace":
					// The veth goes with the namespace (in tc mode, once
					// the attachment lets go of it).
					if err := netns.DeleteNamed(a.Name); err != nil {
						t.Fatal(err)
					}
				}
				if err := att.Detach(); err != nil {
					t.Fatalf("detach: %v", err)
				}
			})
		}
	}
}

// TestDetachAfterPathGone: the path an attachment entered its namespace
// by is gone (an unnamed namespace's process exited, a named one was
// unmounted) while the namespace lives on. Detach still removes the
// programs, and in tc mode the filters and the qdisc it added.
func TestDetachAfterPathGone(t *testing.T) {
	for _, mode := range []AttachMode{ModeTCX, ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			d := loadForTest(t, Options{ForceMode: mode})
			a, b := newTestNS(t), newTestNS(t)
			ea, _ := vethPair(t, a, b, 9)
			att, err := d.Attach(ea.NS.Path, ea.Ifname)
			if err != nil {
				t.Fatal(err)
			}
			var linkIDs []link.ID
			for _, l := range att.links {
				info, err := l.Info()
				if err != nil {
					t.Fatal(err)
				}
				linkIDs = append(linkIDs, info.ID)
			}
			held, err := netns.GetFromPath(ea.NS.Path) // the namespace lives on
			if err != nil {
				t.Fatal(err)
			}
			defer held.Close()
			if err := netns.DeleteNamed(a.Name); err != nil {
				t.Fatal(err)
			}
			if err := att.Detach(); err != nil {
				t.Fatalf("detach: %v", err)
			}
			for _, id := range linkIDs {
				if l, err := link.NewFromID(id); err == nil {
					l.Close()
					t.Errorf("tcx link %d still exists after detach", id)
				}
			}
			checkNoTCIn(t, held, ea.Ifname)
		})
	}
}

func openFDs(t testing.TB) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

func objectIDs(t testing.TB, d *Datapath) (progs []ebpf.ProgramID, maps []ebpf.MapID) {
	t.Helper()
	for _, p := range []*ebpf.Program{d.objs.NsflowIngress, d.objs.NsflowEgress} {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		progs = append(progs, id)
		ids, _ := info.MapIDs()
		maps = append(maps, ids...)
	}
	return progs, maps
}

// waitGone waits for the kernel to free programs and maps by ID; it frees
// them after an RCU grace period, not at the last close.
func waitGone(t testing.TB, progs []ebpf.ProgramID, maps []ebpf.MapID) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var left []any
		for _, id := range progs {
			if p, err := ebpf.NewProgramFromID(id); err == nil {
				p.Close()
				left = append(left, "program", id)
			} else if !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
		for _, id := range maps {
			if m, err := ebpf.NewMapFromID(id); err == nil {
				m.Close()
				left = append(left, "map", id)
			} else if !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still there after close: %v", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkNoTC checks that the end has no clsact qdisc and no filter left.
func checkNoTC(t testing.TB, e *end) {
	t.Helper()
	h, err := netns.GetFromPath(e.NS.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	checkNoTCIn(t, h, e.Ifname)
}

// checkNoTCIn is checkNoTC for an interface of the namespace h.
func checkNoTCIn(t testing.TB, h netns.NsHandle, ifname string) {
	t.Helper()
	filters, clsact := tcOn(t, h, ifname)
	for parent, fs := range filters {
		if len(fs) > 0 {
			t.Errorf("filters left on %s (%#x): %+v", ifname, parent, fs)
		}
	}
	if clsact {
		t.Errorf("clsact qdisc left on %s", ifname)
	}
}

// tcOn returns the filters on ifname in the namespace h, by parent
// (clsact ingress and egress), and whether it has a clsact qdisc.
func tcOn(t testing.TB, h netns.NsHandle, ifname string) (filters map[uint32][]netlink.Filter, clsact bool) {
	t.Helper()
	filters = map[uint32][]netlink.Filter{}
	err := nsenter.DoHandle(h, func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		for _, parent := range tcParents {
			if filters[parent], err = netlink.FilterList(l, parent); err != nil {
				return err
			}
		}
		qs, err := netlink.QdiscList(l)
		for _, q := range qs {
			clsact = clsact || q.Type() == "clsact"
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return filters, clsact
}

// TestAttachIndex: an attach by index goes to that interface or fails; it
// never lands on another interface that has taken the name meanwhile (an
// interface deleted and created anew), which an attach by name would.
func TestAttachIndex(t *testing.T) {
	d := loadForTest(t, Options{})
	a, b := newTestNS(t), newTestNS(t)
	ea, _ := vethPair(t, a, b, 11)
	old := indexIn(t, a, ea.Ifname)
	a.do(t, func() error {
		l, err := netlink.LinkByName(ea.Ifname)
		if err != nil {
			return err
		}
		if err := netlink.LinkDel(l); err != nil {
			return err
		}
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: ea.Ifname}, PeerName: testenv.Name("vp")})
	})
	cur := indexIn(t, a, ea.Ifname)
	if cur == old {
		t.Fatalf("the new %s has the old index %d", ea.Ifname, old)
	}
	if att, err := d.AttachIndex(a.Path, old); err == nil {
		att.Detach()
		t.Fatalf("attached to index %d, which is gone (to %s, index %d)", old, att.Ifname, att.Ifindex)
	}
	att, err := d.AttachIndex(a.Path, cur)
	if err != nil {
		t.Fatal(err)
	}
	defer att.Detach()
	if att.Ifname != ea.Ifname || att.Ifindex != cur {
		t.Errorf("attached to %s (index %d), want %s (index %d)", att.Ifname, att.Ifindex, ea.Ifname, cur)
	}
}

func indexIn(t *testing.T, n *testNS, ifname string) (idx int) {
	t.Helper()
	n.do(t, func() error {
		l, err := netlink.LinkByName(ifname)
		if err == nil {
			idx = l.Attrs().Index
		}
		return err
	})
	return idx
}

// TestAliveAfterIndexReused: an attachment knows when its interface was
// deleted, even after another device took the same index in the same
// namespace (what a watcher that lost notifications sees as "the same
// link").
func TestAliveAfterIndexReused(t *testing.T) {
	for _, mode := range []AttachMode{ModeTCX, ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			d := loadForTest(t, Options{ForceMode: mode})
			a, b := newTestNS(t), newTestNS(t)
			ea, _ := vethPair(t, a, b, 6)
			att, err := d.Attach(ea.NS.Path, ea.Ifname)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { att.Detach() })
			if alive, err := att.Alive(); !alive || err != nil {
				t.Fatalf("alive right after attach: %v, %v", alive, err)
			}
			replaceAtIndex(t, ea, b, att.Ifindex)
			if alive, err := att.Alive(); alive || err != nil {
				t.Errorf("alive after the interface was replaced at index %d: %v, %v", att.Ifindex, alive, err)
			}
		})
	}
}

// TestDetachRetried: a tc detach that fails leaves the filters, and the
// attachment knows it: Detach again removes them, and so does the
// datapath's Close when nobody calls it.
func TestDetachRetried(t *testing.T) {
	for _, retry := range []string{"detach", "close"} {
		t.Run(retry, func(t *testing.T) {
			d, err := Load(Options{ForceMode: ModeTC})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			a, b := newTestNS(t), newTestNS(t)
			ea, _ := vethPair(t, a, b, 7)
			att, err := d.Attach(ea.NS.Path, ea.Ifname)
			if err != nil {
				t.Fatal(err)
			}
			filters := func() string {
				out, err := exec.Command("ip", "netns", "exec", a.Name, "tc", "filter", "show", "dev", ea.Ifname, "ingress").CombinedOutput()
				if err != nil {
					t.Fatalf("tc filter show: %v: %s", err, out)
				}
				return string(out)
			}
			FailNextTCDetach(errors.New("injected netlink failure"))
			if err := att.Detach(); err == nil {
				t.Fatal("detach with an injected failure succeeded")
			}
			if !strings.Contains(filters(), "nsflow") {
				t.Fatalf("the failed detach removed the filter:\n%s", filters())
			}
			switch retry {
			case "detach":
				err = att.Detach()
			case "close":
				err = d.Close()
			}
			if err != nil {
				t.Fatalf("%s after a failed detach: %v", retry, err)
			}
			if f := filters(); strings.Contains(f, "nsflow") {
				t.Errorf("filter left after %s:\n%s", retry, f)
			}
		})
	}
}

// TestFailedAttachKeepsOthersSlot: two attaches of one port race. The
// first claims the slot, the second finds it its port's and attaches; the
// first then fails (the programs are there already). Its failure must not
// free the slot the second counts in: the slot keeps its tag, and the
// second's packets are counted there, not in the hash map.
func TestFailedAttachKeepsOthersSlot(t *testing.T) {
	d := loadForTest(t, Options{})
	a, b := newTestNS(t), newTestNS(t)
	ea, eb := vethPair(t, a, b, 13)
	cookie, err := NetnsCookie(a.Path)
	if err != nil {
		t.Fatal(err)
	}
	k := PortKey{NetnsCookie: cookie, Ifindex: uint32(indexIn(t, a, ea.Ifname))}

	first, err := d.claimSlot(k)
	if err != nil || !first {
		t.Fatalf("the first claim: %v, %v; want the free slot claimed", first, err)
	}
	att, err := d.Attach(a.Path, ea.Ifname)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Attach(a.Path, ea.Ifname); err == nil {
		t.Fatal("a second attach of the same port succeeded")
	}
	if err := d.releaseSlot(k); err != nil { // the first attach failed
		t.Fatal(err)
	}
	const sent = 20
	if got := sendUDP(t, ea, eb, 4013, sent); got != sent {
		t.Fatalf("received %d of %d", got, sent)
	}
	slots, err := d.portSlots.get(portSlotIndex(k))
	if err != nil {
		t.Fatal(err)
	}
	for i := range slots {
		if tag, _ := slots[i].tag(); tag != k {
			t.Fatalf("CPU %d's slot is tagged %+v, want %+v", i, tag, k)
		}
	}
	if err := d.objs.NsflowPorts.Lookup(nsflowPortKey{NetnsCookie: k.NetnsCookie, Ifindex: k.Ifindex}, new([]nsflowPortStats)); err == nil {
		t.Error("the port counts in the hash map, not in its slot")
	}
	s, _, err := d.Port(k)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Get(Egress, IPv4, UDP).Packets; got != sent {
		t.Errorf("the slot counted %d UDP packets sent, want %d", got, sent)
	}
	if err := att.Detach(); err != nil {
		t.Fatal(err)
	}
	if n := len(d.slotUsers); n != 0 {
		t.Errorf("slot users left after every attach ended: %v", d.slotUsers)
	}
}

// TestFailedAttachesFreeTheirSlot: two attaches of one port in flight,
// the first claiming the free slot, the second finding it tagged, and
// both failing: the slot is free again after the last one, even when the
// claimer fails first.
func TestFailedAttachesFreeTheirSlot(t *testing.T) {
	d := loadForTest(t, Options{})
	a := newTestNS(t)
	cookie, err := NetnsCookie(a.Path)
	if err != nil {
		t.Fatal(err)
	}
	k := PortKey{NetnsCookie: cookie, Ifindex: 7}
	if claimed, err := d.claimSlot(k); err != nil || !claimed {
		t.Fatalf("first claim: %v, %v", claimed, err)
	}
	if claimed, err := d.claimSlot(k); err != nil || claimed {
		t.Fatalf("second claim: %v, %v; want the slot found tagged", claimed, err)
	}
	for range 2 { // the claimer fails, then the other
		if err := d.releaseSlot(k); err != nil {
			t.Fatal(err)
		}
	}
	slots, err := d.portSlots.get(portSlotIndex(k))
	if err != nil {
		t.Fatal(err)
	}
	for i := range slots {
		if tag, ok := slots[i].tag(); ok {
			t.Errorf("CPU %d's slot still tagged %+v", i, tag)
		}
	}
	if len(d.slotUsers) != 0 || len(d.slotFresh) != 0 {
		t.Errorf("left: users %v, fresh %v", d.slotUsers, d.slotFresh)
	}
	// A slot an attach completed on keeps its counts after a later
	// attach of the port fails (until DeletePort).
	k = PortKey{NetnsCookie: cookie, Ifindex: 8}
	if _, err := d.claimSlot(k); err != nil {
		t.Fatal(err)
	}
	d.slotInUse(k)
	d.dropSlotUser(k) // detached
	if _, err := d.claimSlot(k); err != nil {
		t.Fatal(err)
	}
	if err := d.releaseSlot(k); err != nil {
		t.Fatal(err)
	}
	if slots, err = d.portSlots.get(portSlotIndex(k)); err != nil {
		t.Fatal(err)
	}
	if tag, _ := slots[0].tag(); tag != k {
		t.Errorf("a completed attach's slot was freed by a later failed attach: tag %+v", tag)
	}

	// A live attachment of a port counting in the hash map (its slot was
	// another port's) starts counting in the slot when a second attach
	// of the port claims it, freed meanwhile; that attach failing, and
	// then another after the attachment is detached, leave its counts.
	k = PortKey{NetnsCookie: cookie, Ifindex: 9}
	d.slotMu.Lock()
	d.slotUsers[k]++ // the live attachment, whose claim found the slot taken
	d.slotMu.Unlock()
	if claimed, err := d.claimSlot(k); err != nil || !claimed {
		t.Fatalf("claim beside a live attachment: %v, %v", claimed, err)
	}
	if err := d.releaseSlot(k); err != nil { // the duplicate attach failed
		t.Fatal(err)
	}
	d.dropSlotUser(k) // the live attachment is detached
	if _, err := d.claimSlot(k); err != nil {
		t.Fatal(err)
	}
	if err := d.releaseSlot(k); err != nil { // a later attach failed
		t.Fatal(err)
	}
	if slots, err = d.portSlots.get(portSlotIndex(k)); err != nil {
		t.Fatal(err)
	}
	if tag, _ := slots[0].tag(); tag != k {
		t.Errorf("a slot a live attachment counted in was freed by failed attaches: tag %+v", tag)
	}
}

// TestCloseWaitsForAttaches: Close while attaches are in flight. Each
// attach either succeeds or fails with ErrClosed, never on a descriptor
// Close closed under it, and nothing is left attached.
func TestCloseWaitsForAttaches(t *testing.T) {
	for _, mode := range []AttachMode{ModeTCX, ModeTC} {
		t.Run(string(mode), func(t *testing.T) {
			a, b := newTestNS(t), newTestNS(t)
			var ends []*end
			for i := 0; i < 4; i++ {
				ea, eb := vethPair(t, a, b, 30+i)
				ends = append(ends, ea, eb)
			}
			d, err := Load(Options{ForceMode: mode})
			if err != nil {
				t.Fatal(err)
			}
			progIDs, mapIDs := objectIDs(t, d)
			var wg sync.WaitGroup
			var mu sync.Mutex
			attaches := 0
			for _, e := range ends {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						att, err := d.Attach(e.NS.Path, e.Ifname)
						if errors.Is(err, ErrClosed) {
							return
						}
						if err != nil {
							t.Errorf("%s: %v", e.Ifname, err)
							return
						}
						mu.Lock()
						attaches++
						mu.Unlock()
						if err := att.Detach(); err != nil {
							t.Errorf("%s: detach: %v", e.Ifname, err)
							return
						}
					}
				}()
			}
			time.Sleep(300 * time.Millisecond)
			if err := d.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			wg.Wait()
			if attaches == 0 {
				t.Fatal("no attach succeeded before Close: the test tested nothing")
			}
			for _, e := range ends {
				checkNoTC(t, e)
				e.NS.do(t, func() error {
					for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
						r, err := link.QueryPrograms(link.QueryOptions{Target: mustIndex(e.Ifname), Attach: at})
						if err != nil {
							return err
						}
						if len(r.Programs) > 0 {
							t.Errorf("%s: %d programs left at %v", e.Ifname, len(r.Programs), at)
						}
					}
					return nil
				})
			}
			waitGone(t, progIDs, mapIDs)
		})
	}
}

// replaceAtIndex deletes e's interface and puts the end of another veth
// pair (its peer in peerNS) in its place: same name, same index.
func replaceAtIndex(t *testing.T, e *end, peerNS *testNS, index int) {
	t.Helper()
	h, err := netns.GetFromPath(peerNS.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	e.NS.do(t, func() error {
		l, err := netlink.LinkByName(e.Ifname)
		if err != nil {
			return err
		}
		if err := netlink.LinkDel(l); err != nil {
			return err
		}
		return netlink.LinkAdd(&netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: e.Ifname, Index: index},
			PeerName:      testenv.Name("vr"),
			PeerNamespace: netlink.NsFd(int(h)),
		})
	})
}

// TestTCDetachAfterIndexReused: a tc detach that failed is retried after
// its interface was deleted and another took its index, with another
// tool's clsact qdisc and, in "reattached", our own later attachment:
// the retry removes neither that qdisc nor the later attachment's filters.
func TestTCDetachAfterIndexReused(t *testing.T) {
	for _, reattached := range []bool{false, true} {
		t.Run(fmt.Sprintf("reattached=%v", reattached), func(t *testing.T) {
			d := loadForTest(t, Options{ForceMode: ModeTC})
			a, b := newTestNS(t), newTestNS(t)
			ea, _ := vethPair(t, a, b, 8)
			stale, err := d.Attach(ea.NS.Path, ea.Ifname)
			if err != nil {
				t.Fatal(err)
			}
			FailNextTCDetach(errors.New("injected netlink failure"))
			if err := stale.Detach(); err == nil {
				t.Fatal("detach with an injected failure succeeded")
			}
			replaceAtIndex(t, ea, b, stale.Ifindex)
			ea.NS.do(t, func() error {
				l, err := netlink.LinkByName(ea.Ifname)
				if err != nil {
					return err
				}
				return netlink.QdiscAdd(clsactQdisc(l)) // another tool's
			})
			var later *Attachment
			if reattached {
				if later, err = d.Attach(ea.NS.Path, ea.Ifname); err != nil {
					t.Fatal(err)
				}
				if later.Ifindex != stale.Ifindex {
					t.Fatalf("the new interface has index %d, want %d", later.Ifindex, stale.Ifindex)
				}
				if alive, err := stale.Alive(); alive || err != nil {
					t.Errorf("the stale attachment is alive (%v, %v) on the later one's filters", alive, err)
				}
			}
			if err := stale.Detach(); err != nil {
				t.Fatalf("retried detach: %v", err)
			}
			h, err := netns.GetFromPath(a.Path)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			filters, clsact := tcOn(t, h, ea.Ifname)
			ours := 0
			for _, fs := range filters {
				for _, f := range fs {
					if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, tcName) {
						ours++
					}
				}
			}
			if !clsact {
				t.Error("the retried detach removed another tool's clsact qdisc")
			}
			if want := map[bool]int{false: 0, true: 2}[reattached]; ours != want {
				t.Errorf("%d of our filters on the interface after the retried detach, want %d (the later attachment's)", ours, want)
			}
			if later != nil {
				if err := later.Detach(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestCloseWaitsForCalls: Close while other goroutines read and delete
// counters. Each call either works or fails with ErrClosed, never on a
// descriptor Close closed under it (run with -race).
func TestCloseWaitsForCalls(t *testing.T) {
	d, err := Load(Options{})
	if err != nil {
		t.Fatal(err)
	}
	in, _ := d.Programs()
	frame, k := testRunUDP(t)
	runFrame(t, in, frame)
	calls := map[string]func() error{
		"Ports":        func() error { _, err := d.Ports(); return err },
		"Port":         func() error { _, _, err := d.Port(k); return err },
		"Flows":        func() error { return d.Flows(func(FlowKey, FlowStats) bool { return true }) },
		"DeleteFlows":  func() error { _, err := d.DeleteFlows(nil); return err },
		"DeletePort":   func() error { return d.DeletePort(PortKey{NetnsCookie: k.NetnsCookie, Ifindex: 99}) },
		"FlowOverflow": func() error { _, err := d.FlowOverflow(); return err },
		"RunStats":     func() error { _, _, err := d.RunStats(); return err },
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	worked := map[string]int{}
	for name, call := range calls {
		wg.Go(func() {
			for {
				err := call()
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil {
					t.Errorf("%s: %v", name, err)
					return
				}
				mu.Lock()
				worked[name]++
				mu.Unlock()
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	if err := d.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	wg.Wait()
	for name := range calls {
		if worked[name] == 0 {
			t.Errorf("%s never worked before Close: the test tested nothing", name)
		}
	}
}
