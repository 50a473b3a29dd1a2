package verify

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/internal/nsenter"
	"github.com/nsflow/nsflow/topology"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// snapshot is what one namespace's stack holds, read through netlink
// sockets opened inside it.
type snapshot struct {
	links     []netlink.Link
	addrs     []netlink.Addr
	routes    []netlink.Route
	neighs    []netlink.Neigh
	listeners []listener
	firewall  []firewallTable
	// rules are the policy routing rules; others the routes of tables
	// other than main and local (which rules could point to).
	rules  []netlink.Rule
	others []netlink.Route
	// foreign are tc, tcx and XDP objects on the interfaces that are not
	// nsflow's (bpf.Foreign), as "IF: what".
	foreign []string
	// forwarding has the forwarding sysctls, by key under net.: IPv4 per
	// interface, IPv6 conf.all and each interface's force_forwarding
	// (kernels that have it).
	forwarding map[string]string
}

type listener struct {
	proto string
	addr  netip.AddrPort
	inode uint32
}

func (l listener) String() string { return fmt.Sprintf("%s %s", l.proto, l.addr) }

func withHandle(path string, fn func(*netlink.Handle) error) error {
	var ns netns.NsHandle
	var err error
	if path == "" {
		ns, err = netns.Get()
	} else {
		ns, err = netns.GetFromPath(path)
	}
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer ns.Close()
	h, err := nsenter.NewHandle(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	return fn(h)
}

// heldAddrs lists the addresses of the namespace that are its own to
// compare and probe: every address, whatever its scope, except loopback
// and IPv6 link-local ones (see heldAddr). byIface has them by interface
// name, in the kernel's order (see Model.FollowLiveOrder).
// It also tells whether the namespace has ::1 (not where IPv6 is off).
func heldAddrs(path string) (held []netip.Addr, byIface map[string][]netip.Addr, loopback6 bool, err error) {
	byIface = map[string][]netip.Addr{}
	err = withHandle(path, func(h *netlink.Handle) error {
		links, err := h.LinkList()
		if err != nil {
			return err
		}
		names := map[int]string{}
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
		addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if ip, ok := heldAddr(a); ok {
				held = append(held, ip)
				dev := names[a.LinkIndex]
				byIface[dev] = append(byIface[dev], ip)
			} else if ip == netip.IPv6Loopback() {
				loopback6 = true
			}
		}
		return nil
	})
	return held, byIface, loopback6, err
}

// heldAddr is the address a holds, and whether the topology must declare
// it. Loopback (127.0.0.0/8, ::1) and IPv6 link-local (fe80::/10, which
// the kernel gives every interface) are every namespace's own; any other
// address counts whatever its scope: scope is only a hint for source
// selection, and the kernel still takes a packet to a link- or host-scope
// address as delivered locally, so another namespace's address hidden
// there is as much a hijack as a global one.
func heldAddr(a netlink.Addr) (netip.Addr, bool) {
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return ip, false
	}
	ip = ip.Unmap()
	return ip, !ip.IsLoopback() && !(ip.Is6() && ip.IsLinkLocalUnicast())
}

