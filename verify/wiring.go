package verify

import (
	"fmt"
	"slices"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/discovery"
	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/topology"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// wiring checks that the declared interfaces are wired as declared: each
// veth end's peer is the declared one, and each bridge has exactly its
// declared ports. Names alone do not tell: a veth of the declared name
// can lead somewhere else, and a port added to a host bridge puts a
// stranger on the segment. It returns the problems by the namespace
// whose interfaces check reports them: a host interface's go to the
// declared namespaces on its segment.
func (e *env) wiring(snaps map[string]*snapshot, host *snapshot) map[string][]string {
	out := map[string][]string{}
	s := e.model.spec
	snap := func(ns string) *snapshot {
		if ns == topology.HostNamespace {
			return host
		}
		return snaps[ns]
	}
	link := func(ns, name string) netlink.Link {
		if sn := snap(ns); sn != nil {
			for _, l := range sn.links {
				if l.Attrs().Name == name {
					return l
				}
			}
		}
		return nil
	}
	report := func(ifc topology.Interface, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		for _, ns := range e.reporters(ifc) {
			if !slices.Contains(out[ns], msg) {
				out[ns] = append(out[ns], msg)
			}
		}
	}
	where := func(ns, name string) string { return ns + ":" + name }

	for _, ifc := range s.Interfaces() {
		l := link(ifc.Namespace, ifc.Name)
		if l == nil {
			if ifc.Namespace == topology.HostNamespace {
				report(ifc, "declared %s %s is missing", ifc.Kind, where(ifc.Namespace, ifc.Name))
			}
			continue // a declared namespace's check reports it missing
		}
		switch ifc.Kind {
		case "veth":
			peer := link(ifc.PeerNamespace, ifc.PeerName)
			if l.Type() != "veth" || peer == nil || !e.peers(ifc.Namespace, l, ifc.PeerNamespace, peer) {
				report(ifc, "%s is not the peer of %s", where(ifc.Namespace, ifc.Name), where(ifc.PeerNamespace, ifc.PeerName))
			}
			switch {
			case ifc.Master != "":
				if br := link(ifc.Namespace, ifc.Master); br == nil || l.Attrs().MasterIndex != br.Attrs().Index {
					report(ifc, "%s is not a port of bridge %s", where(ifc.Namespace, ifc.Name), ifc.Master)
				}
			case l.Attrs().MasterIndex != 0:
				// Enslaved to a bridge (docker0, say) the file does not
				// give it: whatever else is on that bridge reaches it.
				master := fmt.Sprintf("index %d", l.Attrs().MasterIndex)
				for _, m := range snap(ifc.Namespace).links {
					if m.Attrs().Index == l.Attrs().MasterIndex {
						master = m.Attrs().Name
					}
				}
				report(ifc, "%s is a port of %s, which the file does not make it", where(ifc.Namespace, ifc.Name), master)
			}
		case "bridge":
			var declared []string
			for _, p := range s.NamespaceInterfaces(ifc.Namespace) {
				if p.Master == ifc.Name {
					declared = append(declared, p.Name)
				}
			}
			for _, p := range snap(ifc.Namespace).links {
				if p.Attrs().MasterIndex == l.Attrs().Index && !slices.Contains(declared, p.Attrs().Name) {
					report(ifc, "bridge %s has a port the file does not declare: %s", where(ifc.Namespace, ifc.Name), p.Attrs().Name)
				}
			}
		}
	}
	return out
}

// reporters are the declared namespaces whose interfaces check tells of
// a problem with ifc: its own namespace, or for a host interface the
// namespaces with an interface on its segment.
func (e *env) reporters(ifc topology.Interface) []string {
	if ifc.Namespace != topology.HostNamespace {
		return []string{ifc.Namespace}
	}
	seg := -1
	root := ifc
	if ifc.Master != "" {
		root = topology.Interface{Namespace: ifc.Namespace, Name: ifc.Master}
	}
	for _, f := range e.model.ifaces[topology.HostNamespace] {
		if f.name == root.Name {
			seg = f.segment
		}
	}
	if seg < 0 && ifc.Kind == "veth" {
		// A host veth end that is not a bridge port: its peer's side.
		return []string{ifc.PeerNamespace}
	}
	var out []string
	for _, ns := range e.model.onSegment(seg) {
		if ns != topology.HostNamespace {
			out = append(out, ns)
		}
	}
	return out
}

// peers reports whether l (in namespace ns) and peer (in namespace pns)
// are the two ends of one veth pair: each names the other's ifindex, and
// l's link-netns id, as ns sees it, is that of pns.
func (e *env) peers(ns string, l netlink.Link, pns string, peer netlink.Link) bool {
	a, b := l.Attrs(), peer.Attrs()
	if a.ParentIndex != b.Index || b.ParentIndex != a.Index {
		return false
	}
	if ns == pns {
		return a.NetNsID < 0
	}
	if a.NetNsID < 0 {
		return false
	}
	id := -1
	err := withHandle(e.pathOf(ns), func(h *netlink.Handle) error {
		target, err := e.openNetns(pns)
		if err != nil {
			return err
		}
		defer target.Close()
		id, err = h.GetNetNsIdByFd(int(target))
		return err
	})
	return err == nil && id == a.NetNsID
}

// pathOf is the netns path of a declared namespace, "" for the host (the
// namespace of the calling thread, as withHandle reads it).
func (e *env) pathOf(ns string) string {
	if ns == topology.HostNamespace {
		return ""
	}
	return e.paths[ns]
}

func (e *env) openNetns(ns string) (netns.NsHandle, error) {
	if ns == topology.HostNamespace {
		return netns.Get()
	}
	return netns.GetFromPath(e.paths[ns])
}

// hostForeign runs bpf.Foreign on the host interfaces the topology
// declares (its host bridges and veth ends), the host being the calling
// thread's namespace, and returns what it finds by the declared
// namespaces on their segments.
func (e *env) hostForeign(host *snapshot) (map[string][]string, error) {
	out := map[string][]string{}
	for _, ifc := range e.model.spec.NamespaceInterfaces(topology.HostNamespace) {
		for _, l := range host.links {
			if l.Attrs().Name != ifc.Name {
				continue
			}
			fs, err := bpf.Foreign(l.Attrs().Index)
			if err != nil {
				return nil, fmt.Errorf("host:%s: %w", ifc.Name, err)
			}
			for _, ns := range e.reporters(ifc) {
				for _, f := range fs {
					out[ns] = append(out[ns], ifc.Name+": "+f)
				}
			}
		}
	}
	return out, nil
}

// stackedKinds are the device kinds that ride on a lower device: they
// receive what reaches it (its flooded and broadcast traffic at least)
// and send onto its segment.
var stackedKinds = []string{"macvlan", "macvtap", "ipvlan", "ipvtap", "vlan", "macsec"}

// riders finds devices stacked on a declared interface from outside the
// topology: a macvlan, ipvlan or VLAN device (stackedKinds) whose lower
// device is a declared veth end or bridge, in the host or any other
// namespace (one made in a declared namespace and moved out, say). Such a
// device sees the segment's traffic without ever showing in a declared
// namespace; a silent one is found by no probe. Devices inside declared
// namespaces are left to their interfaces check (any undeclared one is
// reported there). A namespace that goes away during the look is skipped.
func (e *env) riders(snaps map[string]*snapshot, host *snapshot) (map[string][]string, error) {
	type port struct {
		ns    string
		index int
	}
	declared := map[port]topology.Interface{}
	targets := map[string]netns.NsHandle{} // namespaces a stacked device's lower may be in
	defer func() {
		for _, h := range targets {
			h.Close()
		}
	}()
	for _, ifc := range e.model.spec.Interfaces() {
		sn := host
		if ifc.Namespace != topology.HostNamespace {
			if sn = snaps[ifc.Namespace]; sn == nil {
				continue // unreadable: its own checks say so
			}
		}
		for _, l := range sn.links {
			if l.Attrs().Name != ifc.Name {
				continue
			}
			declared[port{ifc.Namespace, l.Attrs().Index}] = ifc
			if _, ok := targets[ifc.Namespace]; !ok {
				h, err := e.openNetns(ifc.Namespace)
				if err != nil {
					return nil, fmt.Errorf("namespace %s: %w", ifc.Namespace, err)
				}
				targets[ifc.Namespace] = h
			}
		}
	}
	own := map[uint64]bool{}
	for _, ns := range e.model.Namespaces {
		var st unix.Stat_t
		if err := unix.Stat(e.paths[ns], &st); err != nil {
			return nil, fmt.Errorf("namespace %s: %w", ns, err)
		}
		own[st.Ino] = true
	}
	all, err := discovery.List(discovery.WatchConfig{})
	if err != nil {
		return nil, fmt.Errorf("listing the host's namespaces: %w", err)
	}
	out := map[string][]string{}
	for _, n := range all {
		if own[n.Inode] {
			continue
		}
		var ids map[int]string // link-netns ids as n sees them -> declared namespace
		err := onStacked(n, func(h *netlink.Handle, l netlink.Link) error {
			a := l.Attrs()
			lower := port{topology.HostNamespace, a.ParentIndex}
			if a.NetNsID >= 0 {
				if ids == nil {
					ids = map[int]string{}
					for ns, t := range targets {
						id, err := h.GetNetNsIdByFd(int(t))
						if err != nil {
							return err
						}
						ids[id] = ns // -1: n has no id for it, and no link there
					}
				}
				lower.ns = ids[a.NetNsID]
			} else if !n.Host {
				return nil // on a device of its own namespace
			}
			if ifc, ok := declared[lower]; ok {
				msg := fmt.Sprintf("%s %s in namespace %s is stacked on %s:%s and sees its segment", l.Type(), a.Name, n.Label(), ifc.Namespace, ifc.Name)
				for _, ns := range e.reporters(ifc) {
					out[ns] = append(out[ns], msg)
				}
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("namespace %s: %w", n.Label(), err)
		}
	}
	return out, nil
}

// onStacked calls fn, with a netlink handle in n, for each device of n
// that is stacked on another (stackedKinds). A namespace that is gone, or
// whose path now leads elsewhere (a pid reused), has none.
func onStacked(n discovery.Namespace, fn func(*netlink.Handle, netlink.Link) error) error {
	var ns netns.NsHandle
	var err error
	if n.Host {
		ns, err = netns.Get()
	} else {
		ns, err = netns.GetFromPath(n.Path)
	}
	if err != nil {
		if gone(n) {
			return nil
		}
		return err
	}
	defer ns.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(ns), &st); err != nil {
		return err
	}
	if st.Ino != n.Inode {
		return nil
	}
	h, err := nsenter.NewHandle(ns, unix.NETLINK_ROUTE)
	if err != nil {
		if gone(n) {
			return nil
		}
		return err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return err
	}
	for _, l := range links {
		if l.Attrs().ParentIndex > 0 && slices.Contains(stackedKinds, l.Type()) {
			if err := fn(h, l); err != nil {
				return err
			}
		}
	}
	return nil
}

// gone reports whether n's path no longer opens n: removed, being
// unmounted (a plain file, which setns refuses), or its process exited.
func gone(n discovery.Namespace) bool {
	var fs unix.Statfs_t
	var st unix.Stat_t
	return unix.Statfs(n.Path, &fs) != nil || fs.Type != unix.NSFS_MAGIC ||
		unix.Stat(n.Path, &st) != nil || st.Ino != n.Inode
}
