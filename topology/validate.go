package topology

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// Limits the kernel imposes on names.
const (
	maxIfNameLen = 15 // IFNAMSIZ - 1
	maxNameLen   = 64 // topology and namespace names: file names, kept short
	minMTU       = 68
	maxMTU       = 65535
	// minMTU6 is IPv6's minimum MTU: below it the kernel disables IPv6 on
	// the interface, and refuses IPv6 addresses there.
	minMTU6 = 1280
)

// nameRE is what a topology or namespace name may hold: it becomes a file
// name under /run/netns and /run/nsflow.
var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

// sysctlPartRE is one part of a dotted sysctl key, other than an
// interface's name.
var sysctlPartRE = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Validate checks the whole spec and returns every problem found (joined),
// each naming its field path, e.g. `links[2].endpoints[0].namespace:
// undeclared namespace "c9"`.
func (s *Spec) Validate() error {
	v := &validator{s: s}
	v.run()
	return errors.Join(v.errs...)
}

type validator struct {
	s    *Spec
	errs []error
	// namespaces maps declared namespace names to their index.
	namespaces map[string]int
	// bridges maps declared bridge names to their index.
	bridges map[string]int
	// ifaces maps "namespace/interface" to the field path declaring it.
	ifaces map[string]string
	// addrs holds every interface address with its namespace, interface,
	// layer-2 segment and field path, for the overlap and route checks.
	addrs []addrRef
}

type addrRef struct {
	prefix  netip.Prefix
	ns, dev string
	segment int
	path    string
}

func (v *validator) add(path, format string, args ...any) {
	v.errs = append(v.errs, fmt.Errorf("%s: %s", path, fmt.Sprintf(format, args...)))
}

func (v *validator) run() {
	s := v.s
	switch {
	case s.Name == "":
		v.add("name", "required")
	case len(s.Name) > maxNameLen || !nameRE.MatchString(s.Name):
		v.add("name", "%q: want 1-%d characters from A-Z a-z 0-9 _ . - (not starting with . or -)", s.Name, maxNameLen)
	}
	v.namespaceNames()
	v.bridgeNames()
	seg := v.links()
	v.addresses(seg)
	v.ipv6MTU()
	v.routes()
	v.sysctls()
	v.ipv6Disabled()
	ns := make(map[string]bool, len(v.namespaces))
	for n := range v.namespaces {
		ns[n] = true
	}
	v.errs = append(v.errs, s.Isolation.validate(ns)...)
}

func (v *validator) namespaceNames() {
	v.namespaces = map[string]int{}
	for i, n := range v.s.Namespaces {
		path := fmt.Sprintf("namespaces[%d].name", i)
		switch {
		case n.Name == "":
			v.add(path, "required")
			continue
		case n.Name == HostNamespace:
			v.add(path, "%q is reserved for the host namespace and cannot be declared", n.Name)
			continue
		case len(n.Name) > maxNameLen || !nameRE.MatchString(n.Name):
			v.add(path, "%q: want 1-%d characters from A-Z a-z 0-9 _ . - (not starting with . or -)", n.Name, maxNameLen)
		}
		if j, dup := v.namespaces[n.Name]; dup {
			v.add(path, "duplicate namespace %q (also namespaces[%d])", n.Name, j)
			continue
		}
		v.namespaces[n.Name] = i
	}
}

// knownNamespace reports whether name is declared or the host.
func (v *validator) knownNamespace(name string) bool {
	_, ok := v.namespaces[name]
	return ok || name == HostNamespace
}

func (v *validator) bridgeNames() {
	v.bridges = map[string]int{}
	v.ifaces = map[string]string{}
	for i, b := range v.s.Bridges {
		path := fmt.Sprintf("bridges[%d]", i)
		v.checkIfName(path+".name", b.Name)
		if b.Namespace != "" && !v.knownNamespace(b.Namespace) {
			v.add(path+".namespace", "undeclared namespace %q", b.Namespace)
		}
		v.checkMTU(path+".mtu", b.MTU)
		if b.Name == "" {
			continue
		}
		if j, dup := v.bridges[b.Name]; dup {
			v.add(path+".name", "duplicate bridge %q (also bridges[%d])", b.Name, j)
			continue
		}
		v.bridges[b.Name] = i
		v.claimIface(path+".name", v.s.BridgeNamespace(b.Name), b.Name)
	}
}

