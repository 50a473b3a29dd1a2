package verify

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/nsflow/nsflow/topology"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Check is one stack or port-space check of one namespace.
type Check struct {
	Netns string `json:"netns"`
	// Kind is what was checked: interfaces, addresses, routes, neighbours,
	// firewall, sockets, or a port ("tcp/8080") for port space.
	Kind     string   `json:"kind"`
	Pass     bool     `json:"pass"`
	Problems []string `json:"problems,omitempty"`
	// Info is what was found that is not a violation (a listener of the
	// user's, an empty firewall table).
	Info []string `json:"info,omitempty"`
	// Error is set when the check could not run.
	Error string `json:"error,omitempty"`
}

// stackKinds are the stack checks, in report order.
var stackKinds = []string{"interfaces", "addresses", "routes", "neighbours", "firewall", "sockets"}

// stack checks that every namespace holds exactly what the spec gives it:
// nothing of the host's, nothing of another namespace's, nothing extra.
func (e *env) stack() []Check {
	var out []Check
	snaps := map[string]*snapshot{}
	inodes := map[uint32]string{} // listening socket -> namespace seeing it
	host, hostErr := takeSnapshot("")
	if hostErr == nil {
		for _, l := range host.listeners {
			inodes[l.inode] = "the host"
		}
	}
	for _, ns := range e.model.Namespaces {
		s, err := takeSnapshot(e.paths[ns])
		if err != nil {
			for _, k := range stackKinds {
				out = append(out, Check{Netns: ns, Kind: k, Error: err.Error()})
			}
			continue
		}
		snaps[ns] = s
	}
	var wiring, hostForeign map[string][]string
	if hostErr == nil {
		wiring = e.wiring(snaps, host)
		hostForeign, hostErr = e.hostForeign(host)
	}
	var ridersErr error
	if hostErr == nil {
		var riders map[string][]string
		if riders, ridersErr = e.riders(snaps, host); ridersErr == nil {
			for ns, msgs := range riders {
				wiring[ns] = append(wiring[ns], msgs...)
			}
		}
	}
	for _, ns := range e.model.Namespaces {
		s := snaps[ns]
		if s == nil {
			continue
		}
		ifnames := map[int]string{}
		for _, l := range s.links {
			ifnames[l.Attrs().Index] = l.Attrs().Name
		}
		links := e.checkLinks(ns, s, wiring[ns])
		if hostErr != nil {
			links.Error = "reading the host's interfaces to check the wiring: " + hostErr.Error()
			links = finish(links)
		} else if ridersErr != nil {
			links.Error = "looking for devices stacked on declared interfaces: " + ridersErr.Error()
			links = finish(links)
		}
		out = append(out,
			links,
			e.checkAddrs(ns, s, ifnames),
			e.checkRoutes(ns, s, ifnames),
			e.checkNeighs(ns, s, ifnames),
			checkFirewall(ns, s, hostForeign[ns]),
			checkSockets(ns, s, inodes),
		)
	}
	return out
}

func finish(c Check) Check {
	sort.Strings(c.Problems)
	c.Pass = len(c.Problems) == 0 && c.Error == ""
	return c
}

// checkLinks compares the namespace's interfaces with the declared ones,
// by name, and adds the wiring problems found for it.
func (e *env) checkLinks(ns string, s *snapshot, wiring []string) Check {
	c := Check{Netns: ns, Kind: "interfaces", Problems: slices.Clone(wiring)}
	want := map[string]string{"lo": "loopback"}
	for _, ifc := range e.model.spec.NamespaceInterfaces(ns) {
		want[ifc.Name] = ifc.Kind
	}
	seen := map[string]bool{}
	for _, l := range s.links {
		a := l.Attrs()
		seen[a.Name] = true
		if _, ok := want[a.Name]; !ok {
			c.Problems = append(c.Problems, fmt.Sprintf("unexpected interface %s (%s)", a.Name, l.Type()))
		}
	}
	for name, kind := range want {
		if !seen[name] {
			c.Problems = append(c.Problems, fmt.Sprintf("declared %s %s is missing", kind, name))
		}
	}
	return finish(c)
}

