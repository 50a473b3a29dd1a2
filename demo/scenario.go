package demo

import (
	"fmt"
	"net/netip"

	"github.com/nsflow/nsflow/examples"
	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/traffic"
	"github.com/nsflow/nsflow/verify"
)

// DefaultSpec returns the embedded default topology, examples/seed.yaml
// (the seed scenarios), validated.
func DefaultSpec() (*topology.Spec, error) {
	s, err := topology.Parse(examples.Seed)
	if err != nil {
		return nil, fmt.Errorf("embedded topology: %w", err)
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("embedded topology: %w", err)
	}
	return s, nil
}

// demoFlow is one stream of background traffic, by namespace names as the
// topology file writes them (before a prefix is applied).
type demoFlow struct {
	From, To string
	// IPv6 picks the server's first IPv6 address instead of IPv4.
	IPv6 bool
	// Loopback sends over the server namespace's own loopback (From == To).
	Loopback bool
	Port     uint16
	Rate     float64 // datagrams per second
	Size     int     // payload bytes
	// Server, when valid, is the address the server binds; otherwise the
	// To namespace's first address of the family.
	Server netip.Addr
}

// seedFlows is the demo's traffic: each seed scenario gets some, at rates
// low enough to leave a shared machine alone. UDP only, because the
// generator rate-limits UDP (TCP would run at line rate).
var seedFlows = []demoFlow{
	// The veth pair, both ways, over both families.
	{From: "ns1", To: "ns2", Port: 5001, Rate: 1000, Size: 512},
	{From: "ns2", To: "ns1", Port: 5001, Rate: 400, Size: 256, IPv6: true},
	// The bridge network: container to container, and into the pod.
	{From: "c1", To: "c2", Port: 5002, Rate: 800, Size: 1024},
	{From: "c3", To: "pod", Port: 5003, Rate: 300, Size: 512, IPv6: true},
	// Two servers on the same port, each in its own namespace. (Not 8080:
	// verify's responders listen there.)
	{From: "srv1", To: "srv2", Port: 7070, Rate: 600, Size: 700},
	{From: "srv2", To: "srv1", Port: 7070, Rate: 600, Size: 300},
	// Processes sharing the pod's namespace talk over its loopback.
	{From: "pod", To: "pod", Port: 5004, Rate: 200, Size: 128, Loopback: true},
}

// resolvedFlow is a demo flow placed on a topology.
type resolvedFlow struct {
	demoFlow
	// Src and Dst are the namespace names in the topology (prefixed).
	Src, Dst string
	Flow     traffic.Flow
}

// trafficFlows resolves the demo flows against s, whose namespace names
// are the seed's with prefix in front. A flow whose namespaces s lacks,
// whose server has no address of its family, or whose packets the wiring
// does not deliver there (a custom topology that reuses the seed's names)
// is left out.
func trafficFlows(s *topology.Spec, prefix string, flows []demoFlow) ([]resolvedFlow, error) {
	declared := map[string]bool{}
	for _, n := range s.Namespaces {
		declared[n.Name] = true
	}
	m := verify.NewModel(s)
	// A flow on a UDP port verify probes would hold it, and verify's
	// responders could not: such a flow is left out.
	probed := map[uint16]bool{}
	for _, p := range m.Ports() {
		if p.Proto == "udp" {
			probed[uint16(p.Number)] = true
		}
	}
	var out []resolvedFlow
	for _, f := range flows {
		from, to := prefix+f.From, prefix+f.To
		if !declared[from] || !declared[to] || probed[f.Port] {
			continue
		}
		server, err := serverAddr(s, to, f)
		if err != nil {
			continue
		}
		if got, _ := m.Deliver(from, server); !f.Loopback && got != to {
			continue
		}
		out = append(out, resolvedFlow{demoFlow: f, Src: from, Dst: to, Flow: traffic.Flow{
			Proto:       traffic.UDP,
			ServerNetns: s.NetnsPath(to),
			ClientNetns: s.NetnsPath(from),
			Server:      netip.AddrPortFrom(server, f.Port),
			Size:        f.Size,
			Rate:        f.Rate,
		}})
	}
	return out, nil
}