func (v *validator) checkIfName(path, name string) {
	switch {
	case name == "":
		v.add(path, "required")
	case len(name) > maxIfNameLen:
		v.add(path, "interface name %q is %d bytes, the kernel allows at most %d", name, len(name), maxIfNameLen)
	case name == "." || name == ".." || strings.ContainsFunc(name, badIfNameRune) || strings.IndexByte(name, 0xa0) >= 0:
		v.add(path, "invalid interface name %q: not \".\" or \"..\", and no '/', ':', '%%' or white space (the kernel counts byte 0xA0 as white space: U+00A0, and UTF-8 letters such as \"à\" that contain it)", name)
	case name == "lo":
		v.add(path, "%q is the loopback interface every namespace already has", name)
	case tunnelFallbacks[name] != "":
		v.add(path, "%q is the device the kernel's %s module creates in every namespace once it is loaded", name, tunnelFallbacks[name])
	case name == "all" || name == "default":
		// Their /proc/sys/net/*/conf directories are the namespace-wide
		// settings: the kernel refuses an interface of that name.
		v.add(path, "%q is reserved by the kernel (net.*.conf.%s are the namespace-wide settings)", name, name)
	}
}

// tunnelFallbacks are the devices tunnel modules create in every network
// namespace (their fallback tunnels), by the module: where it is loaded
// (ipip on Calico nodes, say), a declared interface of that name fails
// with EEXIST half way through a build.
var tunnelFallbacks = map[string]string{
	"tunl0": "ipip", "sit0": "sit", "gre0": "ip_gre", "gretap0": "ip_gre", "erspan0": "ip_gre",
	"ip6tnl0": "ip6_tunnel", "ip6gre0": "ip6_gre", "ip_vti0": "ip_vti", "ip6_vti0": "ip6_vti",
}

// badIfNameRune reports the characters the kernel refuses in an interface
// name (dev_valid_name: '/', ':' and the ASCII white space isspace
// matches; its isspace also matches the byte 0xA0, checked by the caller
// on bytes), and '%', which it takes as a pattern (as in "eth%d") to pick
// a free name itself, so that the interface would not have the declared
// name. NUL would end the name early.
func badIfNameRune(r rune) bool {
	switch r {
	case '/', ':', '%', ' ', '\t', '\n', '\v', '\f', '\r', 0:
		return true
	}
	return false
}

func (v *validator) checkMTU(path string, mtu int) {
	if mtu != 0 && (mtu < minMTU || mtu > maxMTU) {
		v.add(path, "%d out of range %d-%d", mtu, minMTU, maxMTU)
	}
}

// claimIface records an interface name in its namespace and reports a
// second declaration of the same name there.
func (v *validator) claimIface(path, ns, name string) {
	if ns == "" || name == "" {
		return
	}
	key := ns + "/" + name
	if prev, dup := v.ifaces[key]; dup {
		v.add(path, "duplicate interface %q in namespace %q (also %s)", name, ns, prev)
		return
	}
	v.ifaces[key] = path
}

