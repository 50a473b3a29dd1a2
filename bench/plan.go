package bench

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/nsflow/nsflow/topology"
)

// Path is the kind of path a case measures.
type Path string

// Paths bench measures.
const (
	Veth   Path = "veth"   // two namespaces joined by one veth pair
	Bridge Path = "bridge" // two namespaces on the same Linux bridge
)

// ParsePaths parses the --path flag: veth, bridge or both.
func ParsePaths(s string) ([]Path, error) {
	switch s {
	case "veth":
		return []Path{Veth}, nil
	case "bridge":
		return []Path{Bridge}, nil
	case "both":
		return []Path{Veth, Bridge}, nil
	}
	return nil, fieldErr("path", "unknown %q (want veth, bridge or both)", s)
}

// Iface is one interface on a measured path.
type Iface struct {
	Namespace string `json:"namespace"` // declared name
	Name      string `json:"interface"`
	netns     string // path for nsenter and netlink
}

// pair is one client/server namespace pair: the generator's client runs
// in client's namespace, its server in server's. Ifaces lists every
// interface the traffic crosses, in path order, which is what bench
// instruments and reconciles; those at even positions (the client's
// interface, the bridge port facing the server) are the ones that
// transmit toward the server.
type pair struct {
	path           Path
	client, server Iface
	serverAddr     netip.Addr
	ifaces         []Iface
	// size is the flow's Size (traffic.Flow): the UDP payload that makes
	// the run's frame size in the pair's address family, or the TCP write.
	size int
	mtu  int // the smallest on the path, as the file declares it
}

// forward returns the interfaces that transmit toward the server.
func (p pair) forward() []Iface {
	var out []Iface
	for i := 0; i < len(p.ifaces); i += 2 {
		out = append(out, p.ifaces[i])
	}
	return out
}

func (p pair) String() string {
	return fmt.Sprintf("%s -> %s (%s)", p.client.Namespace, p.server.Namespace, p.serverAddr)
}

// maxPairs bounds --pairs: the run topology numbers pairs into one octet.
const maxPairs = 250

// runSpec is the topology bench builds for itself: pairs veth pairs
// (namespaces vcN and vsN, 198.18.N.0/30) and pairs of namespaces on one
// bridge (bcN and bsN, 198.19.0.0/16). The bridge lives in its own
// namespace so that the host's bridge-netfilter and firewall settings
// cannot touch the measured traffic. IPv6 is off so that no neighbour
// discovery or multicast report shares the measured links.
func runSpec(paths []Path, pairs int) *topology.Spec {
	noV6 := map[string]string{
		"net.ipv6.conf.all.disable_ipv6":     "1",
		"net.ipv6.conf.default.disable_ipv6": "1",
	}
	s := &topology.Spec{Name: "bench"}
	addNS := func(name string) {
		s.Namespaces = append(s.Namespaces, topology.Namespace{Name: name, Sysctls: noV6})
	}
	for _, p := range paths {
		switch p {
		case Veth:
			for i := 1; i <= pairs; i++ {
				c, sv := fmt.Sprintf("vc%d", i), fmt.Sprintf("vs%d", i)
				addNS(c)
				addNS(sv)
				s.Links = append(s.Links, topology.Link{Endpoints: []topology.Endpoint{
					{Namespace: c, Interface: "eth0", Addresses: []string{fmt.Sprintf("198.18.%d.1/30", i)}},
					{Namespace: sv, Interface: "eth0", Addresses: []string{fmt.Sprintf("198.18.%d.2/30", i)}},
				}})
			}
		case Bridge:
			addNS("bbr")
			s.Bridges = append(s.Bridges, topology.Bridge{Name: "br0", Namespace: "bbr"})
			for i := 1; i <= pairs; i++ {
				for _, side := range []struct{ ns, port, addr string }{
					{fmt.Sprintf("bc%d", i), fmt.Sprintf("pc%d", i), fmt.Sprintf("198.19.%d.1/16", i)},
					{fmt.Sprintf("bs%d", i), fmt.Sprintf("ps%d", i), fmt.Sprintf("198.19.%d.2/16", i)},
				} {
					addNS(side.ns)
					s.Links = append(s.Links, topology.Link{Endpoints: []topology.Endpoint{
						{Namespace: side.ns, Interface: "eth0", Addresses: []string{side.addr}},
						{Bridge: "br0", Interface: side.port},
					}})
				}
			}
		}
	}
	return s
}