// serverAddr is the address the flow's server binds in namespace ns.
func serverAddr(s *topology.Spec, ns string, f demoFlow) (netip.Addr, error) {
	if f.Server.IsValid() {
		return f.Server, nil
	}
	if f.Loopback {
		if f.IPv6 {
			return netip.IPv6Loopback(), nil
		}
		return netip.AddrFrom4([4]byte{127, 0, 0, 1}), nil
	}
	for _, ifc := range s.NamespaceInterfaces(ns) {
		for _, p := range ifc.Addresses {
			if a := p.Addr(); a.Is6() == f.IPv6 {
				return a, nil
			}
		}
	}
	family := "IPv4"
	if f.IPv6 {
		family = "IPv6"
	}
	return netip.Addr{}, fmt.Errorf("demo flow %s→%s: namespace %s has no %s address", f.From, f.To, ns, family)
}

// maxFileFlows bounds the flows fileFlows makes of a large topology.
const maxFileFlows = 8

// fileFlows is traffic for a topology that is not the seed's: on each
// direct link between two namespaces, from one end to the other, and on
// each bridge, from each namespace's port to the next's; over IPv4 where
// both ends have addresses in one subnet, else IPv6. At most maxFileFlows.
func fileFlows(s *topology.Spec) []demoFlow {
	ifcs := s.Interfaces()
	type ref struct{ ns, name string }
	byRef := map[ref]topology.Interface{}
	for _, ifc := range ifcs {
		byRef[ref{ifc.Namespace, ifc.Name}] = ifc
	}
	// The namespace ends of veths, grouped by the segment they are on: a
	// direct link, or the bridge their peer is a port of.
	var order []string
	segments := map[string][]topology.Interface{}
	for _, ifc := range ifcs {
		if ifc.Kind != "veth" || ifc.Master != "" || ifc.Namespace == topology.HostNamespace {
			continue
		}
		seg := fmt.Sprintf("link %d", ifc.Link)
		if peer := byRef[ref{ifc.PeerNamespace, ifc.PeerName}]; peer.Master != "" {
			seg = "bridge " + peer.Master
		}
		if _, ok := segments[seg]; !ok {
			order = append(order, seg)
		}
		segments[seg] = append(segments[seg], ifc)
	}
	// Ports from 5001 up, but none that verify probes: its responders
	// could not bind a port the demo's servers hold, and the probes there
	// would come out unjudged.
	probed := map[uint16]bool{}
	for _, p := range verify.NewModel(s).Ports() {
		if p.Proto == "udp" {
			probed[uint16(p.Number)] = true
		}
	}
	port := uint16(5000)
	nextPort := func() uint16 {
		for port++; probed[port]; port++ {
		}
		return port
	}
	var out []demoFlow
	for _, seg := range order {
		ms := segments[seg]
		for i := 0; i+1 < len(ms) && len(out) < maxFileFlows; i++ {
			if server, ok := sameSubnet(ms[i].Addresses, ms[i+1].Addresses); ok {
				out = append(out, demoFlow{From: ms[i].Namespace, To: ms[i+1].Namespace, IPv6: server.Is6(),
					Server: server, Port: nextPort(), Rate: 500, Size: 512})
			}
		}
	}
	return out
}

// sameSubnet finds an address of the server's that is in a subnet of the
// client's, IPv4 first.
func sameSubnet(client, server []netip.Prefix) (netip.Addr, bool) {
	for _, v6 := range []bool{false, true} {
		for _, c := range client {
			for _, sv := range server {
				if c.Addr().Is6() == v6 && sv.Addr().Is6() == v6 && c.Masked() == sv.Masked() {
					return sv.Addr(), true
				}
			}
		}
	}
	return netip.Addr{}, false
}
