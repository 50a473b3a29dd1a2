package bpf

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Foreign describes what on the packet path of the interface with index
// ifindex (in the calling thread's namespace) is not nsflow's: tcx and XDP
// programs, tc filters, and qdiscs other than noqueue (a veth's and a
// bridge's own), clsact and ingress. Any of them can drop, redirect or
// mirror packets: verify reports them, since a topology declares none.
// nsflow's are told by the kernel's tag of their instructions (the same
// for every load of this build), not by name: a filter or program named
// like ours may do anything, and a tc filter of ours must be
// direct-action, so that no action of its own runs.
func Foreign(ifindex int) ([]string, error) {
	own, err := ownTags()
	if err != nil {
		return nil, err
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByIndex(ifindex)
	if err != nil {
		return nil, fmt.Errorf("find interface: %w", err)
	}
	var out []string
	if x := l.Attrs().Xdp; x != nil && x.Attached {
		out = append(out, fmt.Sprintf("XDP program %d", x.ProgId))
	}
	for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
		if errors.Is(err, link.ErrNotSupported) {
			continue // no tcx on this kernel: nothing attached with it
		}
		if err != nil {
			return nil, fmt.Errorf("tcx programs: %w", err)
		}
		for _, p := range res.Programs {
			if name, ours := ownProgram(p.ID, own); !ours {
				out = append(out, fmt.Sprintf("%s program %s (id %d)", at, name, p.ID))
			}
		}
	}
	qdiscs, err := h.QdiscList(l)
	if err != nil {
		return nil, fmt.Errorf("qdiscs: %w", err)
	}
	for _, q := range qdiscs {
		switch q.Type() {
		case "noqueue":
		case "clsact", "ingress":
			parents := tcParents[:]
			if q.Type() == "ingress" {
				parents = []uint32{q.Attrs().Handle} // ffff:
			}
			for _, parent := range parents {
				fs, err := listFilters(h, l, parent)
				if err != nil {
					return nil, err
				}
				for _, f := range fs {
					if bf, ok := f.(*netlink.BpfFilter); ok && bf.DirectAction && slices.Contains(own, bf.Tag) {
						continue
					}
					out = append(out, fmt.Sprintf("tc %s filter %s (prio %d, handle %#x)", q.Type(), f.Type(), f.Attrs().Priority, f.Attrs().Handle))
				}
			}
		default:
			out = append(out, fmt.Sprintf("qdisc %s (handle %#x)", q.Type(), q.Attrs().Handle))
		}
	}
	return out, nil
}

// ownProgram names the program with id and tells whether it is one of
// nsflow's (an agent's or a verify run's): its tag is one of own.
func ownProgram(id ebpf.ProgramID, own []string) (string, bool) {
	p, err := ebpf.NewProgramFromID(id)
	if errors.Is(err, os.ErrNotExist) {
		return "(gone)", true // detached meanwhile
	}
	if err != nil {
		return fmt.Sprintf("%d", id), false
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return fmt.Sprintf("%d", id), false
	}
	return info.Name, slices.Contains(own, info.Tag)
}

// ownTags returns the kernel's tags of this build's programs, from a
// load of them that is closed at once. They are kept once known; a
// failure (a transient EPERM, say) is tried again at the next call.
func ownTags() ([]string, error) {
	ownTagsMu.Lock()
	defer ownTagsMu.Unlock()
	if ownTagsKnown != nil {
		return ownTagsKnown, nil
	}
	tags, err := loadOwnTags()
	if err == nil {
		ownTagsKnown = tags
	}
	return tags, err
}

var (
	ownTagsMu    sync.Mutex
	ownTagsKnown []string
)

func loadOwnTags() ([]string, error) {
	d, err := Load(Options{MaxFlows: 64, MaxPorts: 64})
	if err != nil {
		return nil, fmt.Errorf("load nsflow's programs to know them: %w", err)
	}
	defer d.Close()
	var tags []string
	for _, p := range []*ebpf.Program{d.objs.NsflowIngress, d.objs.NsflowEgress} {
		info, err := p.Info()
		if err != nil {
			return nil, fmt.Errorf("program info: %w", err)
		}
		tags = append(tags, info.Tag)
	}
	return tags, nil
}
