package bpf

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync/atomic"

	"github.com/cilium/ebpf"
	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Our legacy tc filters are told apart from anyone else's by this
// priority, their name and their handle, and checked by program ID before
// removal. The handle is the ID of the datapath's flow table: datapaths
// with tables of their own (the agent, a verify or bench run beside it)
// each have their filter and leave each other's alone, while a filter of
// a run that died and counted into the same pinned tables is recognised
// as ours, and replaced, since it would count every packet twice.
const (
	tcPriority = 1 // run before filters at higher numbers
	tcName     = "nsflow"
)

// tcAttachment is the clsact fallback: a direct-action bpf filter per
// direction. The qdisc is shared with other tools, so it is added only
// when absent and removed only if we added it and it holds no filter.
type tcAttachment struct {
	// ns is the interface's namespace, held open until detach: the path
	// it was entered by may be gone by then (an unnamed namespace is
	// opened through one of its processes), and tc filters, unlike tcx
	// links, outlive the process unless removed.
	ns         netns.NsHandle
	ifindex    int
	handle     uint32
	progIDs    [2]ebpf.ProgramID // ingress, egress
	addedQdisc bool
	// removedOwn is set once a detach found and removed our filters: the
	// interface at ifindex was still the one attached to, so a retry may
	// remove the qdisc we added. Without that, an interface that took the
	// index meanwhile may have another tool's clsact, with no filter yet.
	removedOwn bool
}

// tcHandle is the filter handle of d's programs (see tcPriority).
func (d *Datapath) tcHandle() (uint32, error) {
	info, err := d.objs.NsflowFlows.Info()
	if err != nil {
		return 0, fmt.Errorf("flow table info: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return 0, errors.New("flow table info: the kernel reports no map ID")
	}
	return uint32(id), nil
}

var tcParents = [2]uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS}

func (a *Attachment) attachTC() error {
	a.d.deadMu.Lock()
	defer a.d.deadMu.Unlock()
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE) // bound to the current thread's namespace
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByIndex(a.Ifindex)
	if err != nil {
		return fmt.Errorf("find interface: %w", err)
	}
	handle, err := a.d.tcHandle()
	if err != nil {
		return err
	}
	// A run that died left its filters here: take their handle, so that
	// our filters replace them in one step (no packet counted twice or
	// not at all), as when the flow table, whose ID the handle is, kept
	// its ID.
	dead, err := a.d.deadRunFilters(h, l)
	if err != nil {
		return err
	}
	if len(dead) > 0 {
		handle = dead[0].Handle
	}
	ns, err := netns.Get() // this thread is in the interface's namespace
	if err != nil {
		return fmt.Errorf("open the namespace: %w", err)
	}
	t := &tcAttachment{ns: ns, ifindex: a.Ifindex, handle: handle}
	defer func() {
		if a.tc == nil { // failed
			ns.Close()
		}
	}()
	if t.addedQdisc, err = ensureClsact(h, l); err != nil {
		return err
	}
	// On an error, t.remove takes back what this call added: it matches
	// only the program IDs in t.progIDs, set once a filter is in place.
	ids, err := a.d.progIDs()
	if err != nil {
		_ = t.remove(h, l, true)
		return err
	}
	progs := [2]*ebpf.Program{a.d.objs.NsflowIngress, a.d.objs.NsflowEgress}
	for i, p := range progs {
		progID := ids[i]
		f := &netlink.BpfFilter{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: a.Ifindex,
				Parent:    tcParents[i],
				Handle:    handle,
				Priority:  tcPriority,
				Protocol:  unix.ETH_P_ALL,
			},
			Fd:           p.FD(),
			Name:         fmt.Sprintf("%s_%d", tcName, i),
			DirectAction: true,
		}
		err = h.FilterAdd(f)
		if errors.Is(err, unix.EEXIST) {
			switch id, ours, lerr := ownFilter(h, l, tcParents[i], handle); {
			case lerr != nil:
				err = fmt.Errorf("%w (%w)", err, lerr)
			case ours && slices.Contains(ids, id):
				err = fmt.Errorf("%w: this datapath is attached here already", err)
			case ours:
				// A filter of a run that died, counting into the same
				// tables: replace it.
				err = h.FilterReplace(f)
			}
		}
		if err != nil {
			_ = t.remove(h, l, true)
			return fmt.Errorf("tc filter (clsact %s, prio %d, handle %#x): %w",
				[]string{"ingress", "egress"}[i], tcPriority, handle, err)
		}
		t.progIDs[i] = progID
	}
	if _, err := a.d.removeDeadRunFilters(h, l, t.progIDs[:]...); err != nil {
		_ = t.remove(h, l, true)
		return err
	}
	a.tc = t
	a.Mode = ModeTC
	return nil
}

