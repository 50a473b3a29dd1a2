// Package verify proves that the namespaces of a topology are isolated as
// the topology file says: it derives the expected reachability from the
// wiring and the isolation intent, probes every address from every
// namespace, checks that each namespace's stack holds only its own objects,
// and reads the eBPF datapath for packets that must not have arrived.
package verify

import (
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/nsflow/nsflow/topology"
)

// maxHops bounds the forwarding walk; a routing loop ends there as
// undeliverable, which is what the kernel's TTL does too.
const maxHops = 16

// Model is the reachability a topology implies: which namespace receives a
// packet sent from one namespace to an address, and whether the reply gets
// back. It knows only the wiring (L2 segments, addresses, routes, ip
// forwarding); the topology declares no packet filters.
type Model struct {
	spec *topology.Spec
	// Namespaces are the declared namespaces, in spec order.
	Namespaces []string
	ifaces     map[string][]l3iface // namespace -> interfaces that carry IP
	routes     map[string][]route
	// forward4 and forward6 are forwarding by namespace and receiving
	// interface (forwarding4, forwarding6); linkLocal tells the
	// interfaces with an IPv6 link-local address (linkLocal6).
	forward4, forward6, linkLocal map[string]map[string]bool
	// owners maps each declared address to the namespaces holding it
	// (more than one when isolated tenants reuse a subnet).
	owners map[netip.Addr][]string
	addrs  map[string][]netip.Addr // namespace -> declared addresses
}

// l3iface is an interface that takes part in routing: a veth end that is
// not a bridge port, or a bridge. Segment identifies its L2 domain.
type l3iface struct {
	name     string
	segment  int
	prefixes []netip.Prefix
}

type route struct {
	to  netip.Prefix
	via netip.Addr // invalid when directly connected
	dev string     // "" when the gateway's subnet decides
}

// NewModel derives the reachability model of a validated spec.
func NewModel(s *topology.Spec) *Model {
	m := &Model{
		spec:      s,
		ifaces:    map[string][]l3iface{},
		routes:    map[string][]route{},
		forward4:  map[string]map[string]bool{},
		forward6:  map[string]map[string]bool{},
		linkLocal: map[string]map[string]bool{},
		owners:    map[netip.Addr][]string{},
		addrs:     map[string][]netip.Addr{},
	}
	for _, ns := range s.Namespaces {
		m.Namespaces = append(m.Namespaces, ns.Name)
	}
	m.segments(s.Interfaces())
	for _, ns := range s.Namespaces {
		m.forward4[ns.Name], m.forward6[ns.Name], m.linkLocal[ns.Name] = map[string]bool{}, map[string]bool{}, map[string]bool{}
		for _, ifc := range m.ifaces[ns.Name] {
			m.forward4[ns.Name][ifc.name] = forwarding4(ns.Sysctls, ifc.name)
			m.forward6[ns.Name][ifc.name] = forwarding6(ns.Sysctls, ifc.name)
			m.linkLocal[ns.Name][ifc.name] = hasLinkLocal6(ns.Sysctls, ifc.name, ifc.prefixes)
		}
	}
	for _, ns := range s.Namespaces {
		for _, r := range ns.Routes {
			if rt, ok := m.parseRoute(ns.Name, r); ok {
				m.routes[ns.Name] = append(m.routes[ns.Name], rt)
			}
		}
	}
	return m
}

// FollowLiveOrder orders the addresses of each of ns's interfaces as the
// kernel holds them (live, by interface, in the order an address dump
// lists them), and returns the interfaces whose order differs from the
// file's. The order decides the source the kernel picks (see source),
// and it is not the file's once an address was deleted and added again,
// by hand or by up repairing it. IPv4 lists primaries first and the
// model takes the first; IPv6 lists the newest first and the model takes
// the last of equals, so it reverses. Addresses not held go where the
// model never prefers them: after the held ones for IPv4, before them for
// IPv6 (the stack check reports them missing). Declared link-local ones
// are not in live (heldAddr) and keep their places.
func (m *Model) FollowLiveOrder(ns string, live map[string][]netip.Addr) (changed []string) {
	for i, ifc := range m.ifaces[ns] {
		held := live[ifc.name]
		pos := func(a netip.Addr) int {
			if i := slices.Index(held, a); i >= 0 {
				return i
			}
			return len(held)
		}
		var v4, v6 []netip.Prefix
		for _, p := range ifc.prefixes {
			if p.Addr().Is4() {
				v4 = append(v4, p)
			} else {
				v6 = append(v6, p)
			}
		}
		slices.SortStableFunc(v4, func(x, y netip.Prefix) int { return pos(x.Addr()) - pos(y.Addr()) })
		slices.SortStableFunc(v6, func(x, y netip.Prefix) int { return pos(y.Addr()) - pos(x.Addr()) })
		ordered := make([]netip.Prefix, 0, len(ifc.prefixes))
		for _, p := range ifc.prefixes {
			if p.Addr().Is4() {
				ordered, v4 = append(ordered, v4[0]), v4[1:]
			} else {
				ordered, v6 = append(ordered, v6[0]), v6[1:]
			}
		}
		if !slices.Equal(ordered, ifc.prefixes) {
			changed = append(changed, ifc.name)
		}
		m.ifaces[ns][i].prefixes = ordered
	}
	return changed
}