// links checks each veth pair and returns the layer-2 segments: a union
// of endpoints and bridges joined by veths or bridge ports.
func (v *validator) links() *unionFind {
	s := v.s
	// Nodes: bridges first, then two per link.
	uf := newUnionFind(len(s.Bridges) + 2*len(s.Links))
	bridgeGraph := newUnionFind(len(s.Bridges))
	for i, l := range s.Links {
		path := fmt.Sprintf("links[%d]", i)
		v.checkMTU(path+".mtu", l.MTU)
		if len(l.Endpoints) != 2 {
			v.add(path+".endpoints", "a veth pair has exactly 2 endpoints, got %d", len(l.Endpoints))
			continue
		}
		for j, e := range l.Endpoints {
			ep := fmt.Sprintf("%s.endpoints[%d]", path, j)
			ok := true
			switch {
			case e.Namespace == "" && e.Bridge == "":
				v.add(ep, "needs namespace or bridge")
				ok = false
			case e.Namespace != "" && e.Bridge != "":
				v.add(ep, "has both namespace %q and bridge %q: a veth end is in a namespace or a bridge port, not both", e.Namespace, e.Bridge)
				ok = false
			case e.Namespace != "" && !v.knownNamespace(e.Namespace):
				v.add(ep+".namespace", "undeclared namespace %q", e.Namespace)
				ok = false
			case e.Bridge != "":
				if _, known := v.bridges[e.Bridge]; !known {
					v.add(ep+".bridge", "undeclared bridge %q", e.Bridge)
					ok = false
				} else if len(e.Addresses) > 0 {
					v.add(ep+".addresses", "a bridge port carries no addresses: put them on bridge %q", e.Bridge)
				}
			}
			v.checkIfName(ep+".interface", e.Interface)
			if ok {
				v.claimIface(ep+".interface", s.EndpointNamespace(e), e.Interface)
			}
		}
		a, b := len(s.Bridges)+2*i, len(s.Bridges)+2*i+1
		uf.union(a, b)
		for j, e := range l.Endpoints {
			if bi, known := v.bridges[e.Bridge]; known {
				uf.union(len(s.Bridges)+2*i+j, bi)
			}
		}
		ba, aok := v.bridges[l.Endpoints[0].Bridge]
		bb, bok := v.bridges[l.Endpoints[1].Bridge]
		if aok && bok && !bridgeGraph.union(ba, bb) {
			if ba == bb {
				v.add(path, "both ends are ports of bridge %q: a loop", l.Endpoints[0].Bridge)
			} else {
				v.add(path, "bridges %q and %q are already connected: this link closes a cycle of bridges (a broadcast loop)",
					l.Endpoints[0].Bridge, l.Endpoints[1].Bridge)
			}
		}
	}
	return uf
}

// addresses checks each address and the addressing plan: one address is
// used once in the whole topology (nsflow attributes traffic by address),
// and subnets on different layer-2 segments do not overlap.
func (v *validator) addresses(uf *unionFind) {
	s := v.s
	collect := func(path, ns, dev string, node int, addrs []string) {
		for k, a := range addrs {
			ap := fmt.Sprintf("%s[%d]", path, k)
			p, err := netip.ParsePrefix(a)
			switch {
			case err != nil:
				v.add(ap, "invalid CIDR %q (want e.g. 198.18.0.1/24 or fd00::1/64)", a)
				continue
			case p.Addr().Zone() != "" || p.Addr().Is4In6():
				v.add(ap, "%q: zones and IPv4-mapped IPv6 addresses are not interface addresses", a)
				continue
			case p.Addr().IsUnspecified() || p.Addr().IsMulticast() || p.Addr().IsLoopback():
				v.add(ap, "%q is not a unicast interface address", a)
				continue
			case p.Addr().Is4() && p.Bits() < 31 && p.Addr() == p.Masked().Addr():
				v.add(ap, "%q is the network address of %s, not a host's", a, p.Masked())
				continue
			case p.Addr().Is4() && p.Bits() < 31 && p.Addr() == lastAddr(p):
				v.add(ap, "%q is the broadcast address of %s, not a host's", a, p.Masked())
				continue
			}
			v.addrs = append(v.addrs, addrRef{prefix: p, ns: ns, dev: dev, segment: uf.find(node), path: ap})
		}
	}
	for i, b := range s.Bridges {
		collect(fmt.Sprintf("bridges[%d].addresses", i), s.BridgeNamespace(b.Name), b.Name, i, b.Addresses)
	}
	for i, l := range s.Links {
		if len(l.Endpoints) != 2 {
			continue
		}
		for j, e := range l.Endpoints {
			if e.Bridge != "" {
				continue // reported in links
			}
			collect(fmt.Sprintf("links[%d].endpoints[%d].addresses", i, j), e.Namespace, e.Interface,
				len(s.Bridges)+2*i+j, e.Addresses)
		}
	}
	// A link-local address is unique on its link only: fe80::1 may be a
	// router's on each of its links.
	type addrKey struct {
		addr    netip.Addr
		segment int
	}
	seen := map[addrKey]string{}
	for _, a := range v.addrs {
		k := addrKey{a.prefix.Addr(), -1}
		if a.prefix.Addr().Is6() && a.prefix.Addr().IsLinkLocalUnicast() {
			k.segment = a.segment
		}
		if prev, dup := seen[k]; dup {
			v.add(a.path, "address %s is already used at %s", a.prefix.Addr(), prev)
			continue
		}
		seen[k] = a.path
	}
	// One subnet per segment is enough to find overlaps; comparing the
	// distinct (segment, subnet) pairs keeps a 1000-namespace star cheap.
	type segNet struct {
		segment int
		net     netip.Prefix
	}
	first := map[segNet]string{}
	var nets []segNet
	for _, a := range v.addrs {
		k := segNet{a.segment, a.prefix.Masked()}
		if _, ok := first[k]; !ok {
			first[k] = a.path
			nets = append(nets, k)
		}
	}
	for i, x := range nets {
		if x.net.Addr().Is6() && x.net.Addr().IsLinkLocalUnicast() {
			continue // every link has fe80::/64
		}
		for _, y := range nets[:i] {
			if x.segment != y.segment && x.net.Overlaps(y.net) {
				v.add(first[x], "subnet %s overlaps %s at %s, which is on a different link or bridge", x.net, y.net, first[y])
			}
		}
	}
}