func takeSnapshot(path string) (*snapshot, error) {
	s := &snapshot{}
	err := withHandle(path, func(h *netlink.Handle) error {
		var err error
		if s.links, err = h.LinkList(); err != nil {
			return fmt.Errorf("links: %w", err)
		}
		if s.addrs, err = h.AddrList(nil, netlink.FAMILY_ALL); err != nil {
			return fmt.Errorf("addresses: %w", err)
		}
		if s.neighs, err = h.NeighList(0, netlink.FAMILY_ALL); err != nil {
			return fmt.Errorf("neighbours: %w", err)
		}
		if path == "" {
			// The host: only its links, addresses and listeners are
			// read (wiring, sockets); its tables are none of ours.
			return nil
		}
		if s.rules, err = h.RuleList(netlink.FAMILY_ALL); err != nil {
			return fmt.Errorf("routing rules: %w", err)
		}
		all, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return fmt.Errorf("routes: %w", err)
		}
		for _, r := range all {
			switch {
			case r.Table == unix.RT_TABLE_MAIN:
				s.routes = append(s.routes, r)
			case !kernelLocal(r):
				s.others = append(s.others, r)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// sock_diag answers for the namespace of the socket asking, and the
	// netlink package opens that socket on the calling thread: so these
	// run inside the namespace, not through the handle.
	err = nsenter.Do(path, func() error {
		var err error
		if s.listeners, err = listListeners(); err != nil {
			return err
		}
		if path == "" {
			// The host's declared interfaces are checked by hostForeign.
			return nil
		}
		if s.forwarding, err = readForwarding(s.links); err != nil {
			return err
		}
		for _, l := range s.links {
			fs, err := bpf.Foreign(l.Attrs().Index)
			if err != nil {
				return fmt.Errorf("%s: %w", l.Attrs().Name, err)
			}
			for _, f := range fs {
				s.foreign = append(s.foreign, l.Attrs().Name+": "+f)
			}
		}
		s.firewall, err = readFirewall()
		return err
	})
	return s, err
}

// kernelLocal reports a route of the local table that the kernel makes
// for an address (local, broadcast, anycast, multicast). Any other route
// there routes like one of the main table, and is looked up first.
func kernelLocal(r netlink.Route) bool {
	switch r.Type {
	case unix.RTN_LOCAL, unix.RTN_BROADCAST, unix.RTN_ANYCAST, unix.RTN_MULTICAST:
		return r.Table == unix.RT_TABLE_LOCAL && r.Protocol == unix.RTPROT_KERNEL
	}
	return false
}

// readForwarding reads the forwarding sysctls of the calling thread's
// namespace: /proc/sys/net shows the namespace of the thread reading it.
func readForwarding(links []netlink.Link) (map[string]string, error) {
	out := map[string]string{}
	// The key is FAMILY.conf.IF.NAME, a dot in IF written as a slash (as
	// in the file's sysctls); in /proc/sys IF is one directory, dots and
	// all. A key the kernel lacks (no IPv6, an older kernel, an interface
	// gone meanwhile) is left out.
	read := func(fam, ifc, name string) error {
		key := topology.IfaceKey(fam+".conf.", ifc, "."+name)
		b, err := os.ReadFile("/proc/sys/net/" + fam + "/conf/" + ifc + "/" + name)
		switch {
		case err == nil:
			out[key] = strings.TrimSpace(string(b))
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("sysctl net.%s: %w", key, err)
		}
		return nil
	}
	if err := read("ipv6", "all", "forwarding"); err != nil {
		return nil, err
	}
	for _, l := range links {
		name := l.Attrs().Name
		if name == "lo" {
			continue // loopback receives nothing to forward
		}
		if err := read("ipv4", name, "forwarding"); err != nil {
			return nil, err
		}
		if err := read("ipv6", name, "force_forwarding"); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func listListeners() ([]listener, error) {
	var out []listener
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		tcp, err := netlink.SocketDiagTCP(fam)
		if err != nil {
			return nil, fmt.Errorf("sock_diag tcp: %w", err)
		}
		for _, so := range tcp {
			if so.State == tcpListen {
				out = append(out, newListener("tcp", so))
			}
		}
		udp, err := netlink.SocketDiagUDP(fam)
		if err != nil {
			return nil, fmt.Errorf("sock_diag udp: %w", err)
		}
		for _, so := range udp {
			out = append(out, newListener("udp", so))
		}
	}
	return out, nil
}

const tcpListen = 10 // TCP_LISTEN

func newListener(proto string, so *netlink.Socket) listener {
	ip, _ := netip.AddrFromSlice(so.ID.Source)
	return listener{proto: proto, addr: netip.AddrPortFrom(ip.Unmap(), so.ID.SourcePort), inode: so.INode}
}