// segments groups interfaces into L2 domains: the two ends of a veth pair
// share one, and a bridge shares one with all its ports.
func (m *Model) segments(ifs []topology.Interface) {
	key := func(ns, name string) string { return ns + "\x00" + name }
	parent := map[string]string{}
	var find func(string) string
	find = func(x string) string {
		p, ok := parent[x]
		if !ok || p == x {
			parent[x] = x
			return x
		}
		r := find(p)
		parent[x] = r
		return r
	}
	union := func(a, b string) { parent[find(a)] = find(b) }
	for _, ifc := range ifs {
		k := key(ifc.Namespace, ifc.Name)
		find(k)
		if ifc.Kind == "veth" {
			union(k, key(ifc.PeerNamespace, ifc.PeerName))
		}
		if ifc.Master != "" {
			union(k, key(ifc.Namespace, ifc.Master))
		}
	}
	ids := map[string]int{}
	for _, ifc := range ifs {
		if ifc.Master != "" {
			continue // a bridge port carries no IP of its own
		}
		root := find(key(ifc.Namespace, ifc.Name))
		id, ok := ids[root]
		if !ok {
			id = len(ids)
			ids[root] = id
		}
		m.ifaces[ifc.Namespace] = append(m.ifaces[ifc.Namespace], l3iface{name: ifc.Name, segment: id, prefixes: ifc.Addresses})
		for _, p := range ifc.Addresses {
			a := p.Addr()
			if !slices.Contains(m.owners[a], ifc.Namespace) {
				m.owners[a] = append(m.owners[a], ifc.Namespace)
			}
			if !slices.Contains(m.addrs[ifc.Namespace], a) {
				m.addrs[ifc.Namespace] = append(m.addrs[ifc.Namespace], a)
			}
		}
	}
}

func (m *Model) parseRoute(ns string, r topology.Route) (route, bool) {
	var rt route
	rt.dev = r.Dev
	if r.Via != "" {
		via, err := netip.ParseAddr(r.Via)
		if err != nil {
			return rt, false
		}
		rt.via = via
	}
	if r.To == "default" {
		is4 := true
		switch {
		case rt.via.IsValid():
			is4 = rt.via.Is4()
		default:
			for _, ifc := range m.ifaces[ns] {
				if ifc.name == r.Dev && len(ifc.prefixes) > 0 {
					is4 = ifc.prefixes[0].Addr().Is4()
					break
				}
			}
		}
		if is4 {
			rt.to = netip.MustParsePrefix("0.0.0.0/0")
		} else {
			rt.to = netip.MustParsePrefix("::/0")
		}
		return rt, true
	}
	p, err := netip.ParsePrefix(r.To)
	if err != nil {
		return rt, false
	}
	rt.to = p.Masked()
	return rt, true
}

// forwarding4 is whether IPv4 packets received on interface ifc of a
// namespace with these sysctls are forwarded.
func forwarding4(sysctls map[string]string, ifc string) bool {
	return topology.IfaceSysctl(sysctls, "net.ipv4.conf.", ".forwarding", ifc, "net.ipv4.ip_forward") == "1"
}

// arpIgnore is the arp_ignore that applies on interface ifc of ns: the
// larger of conf.all's and the interface's own (which starts as
// conf.default's).
func (m *Model) arpIgnore(ns, ifc string) int {
	sysctls := m.sysctls(ns)
	all, _ := strconv.Atoi(strings.TrimSpace(sysctls["net.ipv4.conf.all.arp_ignore"]))
	own, ok := sysctls[topology.IfaceKey("net.ipv4.conf.", ifc, ".arp_ignore")]
	if !ok {
		own = sysctls["net.ipv4.conf.default.arp_ignore"]
	}
	dev, _ := strconv.Atoi(strings.TrimSpace(own))
	return max(all, dev)
}