// ipv6Disabled rejects IPv6 addresses on an interface where the file's
// sysctls disable IPv6: the kernel refuses them.
func (v *validator) ipv6Disabled() {
	for _, a := range v.addrs {
		if !a.prefix.Addr().Is6() {
			continue
		}
		i, declared := v.namespaces[a.ns] // not the host's
		if declared && IfaceSysctl(v.s.Namespaces[i].Sysctls, "net.ipv6.conf.", ".disable_ipv6", a.dev) == "1" {
			v.add(a.path, "%s is IPv6, and namespaces[%d].sysctls disable IPv6 on %s", a.prefix, i, a.dev)
		}
	}
}

// ipv6MTU rejects an MTU below IPv6's minimum where the interface holds
// IPv6 addresses: a link's (either end), a bridge's, and a bridge port's
// when the bridge declares no MTU of its own, since the kernel then gives
// the bridge its ports' smallest MTU (and drops its IPv6 addresses).
func (v *validator) ipv6MTU() {
	s := v.s
	// firstV6 returns the field path of the first IPv6 address of an
	// interface, or "".
	firstV6 := func(ns, dev string) string {
		for _, a := range v.addrs {
			if a.ns == ns && a.dev == dev && a.prefix.Addr().Is6() {
				return a.path
			}
		}
		return ""
	}
	// An MTU out of range is reported once, as such (mtu).
	tooSmall := func(mtu int) bool { return mtu >= minMTU && mtu < minMTU6 }
	for i, b := range s.Bridges {
		if p := firstV6(s.BridgeNamespace(b.Name), b.Name); p != "" && tooSmall(b.MTU) {
			v.add(fmt.Sprintf("bridges[%d].mtu", i), "%d is below %d, the minimum for IPv6, and %s is IPv6", b.MTU, minMTU6, p)
		}
	}
	for i, l := range s.Links {
		if !tooSmall(l.MTU) || len(l.Endpoints) != 2 {
			continue
		}
		path := fmt.Sprintf("links[%d].mtu", i)
		for _, e := range l.Endpoints {
			if e.Bridge != "" {
				bi, known := v.bridges[e.Bridge]
				if !known || s.Bridges[bi].MTU != 0 {
					continue
				}
				if p := firstV6(s.BridgeNamespace(e.Bridge), e.Bridge); p != "" {
					v.add(path, "%d is below %d, the minimum for IPv6, and bridge %q (%s is IPv6) takes its ports' smallest MTU: give the bridge an mtu",
						l.MTU, minMTU6, e.Bridge, p)
					break
				}
				continue
			}
			if p := firstV6(e.Namespace, e.Interface); p != "" {
				v.add(path, "%d is below %d, the minimum for IPv6, and %s is IPv6", l.MTU, minMTU6, p)
				break
			}
		}
	}
}