func (e *env) checkAddrs(ns string, s *snapshot, ifnames map[int]string) Check {
	c := Check{Netns: ns, Kind: "addresses"}
	if devs := e.reordered[ns]; len(devs) > 0 && e.liveIntent != nil {
		for _, msg := range strings.Split(e.liveIntent.Error(), "\n") {
			c.Problems = append(c.Problems, fmt.Sprintf("the kernel holds the addresses of %s in another order than the file, and picks other source addresses: %s", strings.Join(devs, ", "), msg))
		}
	}
	want := map[string]bool{}
	for _, ifc := range e.model.spec.NamespaceInterfaces(ns) {
		for _, p := range ifc.Addresses {
			want[ifc.Name+" "+p.String()] = true
		}
	}
	seen := map[string]bool{}
	for _, a := range s.addrs {
		ip, ok := heldAddr(a)
		ones, _ := a.Mask.Size()
		k := ifnames[a.LinkIndex] + " " + netip.PrefixFrom(ip, ones).String()
		if !ok {
			// Loopback and link-local are every namespace's own; a
			// declared link-local one must be there all the same, and
			// none where the file's sysctls leave an interface without.
			seen[k] = want[k]
			dev := ifnames[a.LinkIndex]
			if ll, known := e.model.linkLocal[ns][dev]; known && !ll && isLinkLocal6(ip) && !want[k] {
				c.Problems = append(c.Problems, fmt.Sprintf("IPv6 link-local address %s on %s, where the file's sysctls leave none (disable_ipv6 or addr_gen_mode)", ip, dev))
			}
			continue
		}
		seen[k] = true
		if !want[k] {
			p := "unexpected address " + swap(k)
			if a.Scope != unix.RT_SCOPE_UNIVERSE {
				p += " (scope " + netlink.Scope(a.Scope).String() + ")"
			}
			if others := slices.DeleteFunc(slices.Clone(e.model.Owners(ip)), func(o string) bool { return o == ns }); len(others) > 0 {
				p += ", declared by " + strings.Join(others, ", ")
			}
			c.Problems = append(c.Problems, p)
		}
	}
	for k := range want {
		if !seen[k] {
			c.Problems = append(c.Problems, "declared address "+swap(k)+" is missing")
		}
	}
	return finish(c)
}

// swap turns "dev addr" keys into "addr on dev" for messages.
func swap(k string) string {
	for i := range k {
		if k[i] == ' ' {
			return k[i+1:] + " on " + k[:i]
		}
	}
	return k
}

func (e *env) checkRoutes(ns string, s *snapshot, ifnames map[int]string) Check {
	c := Check{Netns: ns, Kind: "routes"}
	want := map[string]bool{}
	for _, ifc := range e.model.ifaces[ns] {
		for _, p := range ifc.prefixes {
			// Link-local subnet routes are the kernel's, skipped below.
			if p.Bits() < p.Addr().BitLen() && !isLinkLocal6(p.Addr()) {
				want[p.Masked().String()+" "] = true
			}
		}
	}
	for _, r := range e.model.routes[ns] {
		gw := ""
		if r.via.IsValid() {
			gw = r.via.String()
		}
		want[r.to.String()+" "+gw] = true
	}
	seen := map[string]bool{}
	for _, r := range s.routes {
		dst := defaultRoute(r.Family)
		if r.Dst != nil {
			ip, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			dst = netip.PrefixFrom(ip.Unmap(), ones)
		}
		if isLinkLocal6(dst.Addr()) || dst.Addr().IsMulticast() {
			continue
		}
		gw := ""
		if r.Gw != nil {
			g, _ := netip.AddrFromSlice(r.Gw)
			gw = g.Unmap().String()
		}
		k := dst.String() + " " + gw
		switch {
		case r.Type != unix.RTN_UNICAST:
			// A connected route replaced by a local one (its namespace
			// then takes the whole subnet's traffic) keeps its key.
			c.Problems = append(c.Problems, fmt.Sprintf("route %s of type %s (the topology's routes are unicast)",
				describeRoute(dst, gw, ifnames[r.LinkIndex]), routeType(r.Type)))
		case seen[k]:
			c.Problems = append(c.Problems, "duplicate route "+describeRoute(dst, gw, ifnames[r.LinkIndex]))
		case !want[k]:
			c.Problems = append(c.Problems, "unexpected route "+describeRoute(dst, gw, ifnames[r.LinkIndex]))
		}
		seen[k] = true
	}
	for k := range want {
		if !seen[k] {
			c.Problems = append(c.Problems, "declared route "+k+" is missing")
		}
	}
	c.Problems = append(c.Problems, e.policyRouting(s, ifnames)...)
	c.Problems = append(c.Problems, e.forwarding(ns, s)...)
	return finish(c)
}