// hasLinkLocal6 is whether interface ifc, with the declared prefixes, has
// an IPv6 link-local address: not if IPv6 is disabled on it; else if the
// file declares one, or the kernel makes one: unless addr_gen_mode is 1
// (none) as conf.default gave it when it was made. The interface's own
// key is written once it is up: 1 then removes nothing, another mode
// makes the address.
func hasLinkLocal6(sysctls map[string]string, ifc string, prefixes []netip.Prefix) bool {
	if topology.IfaceSysctl(sysctls, "net.ipv6.conf.", ".disable_ipv6", ifc) == "1" {
		return false
	}
	own, set := sysctls[topology.IfaceKey("net.ipv6.conf.", ifc, ".addr_gen_mode")]
	return slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return isLinkLocal6(p.Addr()) }) ||
		topology.NamespaceSysctl(sysctls, "net.ipv6.conf.", ".addr_gen_mode") != "1" ||
		set && strings.TrimSpace(own) != "1" // switching to a generating mode makes one at once
}

// isLinkLocal6 reports an IPv6 link-local address (fe80::/10), which is
// never routed. (IPv4's 169.254.0.0/16 is routed like any subnet.)
func isLinkLocal6(a netip.Addr) bool { return a.Is6() && a.IsLinkLocalUnicast() }

// forwarding6 is whether IPv6 packets received on interface ifc are
// forwarded: conf.all.forwarding decides for every interface, and the
// interface's force_forwarding (kernel 6.17 and later; from
// conf.default, which conf.all does not set) for itself.
func forwarding6(sysctls map[string]string, ifc string) bool {
	return strings.TrimSpace(sysctls["net.ipv6.conf.all.forwarding"]) == "1" || forceForwarding6(sysctls, ifc)
}

func forceForwarding6(sysctls map[string]string, ifc string) bool {
	v, ok := sysctls[topology.IfaceKey("net.ipv6.conf.", ifc, ".force_forwarding")]
	if !ok {
		v = sysctls["net.ipv6.conf.default.force_forwarding"]
	}
	return strings.TrimSpace(v) == "1"
}

// sysctls are the file's sysctls of namespace ns.
func (m *Model) sysctls(ns string) map[string]string {
	for _, n := range m.spec.Namespaces {
		if n.Name == ns {
			return n.Sysctls
		}
	}
	return nil
}

// Addresses returns the declared addresses of namespace ns.
func (m *Model) Addresses(ns string) []netip.Addr { return m.addrs[ns] }

// Owners returns the namespaces that declare address a.
func (m *Model) Owners(a netip.Addr) []string { return m.owners[a] }

func (m *Model) owns(ns string, a netip.Addr) bool {
	return slices.Contains(m.owners[a], ns)
}

// forwards reports whether ns forwards a packet to a that it received on
// interface in.
func (m *Model) forwards(ns, in string, a netip.Addr) bool {
	if a.Is4() {
		return m.forward4[ns][in]
	}
	return m.forward6[ns][in]
}

// lookup is the routing decision in ns for dst: the egress interface and the
// next hop (dst itself when directly connected). Longest prefix wins, as in
// the kernel's main table.
// devRoute tells that the route is a declared one without via: the kernel
// then sends IPv4 from the interface's first address, not from the one on
// the destination's subnet.
func (m *Model) lookup(ns string, dst netip.Addr) (ifc l3iface, nh netip.Addr, devRoute, ok bool) {
	bestBits := -1
	for _, f := range m.ifaces[ns] {
		for _, p := range f.prefixes {
			if p.Addr().Is4() == dst.Is4() && p.Masked().Contains(dst) && p.Bits() > bestBits {
				ifc, bestBits, nh = f, p.Bits(), dst
			}
		}
	}
	for _, r := range m.routes[ns] {
		if r.to.Addr().Is4() != dst.Is4() || !r.to.Contains(dst) || r.to.Bits() <= bestBits {
			continue
		}
		gw := dst
		if r.via.IsValid() {
			gw = r.via
		}
		f, found := m.egress(ns, r.dev, gw)
		if !found {
			continue
		}
		ifc, bestBits, nh, devRoute = f, r.to.Bits(), gw, !r.via.IsValid()
	}
	return ifc, nh, devRoute, bestBits >= 0
}