// routes checks each namespace's routes: syntax, the device exists there,
// and the gateway is on a subnet of one of the namespace's interfaces.
func (v *validator) routes() {
	for i, n := range v.s.Namespaces {
		type key struct {
			to  netip.Prefix
			is4 bool
		}
		seen := map[key]int{}
		for j, r := range n.Routes {
			path := fmt.Sprintf("namespaces[%d].routes[%d]", i, j)
			to, via, ok := v.route(path, n.Name, r)
			if !ok {
				continue
			}
			is4 := to.Addr().Is4()
			if !to.IsValid() { // default: the family follows via or dev
				is4 = v.routeFamily4(n.Name, r, via)
			}
			if to.Bits() == 0 {
				to = netip.Prefix{} // 0.0.0.0/0 and ::/0 are default routes
			}
			k := key{to, is4}
			if prev, dup := seen[k]; dup {
				v.add(path+".to", "duplicate route to %s (also routes[%d])", r.To, prev)
				continue
			}
			seen[k] = j
		}
	}
}

// route checks one route and returns its parsed destination (invalid for
// "default") and gateway (invalid when absent).
func (v *validator) route(path, ns string, r Route) (to netip.Prefix, via netip.Addr, ok bool) {
	ok = true
	if r.To == "" {
		v.add(path+".to", "required: a CIDR or \"default\"")
		ok = false
	} else if r.To != "default" {
		p, err := netip.ParsePrefix(r.To)
		switch {
		case err != nil:
			v.add(path+".to", "invalid CIDR %q (want e.g. 198.18.4.0/24, fd00:4::/64 or default)", r.To)
			ok = false
		case p != p.Masked():
			v.add(path+".to", "%q has host bits set; did you mean %s?", r.To, p.Masked())
			ok = false
		default:
			to = p
		}
	}
	if r.Via == "" && r.Dev == "" {
		v.add(path, "needs via (a gateway address) or dev (an interface)")
		return to, via, false
	}
	if r.Dev != "" {
		if _, known := v.ifaces[ns+"/"+r.Dev]; !known {
			v.add(path+".dev", "no interface %q in namespace %q", r.Dev, ns)
			ok = false
		}
	}
	if r.Via != "" {
		a, err := netip.ParseAddr(r.Via)
		if err != nil {
			v.add(path+".via", "invalid address %q", r.Via)
			return to, via, false
		}
		if a.Zone() != "" {
			v.add(path+".via", "%q: give the interface as dev, not as a zone", r.Via)
			return to, via, false
		}
		via = a
		if to.IsValid() && to.Addr().Is4() != a.Is4() {
			v.add(path+".via", "gateway %s and destination %s are of different address families", a, to)
			return to, via, false
		}
		if a.Is6() && a.IsLinkLocalUnicast() {
			// On the link of dev by definition (every IPv6 interface has
			// an address in fe80::/10), and of no other.
			if r.Dev == "" {
				v.add(path+".dev", "a link-local gateway (%s) needs dev, the interface to reach it on", a)
				ok = false
			}
		} else if edge := v.subnetEdge(ns, a); ok && edge != "" {
			v.add(path+".via", "gateway %s is %s, not a host", a, edge)
			ok = false
		} else if own := v.ownAddr(ns, a); ok && own != "" {
			v.add(path+".via", "gateway %s is this namespace's own address (%s): a gateway is a neighbour", a, own)
			ok = false
		} else if ok && !v.onLink(ns, r.Dev, a) {
			where := fmt.Sprintf("any interface in namespace %q", ns)
			if r.Dev != "" {
				where = fmt.Sprintf("interface %q", r.Dev)
			}
			v.add(path+".via", "gateway %s is not on a subnet of %s: no interface can reach it", a, where)
			ok = false
		}
	} else if !to.IsValid() && ok && v.firstAddr(ns, r.Dev) == nil {
		v.add(path, "default route via dev %q only: the interface has no address to tell IPv4 from IPv6; add via", r.Dev)
		ok = false
	}
	if ok && r.Dev != "" && ((to.IsValid() && to.Addr().Is6()) || (via.IsValid() && via.Is6())) {
		ok = v.ipv6Dev(path+".dev", ns, r.Dev)
	}
	if ok && to.IsValid() {
		if a := v.connected(ns, to, ""); a != nil && (via.IsValid() || v.connected(ns, to, r.Dev) == nil) {
			v.add(path+".to", "%s is the subnet of interface %q (%s), which the kernel routes itself: declare it with dev %s and no via, or leave it out",
				to, a.dev, a.path, a.dev)
			ok = false
		}
	}
	return to, via, ok
}

