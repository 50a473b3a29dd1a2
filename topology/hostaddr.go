package topology

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// hostOverlaps lists the declared host addresses whose subnet another host
// interface also has, such as the gateway of a second copy of one file
// (--prefix) or of an orphan bridge: the host then routes the subnet
// through one of them only, and the other's namespaces lose their gateway.
// Only the same subnet counts: a wider or narrower one (10.0.0.0/8 on
// eth0, a /32 on a dummy) is routed by the longest match, as intended.
func hostOverlaps(host *nsConn, s *Spec) ([]string, error) {
	var declared []Interface
	for _, ifc := range s.NamespaceInterfaces(HostNamespace) {
		if len(ifc.Addresses) > 0 {
			declared = append(declared, ifc)
		}
	}
	if len(declared) == 0 {
		return nil, nil
	}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return host.h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("host: list addresses: %w", err)
	}
	names := map[int]string{}
	var out []string
	for _, ifc := range declared {
		for _, p := range ifc.Addresses {
			if p.Addr().IsLinkLocalUnicast() {
				continue
			}
			for _, a := range addrs {
				ip, ok := netip.AddrFromSlice(a.IP)
				ones, _ := a.Mask.Size()
				if !ok || ip.IsLinkLocalUnicast() {
					continue
				}
				if q := netip.PrefixFrom(ip.Unmap(), ones); q.Masked() != p.Masked() {
					continue
				}
				name, ok := names[a.LinkIndex]
				if !ok {
					l, err := host.h.LinkByIndex(a.LinkIndex)
					if isNotFound(err) {
						continue
					}
					if err != nil {
						return nil, fmt.Errorf("host: interface %d: %w", a.LinkIndex, err)
					}
					name = l.Attrs().Name
					names[a.LinkIndex] = name
				}
				if name != ifc.Name {
					out = append(out, fmt.Sprintf("host interface %s: %s overlaps %s on host interface %s: the host routes that subnet through one of them only",
						ifc.Name, p, a.IPNet, name))
				}
			}
		}
	}
	return out, nil
}
