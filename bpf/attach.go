package bpf

import (
	"errors"
	"fmt"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/nsflow/nsflow/internal/nsenter"
)

// AttachMode is how the programs are attached to an interface.
type AttachMode string

const (
	// ModeTCX is a tcx link (Linux 6.6 and later).
	ModeTCX AttachMode = "tcx"
	// ModeTC is a direct-action bpf filter on a clsact qdisc.
	ModeTC AttachMode = "tc"
)

// Attachment is the programs attached to both directions of one interface.
type Attachment struct {
	Netns       string // namespace path given to Attach ("" = current)
	Ifname      string
	Ifindex     int
	NetnsCookie uint64
	Mode        AttachMode

	d        *Datapath
	seq      uint64      // order of the attaches that succeeded (under d.mu)
	links    []link.Link // ModeTCX
	tc       *tcAttachment
	mu       sync.Mutex
	detached bool
}

// Key is the PortKey under which this interface's traffic is counted.
func (a *Attachment) Key() PortKey {
	return PortKey{NetnsCookie: a.NetnsCookie, Ifindex: uint32(a.Ifindex)}
}

// Attach attaches the programs to ingress and egress of ifname in the
// network namespace at netnsPath ("" = current). With tcx the programs are
// anchored at the head, so they see a packet before any program that
// redirects or drops it.
func (d *Datapath) Attach(netnsPath, ifname string) (*Attachment, error) {
	return d.attach(netnsPath, ifname, func() (netlink.Link, error) { return netlink.LinkByName(ifname) })
}

// AttachIndex is Attach by interface index. Where interfaces come and go,
// as for the agent, a name may be another interface's by the time the
// attach runs (deleted and created anew); an index is not reused so soon.
func (d *Datapath) AttachIndex(netnsPath string, ifindex int) (*Attachment, error) {
	return d.attach(netnsPath, fmt.Sprintf("interface index %d", ifindex),
		func() (netlink.Link, error) { return netlink.LinkByIndex(ifindex) })
}

// attach attaches to the link find returns in the namespace at netnsPath;
// what names the interface in errors.
func (d *Datapath) attach(netnsPath, what string, find func() (netlink.Link, error)) (*Attachment, error) {
	done, err := d.use()
	if err != nil {
		return nil, fmt.Errorf("bpf: attach: %w", err)
	}
	defer done()
	a := &Attachment{Netns: netnsPath, d: d}
	where := what
	if netnsPath != "" {
		where = fmt.Sprintf("%s in %s", what, netnsPath)
	}
	// The ifindex of a tcx link and the netlink requests of the tc path are
	// resolved in the calling thread's namespace, so all of it runs there.
	err = nsenter.Do(netnsPath, func() error {
		l, err := find()
		if err != nil {
			return fmt.Errorf("find interface: %w", err)
		}
		a.Ifname, a.Ifindex = l.Attrs().Name, l.Attrs().Index
		if a.NetnsCookie, err = currentNetnsCookie(); err != nil {
			return err
		}
		// The slot first, before the program sees the port's packets.
		if _, err := d.claimSlot(a.Key()); err != nil {
			return err
		}
		if err := a.attachProgs(); err != nil {
			_ = d.releaseSlot(a.Key())
			return err
		}
		d.slotInUse(a.Key())
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bpf: attach to %s: %w", where, err)
	}
	d.mu.Lock()
	if d.closed {
		// Close ran meanwhile and did not see this attachment; it waits
		// for this undoing.
		d.mu.Unlock()
		err := a.detach()
		d.dropSlotUser(a.Key())
		return nil, errors.Join(fmt.Errorf("bpf: attach: %w", ErrClosed), err)
	}
	d.attachSeq++
	a.seq = d.attachSeq
	d.attached[a] = struct{}{}
	d.mu.Unlock()
	return a, nil
}

// attachProgs attaches with tcx, or with tc where the kernel has no tcx
// (unless the datapath forces one mode).
func (a *Attachment) attachProgs() error {
	// Where a run that died in tc mode left its filters, tc mode takes
	// their place in one step; tcx beside them would count twice until
	// they were removed.
	if a.d.forceMode == "" {
		if dead, err := a.d.hasDeadRunFilters(a.Ifindex); err != nil {
			return err
		} else if dead {
			return a.attachTC()
		}
	}
	if a.d.forceMode != ModeTC {
		err := a.attachTCX()
		if err == nil || a.d.forceMode == ModeTCX || !errors.Is(err, link.ErrNotSupported) {
			return err
		}
	}
	return a.attachTC()
}

func (a *Attachment) attachTCX() error {
	for _, p := range []struct {
		prog *ebpf.Program
		at   ebpf.AttachType
	}{
		{a.d.objs.NsflowIngress, ebpf.AttachTCXIngress},
		{a.d.objs.NsflowEgress, ebpf.AttachTCXEgress},
	} {
		l, err := link.AttachTCX(link.TCXOptions{
			Interface: a.Ifindex,
			Program:   p.prog,
			Attach:    p.at,
			Anchor:    link.Head(),
		})
		if err != nil {
			for _, l := range a.links {
				l.Close()
			}
			a.links = nil
			return fmt.Errorf("tcx %s: %w", p.at, err)
		}
		a.links = append(a.links, l)
	}
	a.Mode = ModeTCX
	// A run that died in tc mode may have left filters counting into our
	// pinned tables here.
	if len(a.d.pinnedIDs) > 0 {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE) // this thread is in the interface's namespace
		if err == nil {
			var l netlink.Link
			if l, err = h.LinkByIndex(a.Ifindex); err == nil {
				a.d.deadMu.Lock()
				_, err = a.d.removeDeadRunFilters(h, l)
				a.d.deadMu.Unlock()
			}
			h.Close()
		}
		if err != nil {
			for _, l := range a.links {
				l.Close()
			}
			a.links = nil
			return err
		}
	}
	return nil
}