// ipv6Dev reports whether an IPv6 route can go through interface dev of
// namespace ns: not where the file's sysctls disable IPv6, nor on a link
// whose MTU is below IPv6's minimum, where the kernel gives the device no
// IPv6 at all (it would refuse the route only once everything is built).
func (v *validator) ipv6Dev(path, ns, dev string) bool {
	if i, declared := v.namespaces[ns]; declared && IfaceSysctl(v.s.Namespaces[i].Sysctls, "net.ipv6.conf.", ".disable_ipv6", dev) == "1" {
		v.add(path, "an IPv6 route through %s, and namespaces[%d].sysctls disable IPv6 on it", dev, i)
		return false
	}
	for i, l := range v.s.Links {
		for _, e := range l.Endpoints {
			if e.Bridge == "" && e.Namespace == ns && e.Interface == dev && l.MTU >= minMTU && l.MTU < minMTU6 {
				v.add(path, "an IPv6 route through %s, whose MTU (links[%d].mtu: %d) is below %d, the minimum for IPv6: the kernel gives it no IPv6",
					dev, i, l.MTU, minMTU6)
				return false
			}
		}
	}
	for i, b := range v.s.Bridges {
		if v.s.BridgeNamespace(b.Name) == ns && b.Name == dev && b.MTU >= minMTU && b.MTU < minMTU6 {
			v.add(path, "an IPv6 route through %s, whose MTU (bridges[%d].mtu: %d) is below %d, the minimum for IPv6: the kernel gives it no IPv6",
				dev, i, b.MTU, minMTU6)
			return false
		}
	}
	return true
}

// connected returns an IPv4 address in namespace ns, on interface dev
// ("" for any), whose subnet is exactly to, or nil. The kernel adds a
// route to that subnet (unless it is a /32) with the address, one a
// declared route to the same destination can only be or replace. IPv6 is
// left out: the kernel's own routes there have a metric (256) that
// declared ones (1024) never meet.
func (v *validator) connected(ns string, to netip.Prefix, dev string) *addrRef {
	if !to.Addr().Is4() || to.Bits() == 32 {
		return nil
	}
	for i, a := range v.addrs {
		if a.ns == ns && (dev == "" || a.dev == dev) && a.prefix.Masked() == to {
			return &v.addrs[i]
		}
	}
	return nil
}

// onLink reports whether gw is inside a subnet of an interface (dev, or
// any) in namespace ns and is not that interface's own address.
// subnetEdge says whether a is the network or broadcast address of an
// IPv4 subnet of namespace ns ("" if neither).
func (v *validator) subnetEdge(ns string, a netip.Addr) string {
	for _, r := range v.addrs {
		p := r.prefix
		if r.ns != ns || !p.Addr().Is4() || !a.Is4() || p.Bits() >= 31 || !p.Masked().Contains(a) {
			continue
		}
		switch a {
		case p.Masked().Addr():
			return "the network address of " + p.Masked().String()
		case lastAddr(p):
			return "the broadcast address of " + p.Masked().String()
		}
	}
	return ""
}

// ownAddr returns the field path of address a in namespace ns, or "".
func (v *validator) ownAddr(ns string, a netip.Addr) string {
	for _, r := range v.addrs {
		if r.ns == ns && r.prefix.Addr() == a {
			return r.path
		}
	}
	return ""
}

// lastAddr is the last address of IPv4 prefix p: its broadcast address.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

