package topology

import (
	"encoding/json"
	"fmt"
	"strings"
)

// WithPrefix returns a validated copy of s whose topology name, namespace
// names, bridge names and host-namespace interface names start with p, so
// that several copies of one file run side by side (tests, users). Names
// of interfaces inside created namespaces stay as written: each copy has
// its own namespaces. Isolation rules follow the renamed namespaces.
func (s *Spec) WithPrefix(p string) (*Spec, error) {
	c, err := s.clone()
	if err != nil {
		return nil, err
	}
	if p == "" {
		return c, c.Validate()
	}
	rename := func(m map[string]string, n string) string {
		if r, ok := m[n]; ok {
			return r
		}
		return n
	}
	nsNames := map[string]string{}
	for i := range c.Namespaces {
		nsNames[c.Namespaces[i].Name] = p + c.Namespaces[i].Name
	}
	brNames := map[string]string{}
	for i := range c.Bridges {
		brNames[c.Bridges[i].Name] = p + c.Bridges[i].Name
	}
	// Host interfaces are found before renaming, from the original spec.
	for i, l := range c.Links {
		for j := range l.Endpoints {
			e := &c.Links[i].Endpoints[j]
			if s.EndpointNamespace(*e) == HostNamespace {
				e.Interface = p + e.Interface
			}
			e.Namespace = rename(nsNames, e.Namespace)
			e.Bridge = rename(brNames, e.Bridge)
		}
	}
	for i := range c.Bridges {
		b := &c.Bridges[i]
		b.Name = rename(brNames, b.Name)
		b.Namespace = rename(nsNames, b.Namespace)
	}
	for i := range c.Namespaces {
		n := &c.Namespaces[i]
		for j := range n.Routes {
			// A route's dev may name a bridge placed in this namespace.
			if s.BridgeNamespace(n.Routes[j].Dev) == n.Name {
				n.Routes[j].Dev = rename(brNames, n.Routes[j].Dev)
			}
		}
		// So may a sysctl key (net.ipv4.conf.BRIDGE.forwarding). Into a
		// new map: a renamed key may be another key of the old one.
		if len(n.Sysctls) > 0 {
			sysctls := make(map[string]string, len(n.Sysctls))
			for k, v := range n.Sysctls {
				if ifc := sysctlInterface(k); ifc != "" && s.BridgeNamespace(ifc) == n.Name {
					parts := strings.Split(k, ".")
					k = IfaceKey(strings.Join(parts[:3], ".")+".", rename(brNames, ifc), "."+parts[4])
				}
				sysctls[k] = v
			}
			n.Sysctls = sysctls
		}
		n.Name = rename(nsNames, n.Name)
	}
	if iso := c.Isolation; iso != nil {
		for g, members := range iso.Groups {
			for k := range members {
				iso.Groups[g][k] = rename(nsNames, members[k])
			}
		}
		for _, rules := range [][]Rule{iso.Allow, iso.Deny} {
			for i := range rules {
				for _, names := range [][]string{rules[i].From, rules[i].To} {
					for k, n := range names {
						if _, isGroup := iso.Groups[n]; !isGroup {
							names[k] = rename(nsNames, n)
						}
					}
				}
			}
		}
	}
	c.Name = p + c.Name
	if err := c.Validate(); err != nil {
		return nil, prefixErrors(fmt.Sprintf("with prefix %q", p), err)
	}
	return c, nil
}

// clone deep-copies the spec through JSON, which every field supports.
func (s *Spec) clone() (*Spec, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	var c Spec
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, err
	}
	return &c, nil
}
