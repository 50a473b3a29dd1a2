package topology

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Strays are routes and addresses in what a topology owns (its namespaces'
// main tables, its interfaces) that the file does not declare and the
// kernel did not make: left by an earlier version of the file, or added by
// hand. show reports them, up lists them, and up --prune deletes them.

// staticRoute reports whether r was added as nsflow adds routes, or as
// `ip route add` does: protocol boot (or static, or none). The kernel's
// own (an interface's subnet, link-local, multicast), router
// advertisements, redirects and the routes of routing daemons and DHCP
// clients (zebra, bird, dhcp, ...) are theirs, never strays.
func staticRoute(r netlink.Route) bool {
	switch r.Protocol {
	case unix.RTPROT_UNSPEC, unix.RTPROT_BOOT, unix.RTPROT_STATIC:
		return true
	}
	return false
}

// strayRoutes returns the static routes of a main table that the spec
// does not declare. A route through an interface the spec does not
// declare goes with that interface, which nothing proves is ours: not a
// stray (show reports the interface).
func strayRoutes(live []netlink.Route, byIdx map[int]netlink.Link, declared []Route, ifaces []Interface) []netlink.Route {
	var out []netlink.Route
	for _, r := range live {
		if !staticRoute(r) {
			continue
		}
		if l, ok := byIdx[r.LinkIndex]; ok && l.Attrs().Name != "lo" &&
			!slices.ContainsFunc(ifaces, func(i Interface) bool { return i.Name == l.Attrs().Name }) {
			continue
		}
		rs := []RouteState{routeState(byIdx, r)}
		found := false
		for _, d := range declared {
			if hasRoute(rs, d) {
				found = true
				break
			}
		}
		if !found {
			out = append(out, r)
		}
	}
	return out
}

// describeRoute names a route as the file would declare it.
func describeRoute(byIdx map[int]netlink.Link, r netlink.Route) string {
	rs := routeState(byIdx, r)
	d := "route to " + rs.To + prefixed(" via ", rs.Via) + prefixed(" dev ", rs.Dev)
	if rs.Metric != 0 {
		d += fmt.Sprintf(" metric %d", rs.Metric)
	}
	return d
}

// loopbackOwn are the addresses every loopback has.
var loopbackOwn = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/8"), netip.MustParsePrefix("::1/128")}

// strayAddrs returns the permanent addresses of interface name that are
// not declared: link-local ones are the kernel's, loopback's own too, and
// those with a lifetime (SLAAC, DHCP) their daemons'.
func strayAddrs(name string, have []netlink.Addr, declared []netip.Prefix) []netlink.Addr {
	if name == "lo" {
		declared = append(declared[:len(declared):len(declared)], loopbackOwn...)
	}
	var out []netlink.Addr
	for _, a := range have {
		if a.IP.IsLinkLocalUnicast() || a.Flags&unix.IFA_F_PERMANENT == 0 {
			continue
		}
		if !hasAddr(declared, a.IPNet) {
			out = append(out, a)
		}
	}
	return out
}

// hasAddr reports whether the address with its prefix length is among ps.
func hasAddr(ps []netip.Prefix, n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	ip, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return false
	}
	for _, p := range ps {
		if p.Addr() == ip.Unmap() && p.Bits() == ones {
			return true
		}
	}
	return false
}

func describeAddr(ns, ifname string, a netlink.Addr) string {
	return fmt.Sprintf("address %s on %s/%s", a.IPNet, ns, ifname)
}

// stray deletes (Options.Prune) or reports an undeclared route or address.
func (b *builder) stray(desc string, del func() error) error {
	if b.opts.Prune {
		if err := del(); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("delete %s: %w", desc, err)
		}
	}
	b.mu.Lock()
	b.strays[b.opts.Prune] = append(b.strays[b.opts.Prune], desc)
	b.mu.Unlock()
	return nil
}