// deadRunFilters returns, on l, our tc filters (our priority and name)
// whose program is not one of keep but uses this datapath's pinned port
// table: those of a run that died (kill -9 in tc mode). They count into
// the same port tables and would count every packet a second time. A
// datapath without pins has tables nobody else's program uses.
func (d *Datapath) deadRunFilters(h *netlink.Handle, l netlink.Link, keep ...ebpf.ProgramID) ([]*netlink.BpfFilter, error) {
	if len(d.pinnedIDs) == 0 {
		return nil, nil
	}
	var out []*netlink.BpfFilter
	for _, parent := range tcParents {
		fs, err := listFilters(h, l, parent)
		if err != nil {
			continue // no clsact qdisc: no filter
		}
		for _, f := range fs {
			bf, ok := f.(*netlink.BpfFilter)
			if !ok || bf.Priority != tcPriority || !strings.HasPrefix(bf.Name, tcName) || slices.Contains(keep, ebpf.ProgramID(bf.Id)) {
				continue
			}
			uses, err := progUsesMap(ebpf.ProgramID(bf.Id), d.pinnedIDs)
			if err != nil {
				return nil, fmt.Errorf("tc filter %#x: %w", bf.Handle, err)
			}
			if uses {
				out = append(out, bf)
			}
		}
	}
	return out, nil
}

// removeDeadRunFilters deletes the deadRunFilters on l and returns how
// many.
func (d *Datapath) removeDeadRunFilters(h *netlink.Handle, l netlink.Link, keep ...ebpf.ProgramID) (int, error) {
	dead, err := d.deadRunFilters(h, l, keep...)
	if err != nil {
		return 0, err
	}
	for i, bf := range dead {
		if err := h.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
			return i, fmt.Errorf("remove the tc filter of a run that died (handle %#x): %w", bf.Handle, err)
		}
	}
	return len(dead), nil
}

// RemoveDeadRunFilters removes the tc filters that a run that died left
// counting into this datapath's pinned tables (see deadRunFilters) from
// the interfaces with the given indexes (all, for nil) of the namespace
// at netnsPath, which must still be the one with inode ino. It returns
// how many it removed. Attach replaces such filters in one step on the
// interfaces it attaches to; this is for the others (an agent restarted
// with narrower filters), where they would go on counting, and count
// every packet twice once the interface is watched again.
func (d *Datapath) RemoveDeadRunFilters(netnsPath string, ino uint64, ifindexes []int) (int, error) {
	done, err := d.use()
	if err != nil {
		return 0, fmt.Errorf("bpf: remove dead run's filters: %w", err)
	}
	defer done()
	if len(d.pinnedIDs) == 0 {
		return 0, nil
	}
	removed := 0
	err = nsenter.DoInode(netnsPath, ino, func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		links, err := h.LinkList()
		if err != nil {
			return fmt.Errorf("list interfaces: %w", err)
		}
		// This datapath's own filters are live, not a dead run's: an
		// interface attached meanwhile keeps them.
		own, err := d.progIDs()
		if err != nil {
			return err
		}
		var errs []error
		for _, l := range links {
			if ifindexes != nil && !slices.Contains(ifindexes, l.Attrs().Index) {
				continue
			}
			d.deadMu.Lock()
			n, err := d.removeDeadRunFilters(h, l, own...)
			d.deadMu.Unlock()
			removed += n
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", l.Attrs().Name, err))
			}
		}
		return errors.Join(errs...)
	})
	return removed, err
}

