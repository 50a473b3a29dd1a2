package topology

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
)

// checkIPv6 refuses, before anything is built, the declared IPv6
// addresses and routes that the kernel would refuse midway (EACCES, then
// a rollback): all of them when the kernel has no IPv6 (booted with
// ipv6.disable=1), and those on host interfaces where the host disables
// IPv6: net.ipv6.conf.IF.disable_ipv6 of an interface that exists,
// net.ipv6.conf.default.disable_ipv6 (which a write to .all also sets) of
// one up will create. In the topology's own namespaces the file's
// sysctls decide, and the validator checks them.
func (b *builder) checkIPv6() error {
	s := b.s
	var (
		errs    []error
		noIPv6  bool
		keys    []string
		checked = map[string]string{} // host interface -> its key
	)
	hostIf := func(name string) string {
		if _, ok := checked[name]; !ok {
			k := "net.ipv6.conf.default.disable_ipv6"
			if _, exists := b.links[HostNamespace][name]; exists {
				k = IfaceKey("net.ipv6.conf.", name, ".disable_ipv6")
			}
			checked[name] = k
			keys = append(keys, k)
		}
		return checked[name]
	}
	type use struct{ path, addr, ifc string }
	var uses []use
	add := func(path, ns, ifc string, addrs []string) {
		for i, a := range addrs {
			if p, err := netip.ParsePrefix(a); err == nil && p.Addr().Is6() {
				u := use{path: fmt.Sprintf("%s.addresses[%d]", path, i), addr: a}
				if ns == HostNamespace {
					u.ifc = ifc
					hostIf(ifc)
				}
				uses = append(uses, u)
			}
		}
	}
	for i, br := range s.Bridges {
		add(fmt.Sprintf("bridges[%d]", i), s.BridgeNamespace(br.Name), br.Name, br.Addresses)
	}
	for i, l := range s.Links {
		for j, e := range l.Endpoints {
			add(fmt.Sprintf("links[%d].endpoints[%d]", i, j), s.EndpointNamespace(e), e.Interface, e.Addresses)
		}
	}
	for i, n := range s.Namespaces {
		for j, r := range n.Routes {
			if p, err := netip.ParsePrefix(r.To); err == nil && p.Addr().Is6() {
				uses = append(uses, use{path: fmt.Sprintf("namespaces[%d].routes[%d]", i, j), addr: r.To})
			}
		}
	}
	if len(uses) == 0 {
		return nil
	}
	host := b.conns[HostNamespace]
	err := host.do(func() error {
		_, err := os.Stat("/proc/sys/net/ipv6")
		noIPv6 = errors.Is(err, os.ErrNotExist)
		return nil
	})
	var values map[string]string
	if err == nil && !noIPv6 {
		values, _, err = readSysctls(host.do, keys)
	}
	if err != nil {
		return fmt.Errorf("host: read IPv6 settings: %w", err)
	}
	for _, u := range uses {
		switch {
		case noIPv6:
			errs = append(errs, fmt.Errorf("%s: %s is IPv6, and this kernel has no IPv6 (booted with ipv6.disable=1)", u.path, u.addr))
		case u.ifc != "" && values[checked[u.ifc]] == "1":
			on := "on host interface " + u.ifc
			if checked[u.ifc] == "net.ipv6.conf.default.disable_ipv6" {
				on = "for new host interfaces such as " + u.ifc
			}
			errs = append(errs, fmt.Errorf("%s: %s is IPv6, and the host disables IPv6 %s (%s = 1)", u.path, u.addr, on, checked[u.ifc]))
		}
	}
	return errors.Join(errs...)
}