func (v *validator) onLink(ns, dev string, gw netip.Addr) bool {
	for _, a := range v.addrs {
		if a.ns == ns && (dev == "" || a.dev == dev) && a.prefix.Contains(gw) && a.prefix.Addr() != gw {
			return true
		}
	}
	return false
}

func (v *validator) firstAddr(ns, dev string) *addrRef {
	for i, a := range v.addrs {
		if a.ns == ns && a.dev == dev {
			return &v.addrs[i]
		}
	}
	return nil
}

func (v *validator) routeFamily4(ns string, r Route, via netip.Addr) bool {
	if via.IsValid() {
		return via.Is4()
	}
	if a := v.firstAddr(ns, r.Dev); a != nil {
		return a.prefix.Addr().Is4()
	}
	return true
}

func (v *validator) sysctls() {
	for i, n := range v.s.Namespaces {
		for _, k := range slices.Sorted(maps.Keys(n.Sysctls)) {
			path := fmt.Sprintf("namespaces[%d].sysctls.%s", i, k)
			if problem := sysctlKeyProblem(k); problem != "" {
				v.add(path, "%s%s", problem, v.dottedHint(n.Name, k))
			}
			if val := n.Sysctls[k]; val == "" || strings.ContainsAny(val, "\n\x00") {
				v.add(path, "value must be a non-empty single line")
			}
			switch ifc := sysctlInterface(k); ifc {
			case "", "all", "default", "lo":
			default:
				if _, known := v.ifaces[n.Name+"/"+ifc]; !known {
					v.add(path, "no interface %q in namespace %q (want all, default, lo or one the file puts there)", ifc, n.Name)
				}
			}
		}
	}
}

// sysctlKeyProblem says what is wrong with the form of a sysctl key, or
// "". The interface part of a per-interface key is left to the check that
// the file puts such an interface there.
func sysctlKeyProblem(key string) string {
	p := strings.Split(key, ".")
	iface := isIfaceKey(p)
	for i, part := range p {
		switch {
		case iface && i == 3 && part != "":
		case strings.Contains(part, "/"):
			return "a '/' stands for a '.' in an interface's name (net.ipv4.conf.eth0/100.rp_filter for eth0.100); only that part of a key may have one"
		case p[0] != "net" || len(p) < 2 || !sysctlPartRE.MatchString(part):
			return "want a key under net., e.g. net.ipv4.ip_forward"
		}
	}
	if iface && len(p) != 5 {
		pre := strings.Join(p[:3], ".")
		return fmt.Sprintf("want %s.IF.SETTING, e.g. %s.eth0.rp_filter: an interface's directory there has no subdirectories", pre, pre)
	}
	return ""
}

// dottedHint points at the spelling of key for an interface of namespace
// ns whose name has a dot, when key names it with the dot as is.
func (v *validator) dottedHint(ns, key string) string {
	p := strings.Split(key, ".")
	for _, ifc := range v.s.NamespaceInterfaces(ns) {
		n := strings.Count(ifc.Name, ".") + 1
		if n > 1 && len(p) > 3+n && strings.Join(p[3:3+n], ".") == ifc.Name {
			return fmt.Sprintf("; for %q write %s", ifc.Name,
				IfaceKey(strings.Join(p[:3], ".")+".", ifc.Name, "."+strings.Join(p[3+n:], ".")))
		}
	}
	return ""
}

// unionFind is a disjoint-set forest over 0..n-1.
type unionFind struct{ parent []int }

func newUnionFind(n int) *unionFind {
	p := make([]int, n)
	for i := range p {
		p[i] = i
	}
	return &unionFind{p}
}

func (u *unionFind) find(x int) int {
	for u.parent[x] != x {
		u.parent[x] = u.parent[u.parent[x]]
		x = u.parent[x]
	}
	return x
}

// union joins the sets of a and b and reports false if they were already
// one set (the edge closes a cycle).
func (u *unionFind) union(a, b int) bool {
	ra, rb := u.find(a), u.find(b)
	if ra == rb {
		return false
	}
	u.parent[ra] = rb
	return true
}
