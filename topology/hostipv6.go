package topology

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
)

// defaultDisableIPv6 is what a new interface's disable_ipv6 starts as (a
// write to conf.all sets it too).
const defaultDisableIPv6 = "net.ipv6.conf.default.disable_ipv6"

// checkIPv6 refuses, before anything is built, the declared IPv6 use that
// the kernel would refuse midway (EACCES, then a rollback): all of it when
// the kernel has no IPv6 (booted with ipv6.disable=1, or built without),
// and IPv6 addresses on host interfaces where the host disables IPv6:
// net.ipv6.conf.IF.disable_ipv6 of an interface that exists and stays,
// conf.default's for one up will create (or create anew: a lone host end
// whose peer's namespace is gone). In the topology's own namespaces the
// file's sysctls decide, and the validator checks them.
func (b *builder) checkIPv6() error {
	s := b.s
	type use struct{ path, what, hostIf string }
	var uses []use
	addrs := func(path, ns, ifc string, as []string) {
		for i, a := range as {
			if p, err := netip.ParsePrefix(a); err == nil && p.Addr().Is6() {
				u := use{path: fmt.Sprintf("%s.addresses[%d]", path, i), what: a + " is IPv6"}
				if ns == HostNamespace {
					u.hostIf = ifc
				}
				uses = append(uses, u)
			}
		}
	}
	for i, br := range s.Bridges {
		addrs(fmt.Sprintf("bridges[%d]", i), s.BridgeNamespace(br.Name), br.Name, br.Addresses)
	}
	for i, l := range s.Links {
		for j, e := range l.Endpoints {
			addrs(fmt.Sprintf("links[%d].endpoints[%d]", i, j), s.EndpointNamespace(e), e.Interface, e.Addresses)
		}
	}
	for i, n := range s.Namespaces {
		for j, r := range n.Routes {
			path := fmt.Sprintf("namespaces[%d].routes[%d]", i, j)
			if p, err := netip.ParsePrefix(r.To); err == nil && p.Addr().Is6() {
				uses = append(uses, use{path: path + ".to", what: "a route to " + r.To + " is IPv6"})
			} else if a, err := netip.ParseAddr(r.Via); err == nil && a.Is6() {
				uses = append(uses, use{path: path + ".via", what: "a route via " + r.Via + " is IPv6"})
			}
		}
		for _, k := range slices.Sorted(maps.Keys(n.Sysctls)) {
			if strings.HasPrefix(k, "net.ipv6.") {
				uses = append(uses, use{path: fmt.Sprintf("namespaces[%d].sysctls.%s", i, k), what: "an IPv6 sysctl"})
			}
		}
	}
	if len(uses) == 0 {
		return nil
	}

	host := b.conns[HostNamespace]
	noIPv6 := false
	err := host.do(func() error {
		_, err := os.Stat("/proc/sys/net/ipv6")
		noIPv6 = errors.Is(err, os.ErrNotExist)
		return nil
	})
	if err != nil {
		return fmt.Errorf("host: read IPv6 settings: %w", err)
	}
	var errs []error
	if noIPv6 {
		for _, u := range uses {
			errs = append(errs, fmt.Errorf("%s: %s, and this kernel has no IPv6 (/proc/sys/net/ipv6 is missing: booted with ipv6.disable=1, or built without IPv6)", u.path, u.what))
		}
		return errors.Join(errs...)
	}

	// The key that decides for each host interface, and the values.
	declared := map[string]Interface{}
	for _, ifc := range s.NamespaceInterfaces(HostNamespace) {
		declared[ifc.Name] = ifc
	}
	keyOf := map[string]string{}
	keys := []string{defaultDisableIPv6}
	for _, u := range uses {
		if u.hostIf == "" || keyOf[u.hostIf] != "" {
			continue
		}
		keyOf[u.hostIf] = defaultDisableIPv6
		if _, exists := b.links[HostNamespace][u.hostIf]; exists && !b.recreated(declared[u.hostIf]) {
			keyOf[u.hostIf] = IfaceKey("net.ipv6.conf.", u.hostIf, ".disable_ipv6")
			keys = append(keys, keyOf[u.hostIf])
		}
	}
	values, _, err := readSysctls(host.do, keys)
	if err != nil {
		return fmt.Errorf("host: read IPv6 settings: %w", err)
	}
	for _, u := range uses {
		if u.hostIf == "" {
			continue
		}
		k := keyOf[u.hostIf]
		if _, read := values[k]; !read {
			k = defaultDisableIPv6 // gone since it was listed: made anew
		}
		if values[k] != "1" {
			continue
		}
		on := "on host interface " + u.hostIf
		if k == defaultDisableIPv6 {
			on = "for new host interfaces such as " + u.hostIf
		}
		errs = append(errs, fmt.Errorf("%s: %s, and the host disables IPv6 %s (%s = 1)", u.path, u.what, on, k))
	}
	return errors.Join(errs...)
}

// recreated reports whether up may delete the existing host interface
// ifc and create it anew: a veth end whose declared peer's namespace does
// not exist (gone with its peer, ip netns del).
func (b *builder) recreated(ifc Interface) bool {
	return ifc.Kind == "veth" && ifc.PeerNamespace != HostNamespace && b.conns[ifc.PeerNamespace] == nil
}