// policyRouting reports what routes besides the main table: rules other
// than the kernel's own (a port or mark sent to another table is a route
// leak the main table does not show), and routes in other tables.
func (e *env) policyRouting(s *snapshot, ifnames map[int]string) []string {
	var out []string
	// The netlink package does not report a rule's action (blackhole,
	// prohibit): a rule shaped like a default one is taken for it once per
	// family, and a second one is reported.
	seen := map[[3]int]bool{}
	for _, r := range s.rules {
		if r.Family != unix.AF_INET && r.Family != unix.AF_INET6 {
			continue
		}
		k := [3]int{r.Family, r.Priority, r.Table}
		if !defaultRule(r) || seen[k] {
			out = append(out, fmt.Sprintf("policy routing rule %s (the topology declares none)", describeRule(r)))
		}
		seen[k] = true
	}
	for _, r := range s.others {
		dst := defaultRoute(r.Family)
		if r.Dst != nil {
			ip, _ := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			dst = netip.PrefixFrom(ip.Unmap(), ones)
		}
		gw := ""
		if r.Gw != nil {
			g, _ := netip.AddrFromSlice(r.Gw)
			gw = g.Unmap().String()
		}
		out = append(out, fmt.Sprintf("unexpected route %s in table %d", describeRoute(dst, gw, ifnames[r.LinkIndex]), r.Table))
	}
	return out
}

// defaultRule reports one of the rules a new namespace has: from all,
// lookup local at 0, main at 32766 and (IPv4) default at 32767, with no
// other selector or action.
func defaultRule(r netlink.Rule) bool {
	type rule struct{ prio, table int }
	defaults := []rule{{0, unix.RT_TABLE_LOCAL}, {32766, unix.RT_TABLE_MAIN}}
	if r.Family == unix.AF_INET {
		defaults = append(defaults, rule{32767, unix.RT_TABLE_DEFAULT})
	}
	plain := r.Src == nil && r.Dst == nil && r.Mark == 0 && r.Mask == nil && r.Tos == 0 && r.TunID == 0 &&
		r.Goto <= 0 && r.Flow <= 0 && r.IifName == "" && r.OifName == "" && r.SuppressIfgroup < 0 &&
		r.SuppressPrefixlen < 0 && !r.Invert && r.Dport == nil && r.Sport == nil && r.IPProto == 0 &&
		r.UIDRange == nil
	return plain && slices.Contains(defaults, rule{r.Priority, r.Table})
}

// describeRule writes a rule roughly as ip rule shows it.
func describeRule(r netlink.Rule) string {
	d := fmt.Sprintf("%d:", r.Priority)
	if r.Invert {
		d += " not"
	}
	d += " from " + ipNetOr(r.Src, "all")
	if r.Dst != nil {
		d += " to " + r.Dst.String()
	}
	if r.IPProto != 0 {
		d += fmt.Sprintf(" ipproto %d", r.IPProto)
	}
	if r.Sport != nil {
		d += fmt.Sprintf(" sport %d-%d", r.Sport.Start, r.Sport.End)
	}
	if r.Dport != nil {
		d += fmt.Sprintf(" dport %d-%d", r.Dport.Start, r.Dport.End)
	}
	if r.Mark != 0 {
		d += fmt.Sprintf(" fwmark %#x", r.Mark)
	}
	if r.IifName != "" {
		d += " iif " + r.IifName
	}
	if r.OifName != "" {
		d += " oif " + r.OifName
	}
	return d + fmt.Sprintf(" table %d", r.Table)
}

func ipNetOr(n *net.IPNet, none string) string {
	if n == nil {
		return none
	}
	return n.String()
}

// forwarding compares the live forwarding sysctls with what the file's
// sysctls make them, for the interfaces that carry IP: forwarding turned
// on by hand joins the namespace's segments.
func (e *env) forwarding(ns string, s *snapshot) []string {
	var out []string
	on := func(b bool) string {
		if b {
			return "1"
		}
		return "0"
	}
	for _, ifc := range e.model.ifaces[ns] {
		for _, k := range []struct {
			key  string
			want bool
		}{
			{topology.IfaceKey("ipv4.conf.", ifc.name, ".forwarding"), e.model.forward4[ns][ifc.name]},
			{topology.IfaceKey("ipv6.conf.", ifc.name, ".force_forwarding"), forceForwarding6(e.model.sysctls(ns), ifc.name)},
		} {
			if live, ok := s.forwarding[k.key]; ok && live != on(k.want) {
				out = append(out, fmt.Sprintf("net.%s is %s, the file's sysctls make it %s", k.key, live, on(k.want)))
			}
		}
	}
	want := strings.TrimSpace(e.model.sysctls(ns)["net.ipv6.conf.all.forwarding"]) == "1"
	if live, ok := s.forwarding["ipv6.conf.all.forwarding"]; ok && live != on(want) {
		out = append(out, fmt.Sprintf("net.ipv6.conf.all.forwarding is %s, the file's sysctls make it %s", live, on(want)))
	}
	return out
}

