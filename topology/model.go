package topology

import (
	"net/netip"
	"path/filepath"
)

// NetnsDir is where named network namespaces are bind-mounted, as ip(8)
// does, so that `ip netns` and other tools see them.
const NetnsDir = "/run/netns"

// Interface is one network interface the spec declares: a bridge, or one
// end of a veth pair. It is the resolved view that show, graph, verify and
// bench need, so that none of them re-derives where an endpoint lives.
type Interface struct {
	// Namespace is the declared namespace name, HostNamespace for the host.
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// Kind is "bridge" or "veth".
	Kind      string         `json:"kind"`
	MTU       int            `json:"mtu,omitempty"`
	Addresses []netip.Prefix `json:"addresses,omitempty"`
	// Master is the bridge this veth end is a port of.
	Master string `json:"master,omitempty"`
	// PeerNamespace and PeerName locate the other end of a veth.
	PeerNamespace string `json:"peer_namespace,omitempty"`
	PeerName      string `json:"peer_name,omitempty"`
	// Link is the index in Spec.Links of a veth end, -1 for a bridge.
	Link int `json:"-"`
}

// NetnsPath returns the path of a declared namespace's bind mount
// (/run/netns/NAME), or "" for the host namespace, the form that
// internal/nsenter.Do takes.
func (s *Spec) NetnsPath(ns string) string {
	if ns == "" || ns == HostNamespace {
		return ""
	}
	return filepath.Join(NetnsDir, ns)
}

// BridgeNamespace returns the namespace a declared bridge lives in
// (HostNamespace unless the bridge names another), or "" if there is no
// such bridge.
func (s *Spec) BridgeNamespace(bridge string) string {
	for _, b := range s.Bridges {
		if b.Name == bridge {
			if b.Namespace == "" {
				return HostNamespace
			}
			return b.Namespace
		}
	}
	return ""
}

// EndpointNamespace returns the namespace an endpoint's interface lives
// in: its own, or its bridge's.
func (s *Spec) EndpointNamespace(e Endpoint) string {
	if e.Bridge != "" {
		return s.BridgeNamespace(e.Bridge)
	}
	return e.Namespace
}

// Interfaces lists every interface the spec declares: bridges first, then
// both ends of each link in order. Addresses that do not parse are left
// out; call Validate first to rule them out.
func (s *Spec) Interfaces() []Interface {
	out := make([]Interface, 0, len(s.Bridges)+2*len(s.Links))
	for _, b := range s.Bridges {
		out = append(out, Interface{
			Namespace: s.BridgeNamespace(b.Name),
			Name:      b.Name,
			Kind:      "bridge",
			MTU:       b.MTU,
			Addresses: parsePrefixes(b.Addresses),
			Link:      -1,
		})
	}
	for i, l := range s.Links {
		if len(l.Endpoints) != 2 {
			continue
		}
		for j, e := range l.Endpoints {
			peer := l.Endpoints[1-j]
			out = append(out, Interface{
				Namespace:     s.EndpointNamespace(e),
				Name:          e.Interface,
				Kind:          "veth",
				MTU:           l.MTU,
				Addresses:     parsePrefixes(e.Addresses),
				Master:        e.Bridge,
				PeerNamespace: s.EndpointNamespace(peer),
				PeerName:      peer.Interface,
				Link:          i,
			})
		}
	}
	return out
}

// NamespaceInterfaces returns the declared interfaces in namespace ns.
func (s *Spec) NamespaceInterfaces(ns string) []Interface {
	var out []Interface
	for _, ifc := range s.Interfaces() {
		if ifc.Namespace == ns {
			out = append(out, ifc)
		}
	}
	return out
}

func parsePrefixes(ss []string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ss))
	for _, a := range ss {
		if p, err := netip.ParsePrefix(a); err == nil {
			out = append(out, p)
		}
	}
	return out
}