// egress finds the interface a route leaves by: the named device, or the
// one whose subnet holds the gateway.
func (m *Model) egress(ns, dev string, gw netip.Addr) (l3iface, bool) {
	for _, ifc := range m.ifaces[ns] {
		if dev != "" {
			if ifc.name == dev {
				return ifc, true
			}
			continue
		}
		for _, p := range ifc.prefixes {
			if p.Masked().Contains(gw) {
				return ifc, true
			}
		}
	}
	return l3iface{}, false
}

// source is the address ns sends from when it leaves by ifc towards next
// hop nh, as the kernel picks it: the interface's address on nh's subnet,
// else its first one of the family, else any of the namespace's.
func (m *Model) source(ns string, ifc l3iface, dst, nh netip.Addr) (netip.Addr, bool) {
	if nh.Is4() {
		for _, p := range ifc.prefixes {
			if p.Masked().Contains(nh) {
				return p.Addr(), true
			}
		}
		for _, p := range ifc.prefixes {
			if p.Addr().Is4() {
				return p.Addr(), true
			}
		}
		for _, a := range m.addrs[ns] {
			if a.Is4() {
				return a, true
			}
		}
		return netip.Addr{}, false
	}
	// IPv6 (RFC 6724 as Linux applies it): the scope of the destination
	// (no link-local source for a global one), the outgoing interface,
	// then the longest match with the destination, up to the candidate's
	// prefix length; on a tie, the address added last (the kernel lists
	// the newest first and keeps the first of equals), which is the last
	// declared.
	pick := func(prefixes []netip.Prefix) (netip.Addr, bool) {
		best, bestLen := netip.Addr{}, -1
		for _, p := range prefixes {
			a := p.Addr()
			if a.Is4() || isLinkLocal6(a) != isLinkLocal6(dst) {
				continue
			}
			if n := min(commonPrefixLen(a, dst), p.Bits()); n >= bestLen {
				best, bestLen = a, n
			}
		}
		return best, best.IsValid()
	}
	if a, ok := pick(ifc.prefixes); ok {
		return a, true
	}
	var all []netip.Prefix
	for _, f := range m.ifaces[ns] {
		all = append(all, f.prefixes...)
	}
	return pick(all)
}

// commonPrefixLen is the number of leading bits a and b share.
func commonPrefixLen(a, b netip.Addr) int {
	x, y := a.As16(), b.As16()
	for i := range x {
		if d := x[i] ^ y[i]; d != 0 {
			return i*8 + bits.LeadingZeros8(d)
		}
	}
	return 128
}

// neighbour finds who answers ARP/NDP from asker for nh on segment seg: a
// namespace with an interface on the segment that holds nh, preferring
// the one that holds it on that very interface. NDP answers for the
// receiving interface's addresses alone; ARP as arp_ignore says: 1 for the
// receiving interface's addresses, 2 also only to a sender on that
// address's subnet, 8 never, any other value (0, the default) for any of
// the namespace's addresses. learned is a namespace whose address the
// asker needs no answer for: it learned it from that namespace's own
// request, which the packet being answered came with.
func (m *Model) neighbour(asker string, seg int, nh netip.Addr, learned string) (string, bool) {
	fallback := ""
	for _, ns := range m.onSegment(seg) {
		ignore := 0
		if nh.Is4() && ns != learned {
			ignore = m.arpIgnore(ns, m.ifaceOn(ns, seg))
		}
		for _, ifc := range m.ifaces[ns] {
			if ifc.segment != seg || ignore == 8 {
				continue
			}
			for _, p := range ifc.prefixes {
				if p.Addr() == nh && (ignore != 2 || m.askerOnSubnet(asker, seg, p)) {
					return ns, true
				}
			}
		}
		if fallback == "" && nh.Is4() && m.owns(ns, nh) && ignore != 1 && ignore != 2 && ignore != 8 {
			fallback = ns
		}
	}
	return fallback, fallback != ""
}

// heldOnSegment reports whether a namespace holds ip on its interface on
// segment seg.
func (m *Model) heldOnSegment(seg int, ip netip.Addr) bool {
	for _, ns := range m.onSegment(seg) {
		for _, ifc := range m.ifaces[ns] {
			if ifc.segment == seg && slices.ContainsFunc(ifc.prefixes, func(p netip.Prefix) bool { return p.Addr() == ip }) {
				return true
			}
		}
	}
	return false
}

