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

// routes converges namespace i's routes. Only the namespaces the topology
// declares (and owns, as preflight proved) are touched, never the host.
func (b *builder) routes(i int) error {
	n := b.s.Namespaces[i]
	c := b.conns[n.Name]
	// The sysctls of the namespace's own interfaces: they exist now.
	if _, late := b.s.splitSysctls(n.Name, n.Sysctls); len(late) > 0 {
		if err := b.ensureSysctls(n.Name, late); err != nil {
			return err
		}
	}
	for j, r := range n.Routes {
		if err := b.route(c, n.Name, r); err != nil {
			return fmt.Errorf("namespaces[%d].routes[%d] (%s to %s): %w", i, j, n.Name, r.To, err)
		}
	}
	if b.opts.failRoutes {
		return errors.New("injected failure after the routes")
	}
	if b.fresh[n.Name] {
		return nil // nothing in it predates this run
	}
	return b.strayRoutesAndLoopback(c, n)
}

// strayRoutesAndLoopback handles a namespace's undeclared routes and the
// addresses on its loopback beyond loopback's own; its other interfaces'
// addresses are ensureAddrs's.
func (b *builder) strayRoutesAndLoopback(c *nsConn, n Namespace) error {
	routes, err := mainRoutes(c, netlink.FAMILY_ALL)
	if err != nil {
		return err
	}
	byIdx, err := routeDevices(c, routes)
	if err != nil {
		return err
	}
	for _, r := range strayRoutes(routes, byIdx, n.Routes, b.s.NamespaceInterfaces(n.Name)) {
		desc := fmt.Sprintf("%s in namespace %s", describeRoute(byIdx, r), n.Name)
		if err := b.stray(desc, func() error { return c.h.RouteDel(&r) }); err != nil {
			return err
		}
	}
	lo, err := c.h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("namespace %s: loopback: %w", n.Name, err)
	}
	return b.ensureAddrs(c, lo, nil)
}

// route adds a declared route to namespace ns. If the kernel already has
// a route to that destination (EEXIST: one the topology added before, one
// changed since, or the kernel's own route to an interface's subnet), the
// live routes decide, compared as show compares them: the declared route
// among them is kept; otherwise the one in its place, to the same
// destination through another gateway or device, is replaced.
func (b *builder) route(c *nsConn, ns string, r Route) error {
	rt, err := b.nlRoute(c, ns, r)
	if err != nil {
		return err
	}
	err = c.h.RouteAdd(rt)
	if err == nil && !b.fresh[ns] {
		// Deleted by its exact metric: a delete without one takes the
		// first route to the destination, which may be another of a lower
		// metric.
		del := *rt
		del.Priority = routeMetric(rt)
		b.onRollback(func() error { return c.h.RouteDel(&del) })
	}
	if errors.Is(err, unix.EEXIST) {
		var present bool
		if present, err = hasLiveRoute(c, rt.Family, r); err == nil {
			if present {
				return nil // already there: idempotent up
			}
			err = b.replaceRoute(c, rt)
		}
	}
	if err == nil && !b.fresh[ns] {
		b.changed.Add(1)
	}
	return err
}

// routeMetric is the metric the kernel gives rt: IPv6 routes added
// without one get 1024.
func routeMetric(rt *netlink.Route) int {
	if rt.Family == netlink.FAMILY_V6 && rt.Priority == 0 {
		return 1024
	}
	return rt.Priority
}

// replaceRoute replaces the route in rt's place (same destination and
// metric in the main table) by rt; a rollback puts the old one back.
func (b *builder) replaceRoute(c *nsConn, rt *netlink.Route) error {
	routes, err := mainRoutes(c, rt.Family)
	if err != nil {
		return err
	}
	var old *netlink.Route
	to := routeState(nil, *rt).To
	for i := range routes {
		if routeState(nil, routes[i]).To == to && routeMetric(&routes[i]) == routeMetric(rt) {
			old = &routes[i]
			break
		}
	}
	if err := c.h.RouteReplace(rt); err != nil {
		return fmt.Errorf("replace the route in its place: %w", err)
	}
	if old != nil {
		b.onRollback(func() error { return c.h.RouteReplace(old) })
	}
	return nil
}