// hasDeadRunFilters reports whether a run that died left filters on the
// interface (in the calling thread's namespace).
func (d *Datapath) hasDeadRunFilters(ifindex int) (bool, error) {
	if len(d.pinnedIDs) == 0 {
		return false, nil
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return false, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByIndex(ifindex)
	if err != nil {
		return false, fmt.Errorf("find interface: %w", err)
	}
	dead, err := d.deadRunFilters(h, l)
	return len(dead) > 0, err
}

// Alive reports whether the programs are still on the interface they were
// attached to. They are not once it was deleted, even if another device
// took its index since: a watcher that lost notifications (a netlink
// overflow) learns from this that an index it knows is a new device.
func (a *Attachment) Alive() (bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.detached {
		return false, nil
	}
	if a.Mode == ModeTCX {
		for _, l := range a.links {
			info, err := l.Info()
			if err != nil {
				return false, fmt.Errorf("bpf: tcx link of %s: %w", a.Ifname, err)
			}
			// A link whose device went stays open, on ifindex 0.
			if tcx := info.TCX(); tcx == nil || tcx.Ifindex == 0 {
				return false, nil
			}
		}
		return len(a.links) > 0, nil
	}
	if a.tc == nil {
		return false, nil // detached
	}
	if a.d.supersededTC(a) {
		return false, nil // the filters there are a later attachment's
	}
	alive := false
	err := nsenter.DoHandle(a.tc.ns, func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink: %w", err)
		}
		defer h.Close()
		l, err := h.LinkByIndex(a.tc.ifindex)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) || errors.Is(err, unix.ENODEV) {
				return nil
			}
			return err
		}
		for i, parent := range tcParents {
			id, ok, err := ownFilter(h, l, parent, a.tc.handle)
			if err != nil {
				return err // cannot tell: not "gone"
			}
			if !ok || id != a.tc.progIDs[i] {
				return nil
			}
		}
		alive = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("bpf: filters of %s: %w", a.Ifname, err)
	}
	return alive, nil
}

// supersededTC reports whether a later tc attachment of d has a's port:
// one whose detach failed and is retried after its interface was deleted
// and another took its index (in its namespace), and was attached to.
// Two attachments of one interface cannot both succeed, so the later one
// is the interface there now.
func (d *Datapath) supersededTC(a *Attachment) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for b := range d.attached {
		if b != a && b.Mode == ModeTC && b.Key() == a.Key() && b.seq > a.seq {
			return true
		}
	}
	return false
}

// Detach removes the programs from the interface. It is idempotent and
// succeeds when the interface or its namespace is already gone (the
// kernel then removed the attachment with it). What it failed to remove
// (a tc filter netlink would not delete) it tries again when called
// again, and the datapath's Close tries too.
func (a *Attachment) Detach() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.detached {
		return nil
	}
	if err := a.detach(); err != nil {
		return err
	}
	a.detached = true
	a.d.mu.Lock()
	delete(a.d.attached, a)
	a.d.mu.Unlock()
	a.d.dropSlotUser(a.Key())
	return nil
}

func (a *Attachment) detach() error {
	var errs []error
	for _, l := range a.links {
		// Closing our only reference destroys the link; a link whose
		// device is gone is already defunct and closes cleanly.
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	a.links = nil
	if a.tc != nil && a.d.supersededTC(a) {
		// The filters at this index are a later attachment's: ours went
		// with the interface, which another took the index of.
		a.tc.ns.Close()
		a.tc = nil
	}
	if a.tc != nil {
		if err := nsenter.DoHandle(a.tc.ns, a.tc.detach); err != nil {
			errs = append(errs, err) // kept, with its namespace, to try again
		} else {
			a.tc.ns.Close()
			a.tc = nil
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bpf: detach from %s: %w", a.Ifname, err)
	}
	return nil
}