// askerOnSubnet reports whether asker has an address in p's subnet on its
// interface on segment seg: arp_ignore 2 answers only such a sender.
func (m *Model) askerOnSubnet(asker string, seg int, p netip.Prefix) bool {
	for _, ifc := range m.ifaces[asker] {
		if ifc.segment == seg && slices.ContainsFunc(ifc.prefixes, func(q netip.Prefix) bool { return p.Masked().Contains(q.Addr()) }) {
			return true
		}
	}
	return false
}

// ifaceOn names the interface of ns on segment seg.
func (m *Model) ifaceOn(ns string, seg int) string {
	for _, ifc := range m.ifaces[ns] {
		if ifc.segment == seg {
			return ifc.name
		}
	}
	return ""
}

func (m *Model) onSegment(seg int) []string {
	var out []string
	for _, ns := range m.allNamespaces() {
		for _, ifc := range m.ifaces[ns] {
			if ifc.segment == seg {
				out = append(out, ns)
				break
			}
		}
	}
	return out
}

// allNamespaces is the declared namespaces plus the host when the spec
// places addressed interfaces there.
func (m *Model) allNamespaces() []string {
	if _, ok := m.ifaces[topology.HostNamespace]; ok && !slices.Contains(m.Namespaces, topology.HostNamespace) {
		return append(slices.Clone(m.Namespaces), topology.HostNamespace)
	}
	return m.Namespaces
}

// Deliver returns the namespace that receives a packet sent from src to
// dst, and the source address src uses; "" when the packet is lost on the
// way (no route, no neighbour, a namespace that does not forward).
func (m *Model) Deliver(src string, dst netip.Addr) (to string, from netip.Addr) {
	return m.deliver(src, dst, "")
}

// deliver is Deliver; learned is the namespace whose request is being
// answered (see neighbour), "" for a request.
func (m *Model) deliver(src string, dst netip.Addr, learned string) (to string, from netip.Addr) {
	if isLinkLocal6(dst) {
		return m.deliverLinkLocal(src, dst), from
	}
	cur := src
	for range maxHops {
		if m.owns(cur, dst) {
			return cur, from
		}
		ifc, nh, devRoute, ok := m.lookup(cur, dst)
		if !ok {
			return "", from
		}
		if cur == src {
			via := nh
			if devRoute && dst.Is4() {
				via = netip.IPv4Unspecified() // no gateway: the first address
			}
			if from, ok = m.source(src, ifc, dst, via); !ok {
				return "", from
			}
		}
		next, ok := m.neighbour(cur, ifc.segment, nh, learned)
		if !ok || next == cur {
			return "", from
		}
		if m.owns(next, dst) {
			return next, from
		}
		if !m.forwards(next, m.ifaceOn(next, ifc.segment), dst) {
			return "", from
		}
		cur = next
	}
	return "", from
}

// deliverLinkLocal is who receives a packet from src to a declared
// link-local address: its holder on a segment src is on (link-local
// addresses are never routed), "" if none.
func (m *Model) deliverLinkLocal(src string, dst netip.Addr) string {
	for _, own := range m.ifaces[src] {
		if !m.linkLocal[src][own.name] {
			continue // no link-local address, no fe80::/64 route there
		}
		for _, ns := range m.onSegment(own.segment) {
			for _, ifc := range m.ifaces[ns] {
				if ifc.segment == own.segment && slices.ContainsFunc(ifc.prefixes, func(p netip.Prefix) bool { return p.Addr() == dst }) {
					return ns
				}
			}
		}
	}
	return ""
}

// sharedSegment names an interface of to on an L2 segment that from has
// an interface on too: the two are not isolated, whatever their subnets
// (a limited broadcast, a multicast, a link-local packet gets through).
func (m *Model) sharedSegment(from, to string) (string, bool) {
	for _, a := range m.ifaces[from] {
		for _, b := range m.ifaces[to] {
			if b.segment == a.segment {
				return b.name, true
			}
		}
	}
	return "", false
}

// Answerer returns the namespace expected to answer a probe from src to
// dst: the one the request reaches, provided its reply finds the way back
// to src. "" means the probe must read as blocked.
func (m *Model) Answerer(src string, dst netip.Addr) string {
	to, from := m.Deliver(src, dst)
	if to == "" || to == src {
		return ""
	}
	if back, _ := m.deliver(to, from, src); back != src {
		return ""
	}
	return to
}