// hasLiveRoute reports whether the declared route r is among the routes
// of family in the namespace's main table.
func hasLiveRoute(c *nsConn, family int, r Route) (bool, error) {
	routes, err := mainRoutes(c, family)
	if err != nil {
		return false, err
	}
	byIdx, err := routeDevices(c, routes)
	if err != nil {
		return false, err
	}
	live := make([]RouteState, len(routes))
	for i, rt := range routes {
		live[i] = routeState(byIdx, rt)
	}
	return hasRoute(live, r), nil
}

// routeDevices looks up the devices of routes by index.
func routeDevices(c *nsConn, routes []netlink.Route) (map[int]netlink.Link, error) {
	byIdx := map[int]netlink.Link{}
	for _, rt := range routes {
		if _, ok := byIdx[rt.LinkIndex]; ok || rt.LinkIndex == 0 {
			continue
		}
		l, err := c.h.LinkByIndex(rt.LinkIndex)
		if err != nil {
			return nil, fmt.Errorf("device of a route: %w", err)
		}
		byIdx[rt.LinkIndex] = l
	}
	return byIdx, nil
}

// nlRoute translates a validated route for namespace ns.
func (b *builder) nlRoute(c *nsConn, ns string, r Route) (*netlink.Route, error) {
	rt := &netlink.Route{}
	is4 := true
	if r.To != "default" {
		p := netip.MustParsePrefix(r.To)
		rt.Dst, is4 = ipNet(p), p.Addr().Is4()
	}
	if r.Via != "" {
		gw := netip.MustParseAddr(r.Via)
		rt.Gw, is4 = net.IP(gw.AsSlice()), gw.Is4()
	}
	if r.Dev != "" {
		l, err := c.h.LinkByName(r.Dev)
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", r.Dev, err)
		}
		rt.LinkIndex = l.Attrs().Index
		if r.To == "default" && r.Via == "" {
			for _, ifc := range b.s.NamespaceInterfaces(ns) {
				if ifc.Name == r.Dev && len(ifc.Addresses) > 0 {
					is4 = ifc.Addresses[0].Addr().Is4()
				}
			}
			// The kernel wants a destination, a source or a gateway.
			rt.Dst = ipNet(netip.PrefixFrom(netip.IPv6Unspecified(), 0))
			if is4 {
				rt.Dst = ipNet(netip.PrefixFrom(netip.IPv4Unspecified(), 0))
			}
		}
	}
	rt.Family = netlink.FAMILY_V6
	if is4 {
		rt.Family = netlink.FAMILY_V4
	}
	if r.Via == "" {
		// On-link, as ip route add ... dev gives it: a gateway behind a
		// route of global scope is refused ("invalid gateway").
		rt.Scope = netlink.SCOPE_LINK
		// The subnet of one of the device's IPv6 addresses is the
		// kernel's route already, at metric 256: the same metric makes
		// the add find it (EEXIST) rather than add a second copy.
		if !is4 && r.To != "default" && b.connected(ns, r.Dev, netip.MustParsePrefix(r.To)) {
			rt.Priority = kernelMetric6
		}
	}
	return rt, nil
}

// kernelMetric6 is the metric of the route the kernel adds for an IPv6
// address's subnet.
const kernelMetric6 = 256

// connected reports whether p is the subnet of an address the file gives
// interface dev of namespace ns.
func (b *builder) connected(ns, dev string, p netip.Prefix) bool {
	for _, ifc := range b.s.NamespaceInterfaces(ns) {
		if ifc.Name == dev && slices.ContainsFunc(ifc.Addresses, func(a netip.Prefix) bool { return a.Masked() == p.Masked() }) {
			return true
		}
	}
	return false
}