func defaultRoute(family int) netip.Prefix {
	if family == unix.AF_INET6 {
		return netip.MustParsePrefix("::/0")
	}
	return netip.MustParsePrefix("0.0.0.0/0")
}

// routeType names a route type as ip-route(8) does.
func routeType(t int) string {
	switch t {
	case unix.RTN_LOCAL:
		return "local"
	case unix.RTN_BROADCAST:
		return "broadcast"
	case unix.RTN_ANYCAST:
		return "anycast"
	case unix.RTN_MULTICAST:
		return "multicast"
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	case unix.RTN_THROW:
		return "throw"
	case unix.RTN_NAT:
		return "nat"
	}
	return fmt.Sprint(t)
}

func describeRoute(dst netip.Prefix, gw, dev string) string {
	s := dst.String()
	if gw != "" {
		s += " via " + gw
	}
	if dev != "" {
		s += " dev " + dev
	}
	return s
}

// checkNeighs accepts a resolved neighbour only if some namespace on the
// interface's segment declares its address: an answer from anyone else
// means a stack that should not be on this wire.
func (e *env) checkNeighs(ns string, s *snapshot, ifnames map[int]string) Check {
	c := Check{Netns: ns, Kind: "neighbours"}
	const resolved = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT
	for _, n := range s.neighs {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || n.State&resolved == 0 {
			continue
		}
		ip = ip.Unmap()
		if isLinkLocal6(ip) || ip.IsMulticast() || ip.IsLoopback() {
			continue
		}
		dev := ifnames[n.LinkIndex]
		if !e.onSegmentOf(ns, dev, ip) {
			c.Problems = append(c.Problems, fmt.Sprintf("neighbour %s (%s) on %s is not declared on that segment", ip, n.HardwareAddr, dev))
		}
	}
	return finish(c)
}

func (e *env) onSegmentOf(ns, dev string, ip netip.Addr) bool {
	i := slices.IndexFunc(e.model.ifaces[ns], func(f l3iface) bool { return f.name == dev })
	if i < 0 {
		return false
	}
	// Whoever the model has answer for ip on the segment, the rule the
	// reachability it expects relies on, or holds it there.
	seg := e.model.ifaces[ns][i].segment
	_, ok := e.model.neighbour(ns, seg, ip, "")
	// A holder on the segment that does not answer ARP (arp_ignore 8)
	// still gets an entry: from its own request.
	return ok || e.model.heldOnSegment(seg, ip)
}

// checkFirewall reports packet filters: netfilter rules and drop
// policies, and tc, tcx and XDP objects that are not nsflow's, its own
// and those on the host's declared interfaces of its segments.
func checkFirewall(ns string, s *snapshot, host []string) Check {
	c := Check{Netns: ns, Kind: "firewall"}
	for _, f := range s.foreign {
		c.Problems = append(c.Problems, f+" (the topology declares none)")
	}
	for _, f := range host {
		c.Problems = append(c.Problems, "host:"+f+" (the topology declares none)")
	}
	for _, t := range s.firewall {
		if t.rules > 0 || len(t.drops) > 0 {
			c.Problems = append(c.Problems, t.String()+" (the topology declares none)")
		} else {
			c.Info = append(c.Info, t.String())
		}
	}
	return finish(c)
}

// checkSockets: a socket belongs to one namespace, so the same socket seen
// from two places is a leak.
func checkSockets(ns string, s *snapshot, inodes map[uint32]string) Check {
	c := Check{Netns: ns, Kind: "sockets"}
	for _, l := range s.listeners {
		if other, ok := inodes[l.inode]; ok && other != ns {
			c.Problems = append(c.Problems, fmt.Sprintf("listener %s is also seen from %s", l, other))
			continue
		}
		inodes[l.inode] = ns
	}
	return finish(c)
}