// progIDs are the IDs of this datapath's programs.
func (d *Datapath) progIDs() ([]ebpf.ProgramID, error) {
	var ids []ebpf.ProgramID
	for _, p := range []*ebpf.Program{d.objs.NsflowIngress, d.objs.NsflowEgress} {
		info, err := p.Info()
		if err != nil {
			return nil, fmt.Errorf("program info: %w", err)
		}
		id, ok := info.ID()
		if !ok {
			return nil, errors.New("program info: the kernel reports no program ID")
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// progUsesMap reports whether the program with id uses any of the maps ms.
// A program gone meanwhile uses nothing; one that cannot be inspected is
// an error, not a filter to keep in silence.
func progUsesMap(id ebpf.ProgramID, ms []ebpf.MapID) (bool, error) {
	p, err := ebpf.NewProgramFromID(id)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open program %d: %w", id, err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return false, fmt.Errorf("program %d info: %w", id, err)
	}
	ids, ok := info.MapIDs()
	if !ok {
		return false, fmt.Errorf("program %d: the kernel reports no map IDs", id)
	}
	return slices.ContainsFunc(ids, func(id ebpf.MapID) bool { return slices.Contains(ms, id) }), nil
}

// ensureClsact adds a clsact qdisc unless the interface has one, and
// reports whether it added it. It does not list the qdiscs first: the
// kernel answers a qdisc dump by walking every device of the namespace,
// which made each attach cost time in proportion to the number of
// interfaces (2.4 ms per port among 2000, 0.6 ms in a small namespace).
// An exclusive create answers EEXIST when a clsact is there already, or
// a legacy ingress qdisc: only then are the qdiscs listed, to tell them
// apart. An ingress qdisc has one hook, which takes filters for either of
// clsact's: both programs would run on received packets, and sent ones
// would go uncounted.
func ensureClsact(h *netlink.Handle, l netlink.Link) (bool, error) {
	err := h.QdiscAdd(clsactQdisc(l))
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, unix.EEXIST) {
		return false, fmt.Errorf("add clsact qdisc: %w", err)
	}
	qs, err := h.QdiscList(l)
	if err != nil {
		return false, fmt.Errorf("list qdiscs: %w", err)
	}
	for _, q := range qs {
		if a := q.Attrs(); a.Handle == netlink.MakeHandle(0xffff, 0) && q.Type() != "clsact" {
			return false, fmt.Errorf("the interface has an %s qdisc, not clsact: nsflow's tc mode needs clsact's two hooks "+
				"(remove that qdisc, or use a kernel with tcx, Linux 6.6 or later)", q.Type())
		}
	}
	return false, nil
}

// listFilters lists the filters of a link on parent. A dump the kernel
// interrupts (the filters changed meanwhile) is taken again.
func listFilters(h *netlink.Handle, l netlink.Link, parent uint32) ([]netlink.Filter, error) {
	fs, err := h.FilterList(l, parent)
	for try := 0; errors.Is(err, netlink.ErrDumpInterrupted) && try < 5; try++ {
		fs, err = h.FilterList(l, parent)
	}
	if err != nil {
		return nil, fmt.Errorf("list filters: %w", err)
	}
	return fs, nil
}

// ownFilter reports whether the filter at our priority and handle on
// parent carries our name, and which program it runs.
func ownFilter(h *netlink.Handle, l netlink.Link, parent, handle uint32) (ebpf.ProgramID, bool, error) {
	fs, err := listFilters(h, l, parent)
	if err != nil {
		return 0, false, err
	}
	for _, f := range fs {
		bf, ok := f.(*netlink.BpfFilter)
		if ok && bf.Handle == handle && bf.Priority == tcPriority && strings.HasPrefix(bf.Name, tcName) {
			return ebpf.ProgramID(bf.Id), true, nil
		}
	}
	return 0, false, nil
}

// failTCDetach, set by tests (FailNextTCDetach), makes the next tc detach
// fail before it removes anything, as a netlink error would.
var failTCDetach atomic.Pointer[error]

// FailNextTCDetach makes the next tc detach fail with err. It is for the
// tests of callers, such as the agent's, which cannot make netlink fail.
func FailNextTCDetach(err error) { failTCDetach.Store(&err) }

// detach runs inside the attachment's namespace.
func (t *tcAttachment) detach() error {
	if err := failTCDetach.Swap(nil); err != nil {
		return *err
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByIndex(t.ifindex)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
			return nil // the interface went, and its filters with it
		}
		return err
	}
	return t.remove(h, l, false)
}

// remove deletes the filters that run our programs, then the qdisc if we
// added it and nobody else has a filter on it, and l is known to be the
// interface attached to: attaching says so (sameLink), or our filters
// being found on it. Between the check for filters and the delete
// another tool could add one; it would have to race a detach, and the
// window is one netlink round trip.
func (t *tcAttachment) remove(h *netlink.Handle, l netlink.Link, sameLink bool) error {
	var errs []error
	empty := true
	for i, parent := range tcParents {
		fs, err := listFilters(h, l, parent)
		if err != nil {
			errs = append(errs, err)
			empty = false
			continue
		}
		for _, f := range fs {
			bf, ok := f.(*netlink.BpfFilter)
			if ok && bf.Handle == t.handle && bf.Priority == tcPriority && ebpf.ProgramID(bf.Id) == t.progIDs[i] {
				if err := h.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
					errs = append(errs, fmt.Errorf("delete filter: %w", err))
					empty = false
				} else {
					t.removedOwn = true
				}
				continue
			}
			empty = false
		}
	}
	if t.addedQdisc && empty && (sameLink || t.removedOwn) {
		if err := h.QdiscDel(clsactQdisc(l)); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("delete clsact qdisc: %w", err))
		}
	}
	return errors.Join(errs...)
}

// clsactQdisc is the clsact qdisc of link l, as added and deleted.
func clsactQdisc(l netlink.Link) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: l.Attrs().Index,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
}