// findPairs picks disjoint client/server pairs from a spec: no namespace
// is in two, as each pair's counts are checked against its namespaces'
// own. For veth, the links whose both ends are in declared namespaces;
// for bridge, the namespaces attached to one bridge, taken two by two in
// file order. The server address is the first of the server's interface
// in the family of the client's first address that has one.
func findPairs(s *topology.Spec, path Path) []pair {
	declared := map[string]bool{}
	for _, n := range s.Namespaces {
		declared[n.Name] = true
	}
	used := map[string]bool{}
	free := func(ns ...string) bool {
		for _, n := range ns {
			if used[n] {
				return false
			}
		}
		for _, n := range ns {
			used[n] = true
		}
		return true
	}
	iface := func(ns, name string) Iface { return Iface{Namespace: ns, Name: name, netns: s.NetnsPath(ns)} }
	var out []pair
	switch path {
	case Veth:
		for _, l := range s.Links {
			if len(l.Endpoints) != 2 {
				continue
			}
			a, b := l.Endpoints[0], l.Endpoints[1]
			if a.Bridge != "" || b.Bridge != "" || !declared[a.Namespace] || !declared[b.Namespace] {
				continue
			}
			// Both ends in one namespace: its traffic to itself takes lo.
			if a.Namespace == b.Namespace {
				continue
			}
			addr, ok := serverAddr(a.Addresses, b.Addresses)
			if !ok || !free(a.Namespace, b.Namespace) {
				continue
			}
			c, sv := iface(a.Namespace, a.Interface), iface(b.Namespace, b.Interface)
			out = append(out, pair{path: Veth, client: c, server: sv, serverAddr: addr, ifaces: []Iface{c, sv}, mtu: mtuOr(l.MTU)})
		}
	case Bridge:
		type member struct {
			own, port Iface
			addrs     []string
			mtu       int
		}
		byBridge := map[string][]member{}
		var order []string
		for _, l := range s.Links {
			if len(l.Endpoints) != 2 {
				continue
			}
			for j, e := range l.Endpoints {
				peer := l.Endpoints[1-j]
				if e.Bridge == "" || peer.Bridge != "" || !declared[peer.Namespace] {
					continue
				}
				if _, seen := byBridge[e.Bridge]; !seen {
					order = append(order, e.Bridge)
				}
				// A namespace's first port on the bridge only: with two
				// on one subnet, the kernel sends by the first.
				if slices.ContainsFunc(byBridge[e.Bridge], func(m member) bool { return m.own.Namespace == peer.Namespace }) {
					continue
				}
				// The bridge forwards by its ports' MTUs, not its own.
				byBridge[e.Bridge] = append(byBridge[e.Bridge], member{
					own:   iface(peer.Namespace, peer.Interface),
					port:  iface(s.BridgeNamespace(e.Bridge), e.Interface),
					addrs: peer.Addresses,
					mtu:   mtuOr(l.MTU),
				})
			}
		}
		for _, br := range order {
			ms := byBridge[br]
			for i, c := range ms {
				if used[c.own.Namespace] {
					continue
				}
				// The first later member it shares a family with.
				for _, sv := range ms[i+1:] {
					addr, ok := serverAddr(c.addrs, sv.addrs)
					if used[sv.own.Namespace] || !ok {
						continue
					}
					free(c.own.Namespace, sv.own.Namespace)
					out = append(out, pair{path: Bridge, client: c.own, server: sv.own, serverAddr: addr,
						ifaces: []Iface{c.own, c.port, sv.port, sv.own}, mtu: min(c.mtu, sv.mtu)})
					break
				}
			}
		}
	}
	return out
}

// mtuOr is a declared MTU, or the kernel's default for a veth.
func mtuOr(mtu int) int {
	if mtu > 0 {
		return mtu
	}
	return 1500
}

func serverAddr(client, server []string) (netip.Addr, bool) {
	for _, ca := range client {
		cp, err := netip.ParsePrefix(ca)
		if err != nil {
			continue
		}
		for _, a := range server {
			if p, err := netip.ParsePrefix(a); err == nil && p.Addr().Is4() == cp.Addr().Is4() {
				return p.Addr(), true
			}
		}
	}
	return netip.Addr{}, false
}

// scaleSteps returns 1, 2, 4, ... up to n, and n itself.
func scaleSteps(n int) []int {
	var out []int
	for k := 1; k < n; k *= 2 {
		out = append(out, k)
	}
	return append(out, n)
}
