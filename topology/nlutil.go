package topology

import (
	"errors"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// dumpRetries bounds retries of a netlink dump that the kernel interrupted
// because the table changed meanwhile (other namespaces being built).
const dumpRetries = 10

// retryDump calls dump until it returns something other than
// netlink.ErrDumpInterrupted, at most dumpRetries times.
func retryDump[T any](dump func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range dumpRetries {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
	}
	return v, err
}

// linksByName dumps the namespace's interfaces into a map by name.
func linksByName(h *netlink.Handle) (map[string]netlink.Link, error) {
	links, err := retryDump(h.LinkList)
	if err != nil {
		return nil, err
	}
	m := make(map[string]netlink.Link, len(links))
	for _, l := range links {
		m[l.Attrs().Name] = l
	}
	return m, nil
}

// ipNet converts a prefix (address with its prefix length) for netlink.
func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// nlAddr is the netlink address for p. IPv6 addresses skip duplicate
// address detection: the topology assigns them uniquely, and DAD would
// keep them unusable for seconds.
func nlAddr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: ipNet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

// isNotFound reports whether err means the object does not exist.
func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

// linkKind is the kernel's kind for a link ("veth", "bridge", "device"...).
func linkKind(l netlink.Link) string { return l.Type() }
